// HTTP/2 rapid reset, paced (CVE-2023-44487 as attackers run it now): batches of ten streams
// reset at once, each batch followed by a PING the client waits for. The proxy does no backend
// work for a stream that arrives already reset, counts its client's resets, and past the
// budget (100 resets and half of the streams) ends the connection with GOAWAY
// ENHANCE_YOUR_CALM. A client that cancels a few streams is not affected.
import { tap, expect } from '@git.zone/tstest/tapbundle';
import * as http2 from 'node:http2';
import { SmartProxy } from '../index.js';
import * as h from './helpers.js';

let proxy: SmartProxy;
let port: number;
let backend: h.TestServer;

tap.test('setup', async () => {
  const setup = await h.terminatingSetup('reset.test', 'h2');
  ({ port, backend } = setup);
  proxy = new SmartProxy({ routes: [setup.route] });
  await proxy.start();
});

function connect(): Promise<http2.ClientHttp2Session> {
  return new Promise((resolve, reject) => {
    const s = http2.connect(`https://127.0.0.1:${port}`, { servername: 'reset.test', rejectUnauthorized: false });
    s.once('connect', () => resolve(s));
    s.once('error', reject);
  });
}

tap.test('paced rapid reset gets GOAWAY ENHANCE_YOUR_CALM, and little backend work', async () => {
  const session = await connect();
  session.on('error', () => {});
  let goaway: number | undefined;
  session.on('goaway', (code) => (goaway = code));
  const before = backend.accepted();
  let streams = 0;
  for (let batch = 0; batch < 100 && goaway === undefined && !session.destroyed; batch++) {
    for (let i = 0; i < 10; i++) {
      try {
        const req = session.request({ ':path': `/r${streams}`, ':authority': 'reset.test' });
        req.on('error', () => {});
        req.close(http2.constants.NGHTTP2_CANCEL);
        streams++;
      } catch {
        break;
      }
    }
    const pinged = await new Promise<boolean>((resolve) => {
      if (session.destroyed || !session.ping((err) => resolve(!err))) resolve(false);
    });
    if (!pinged) break;
  }
  await h.waitFor(() => goaway !== undefined || session.destroyed, 3000, 'GOAWAY').catch(() => {});
  expect(goaway).toEqual(http2.constants.NGHTTP2_ENHANCE_YOUR_CALM);
  expect(streams).toBeLessThan(400);
  // Backend connections: far fewer than streams (each reset stream used to open one).
  expect(backend.accepted() - before).toBeLessThan(streams / 4);
  session.destroy();
});

tap.test('a client that cancels a few streams among many answered ones keeps its connection', async () => {
  const session = await connect();
  let goaway: number | undefined;
  session.on('goaway', (code) => (goaway = code));
  for (let i = 0; i < 300; i++) {
    const req = session.request({ ':path': `/ok${i}`, ':authority': 'reset.test' });
    req.on('error', () => {});
    if (i % 10 === 0) {
      req.close(http2.constants.NGHTTP2_CANCEL);
      continue;
    }
    await new Promise<void>((resolve) => {
      req.on('data', () => {});
      req.on('end', () => resolve());
      req.on('close', () => resolve());
    });
  }
  expect(goaway).toBeUndefined();
  const answer = await h.h2Ask(session, { ':path': '/last', ':authority': 'reset.test' });
  expect(answer.body.toString()).toEqual('b /last');
  session.close();
});

tap.test('teardown', async () => {
  await proxy.stop();
  await backend.close();
});

export default tap.start();
