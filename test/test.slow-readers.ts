// Clients that stop reading: the memory the proxy holds for them is bounded per connection,
// whatever flow-control windows they advertise. An HTTP/2 client opens its windows to 2^31-1,
// starts 200 large downloads on one connection and reads nothing; an HTTP/1.1 client starts a
// large download and reads nothing. The proxy's resident memory (this process's RSS: the
// backends answer from one shared buffer, so they add nothing per response) stays within a
// few MiB per connection, and a client that reads gets every byte.
import { tap, expect } from '@git.zone/tstest/tapbundle';
import * as http from 'node:http';
import * as http2 from 'node:http2';
import * as tls from 'node:tls';
import * as net from 'node:net';
import { SmartProxy } from '../index.js';
import * as h from './helpers.js';

const cert = h.makeCert('slow.test');
const BIG = Buffer.alloc(8 * 1024 * 1024, 'x');
let proxy: SmartProxy;
let port: number;
let backend: http.Server;

tap.test('setup', async () => {
  backend = http.createServer((req, res) => {
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': BIG.length });
    res.end(BIG);
  });
  await new Promise<void>((r) => backend.listen(0, h.HOST, () => r()));
  const bport = (backend.address() as net.AddressInfo).port;
  port = await h.freePort();
  proxy = new SmartProxy({
    maxConnectionsPerIP: 0,
    connectionRateLimitPerMinute: 0,
    routes: [
      { name: 'slow', match: { ports: port, domains: 'slow.test' }, action: { type: 'forward', target: { host: h.HOST, port: bport }, tls: { mode: 'terminate', certificate: cert } } },
    ],
  });
  await proxy.start();
});

function frame(type: number, flags: number, stream: number, payload: Buffer): Buffer {
  const head = Buffer.alloc(9);
  head.writeUIntBE(payload.length, 0, 3);
  head[3] = type;
  head[4] = flags;
  head.writeUInt32BE(stream, 5);
  return Buffer.concat([head, payload]);
}

/** A header block in HPACK: GET https://slow.test/big, literals never indexed. */
function headerBlock(path: string): Buffer {
  const lit = (index: number, value: string) => Buffer.concat([Buffer.from([index, value.length]), Buffer.from(value)]);
  return Buffer.concat([Buffer.from([0x82, 0x87]), lit(0x04, path), lit(0x01, 'slow.test')]);
}

/** An HTTP/2 client over TLS that opens every window to the maximum, asks for `streams`
 * downloads and never reads a byte. */
async function neverReadingH2(streams: number): Promise<tls.TLSSocket> {
  const s = await new Promise<tls.TLSSocket>((resolve, reject) => {
    const c = tls.connect({ host: h.HOST, port, servername: 'slow.test', ALPNProtocols: ['h2'], rejectUnauthorized: false }, () => resolve(c));
    c.once('error', reject);
  });
  s.on('error', () => {});
  expect(s.alpnProtocol).toEqual('h2');
  const settings = Buffer.alloc(12);
  settings.writeUInt16BE(0x2, 0); // ENABLE_PUSH 0
  settings.writeUInt32BE(0, 2);
  settings.writeUInt16BE(0x4, 6); // INITIAL_WINDOW_SIZE 2^31-1
  settings.writeUInt32BE(0x7fffffff, 8);
  const update = Buffer.alloc(4);
  update.writeUInt32BE(0x7fffffff - 65535, 0);
  const out = [Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n'), frame(4, 0, 0, settings), frame(4, 1, 0, Buffer.alloc(0)), frame(8, 0, 0, update)];
  for (let i = 0; i < streams; i++) out.push(frame(1, 0x5, 1 + 2 * i, headerBlock(`/big${i}`)));
  s.write(Buffer.concat(out));
  s.pause();
  return s;
}

const mib = (n: number) => (n / 1024 / 1024).toFixed(1);

/** RSS after the garbage collector had its chance, in bytes. */
async function rss(): Promise<number> {
  (globalThis as any).gc?.();
  await h.sleep(50);
  return process.memoryUsage().rss;
}

tap.test('HTTP/2: two connections with 200 unread downloads each hold a bounded amount of memory', async () => {
  // Warm up: one full download over HTTP/2 so allocator pools exist before the baseline.
  const session = http2.connect(`https://${h.HOST}:${port}`, { servername: 'slow.test', rejectUnauthorized: false });
  session.on('error', () => {});
  const first = await h.h2Ask(session, { ':path': '/warm', ':authority': 'slow.test' });
  expect(first.head[':status']).toEqual(200);
  const before = await rss();
  const clients = [await neverReadingH2(200), await neverReadingH2(200)];
  // Let the proxy fill whatever it will fill.
  let peak = before;
  for (let i = 0; i < 30; i++) {
    await h.sleep(100);
    peak = Math.max(peak, process.memoryUsage().rss);
  }
  const grown = peak - before;
  console.log(`HTTP/2 never-reading clients: RSS ${mib(before)} → peak ${mib(peak)} MiB (+${mib(grown)} MiB for 2 connections, 400 streams)`);
  // The budget is 1 MiB of queued response bytes per connection; backend read buffers and h2
  // state add to it. Without a budget this was about 80 MiB per connection.
  expect(grown).toBeLessThan(40 * 1024 * 1024);
  // The connections are still served: a reading client on a fresh connection gets every byte.
  const again = await h.h2Ask(session, { ':path': '/again', ':authority': 'slow.test' });
  expect(again.head[':status']).toEqual(200);
  expect(again.body.length).toEqual(BIG.length);
  for (const c of clients) c.destroy();
  session.close();
});

tap.test('HTTP/2: one connection downloading many bodies at once gets every byte of each', async () => {
  const session = http2.connect(`https://${h.HOST}:${port}`, { servername: 'slow.test', rejectUnauthorized: false });
  session.on('error', () => {});
  const answers = await Promise.all(Array.from({ length: 12 }, (_, i) => h.h2Ask(session, { ':path': `/many${i}`, ':authority': 'slow.test' })));
  for (const a of answers) {
    expect(a.head[':status']).toEqual(200);
    expect(a.body.length).toEqual(BIG.length);
  }
  session.close();
});

tap.test('HTTP/1.1: ten clients that never read hold a bounded amount of memory', async () => {
  const before = await rss();
  const clients: tls.TLSSocket[] = [];
  for (let i = 0; i < 10; i++) {
    const s = await new Promise<tls.TLSSocket>((resolve, reject) => {
      const c = tls.connect({ host: h.HOST, port, servername: 'slow.test', ALPNProtocols: ['http/1.1'], rejectUnauthorized: false }, () => resolve(c));
      c.once('error', reject);
    });
    s.on('error', () => {});
    s.write('GET /big HTTP/1.1\r\nHost: slow.test\r\n\r\n');
    s.pause();
    clients.push(s);
  }
  let peak = before;
  for (let i = 0; i < 20; i++) {
    await h.sleep(100);
    peak = Math.max(peak, process.memoryUsage().rss);
  }
  const grown = peak - before;
  console.log(`HTTP/1.1 never-reading clients: RSS ${mib(before)} → peak ${mib(peak)} MiB (+${mib(grown)} MiB for 10 connections)`);
  expect(grown).toBeLessThan(16 * 1024 * 1024);
  for (const c of clients) c.destroy();
});

tap.test('teardown', async () => {
  await proxy.stop();
  await new Promise<void>((r) => backend.close(() => r()));
  backend.closeAllConnections?.();
});

export default tap.start();
