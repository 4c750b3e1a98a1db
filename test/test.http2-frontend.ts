import { tap, expect } from '@git.zone/tstest/tapbundle';
import * as http from 'node:http';
import * as http2 from 'node:http2';
import * as crypto from 'node:crypto';
import * as net from 'node:net';
import { SmartProxy } from '../index.js';
import * as h from './helpers.js';

// The HTTP/2 front end (TLS with ALPN h2): streams, flow control both ways, trailers, resets,
// connection-specific headers from HTTP/1.1 backends, GOAWAY with streams in flight.
const MiB = 1024 * 1024;
const payload = crypto.randomBytes(8 * MiB);
let backend: http.Server, backendPort: number;
let port: number;
let proxy: SmartProxy;
let slowClosed = 0;
let session: http2.ClientHttp2Session;

tap.test('setup', async () => {
  backend = http.createServer(async (req, res) => {
    if (req.url === '/big') {
      res.setHeader('content-length', String(payload.length));
      res.end(payload);
    } else if (req.url === '/up') {
      const d = await h.digestBody(req);
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify(d));
    } else if (req.url === '/trailers') {
      res.writeHead(200, { trailer: 'x-digest' });
      res.write('body');
      res.addTrailers({ 'x-digest': 'abc' });
      res.end();
    } else if (req.url === '/keepalive-headers') {
      res.writeHead(200, { connection: 'keep-alive', 'keep-alive': 'timeout=5', 'proxy-connection': 'keep-alive' });
      res.end('ok');
    } else if (req.url === '/slow') {
      req.socket.once('close', () => slowClosed++);
      setTimeout(() => res.end('late'), 1500);
    } else if (req.url === '/delay') {
      setTimeout(() => res.end('done'), 300);
    } else {
      res.end(`url ${req.url}`);
    }
  });
  await new Promise<void>((r) => backend.listen(0, '127.0.0.1', () => r()));
  backendPort = (backend.address() as net.AddressInfo).port;
  port = await h.freePort();
  const cert = h.makeCert('h2.test');
  proxy = new SmartProxy({
    routes: [
      {
        name: 'h2',
        match: { ports: port, domains: 'h2.test' },
        action: { type: 'forward', target: { host: '127.0.0.1', port: backendPort }, tls: { mode: 'terminate', certificate: { key: cert.key, cert: cert.cert } } },
      },
    ],
  });
  await proxy.start();
  session = http2.connect(`https://127.0.0.1:${port}`, { servername: 'h2.test', rejectUnauthorized: false });
  session.on('error', () => {});
});

const ask = (s: http2.ClientHttp2Session, headers: http2.OutgoingHttpHeaders, body?: Buffer) =>
  h.h2Ask(s, { ':authority': 'h2.test', ...headers }, body);

tap.test('8 MiB download and 8 MiB upload on one connection, with flow control both ways', async () => {
  const [down, up] = await Promise.all([ask(session, { ':path': '/big' }), ask(session, { ':method': 'POST', ':path': '/up' }, payload)]);
  expect(down.head[':status']).toEqual(200);
  expect(down.body.length).toEqual(payload.length);
  expect(h.sha256(down.body)).toEqual(h.sha256(payload));
  const d = JSON.parse(up.body.toString());
  expect(d.bytes).toEqual(payload.length);
  expect(d.sha).toEqual(h.sha256(payload));
});

tap.test('100 concurrent streams are all answered in order of their own paths', async () => {
  const all = await Promise.all(Array.from({ length: 100 }, (_, i) => ask(session, { ':path': `/n${i}` })));
  all.forEach((a, i) => expect(a.body.toString()).toEqual(`url /n${i}`));
});

tap.test('response trailers from a chunked HTTP/1.1 backend reach the client', async () => {
  const a = await ask(session, { ':path': '/trailers', te: 'trailers' });
  expect(a.head[':status']).toEqual(200);
  expect(a.body.toString()).toEqual('body');
  expect(a.trailers['x-digest']).toEqual('abc');
});

tap.test('connection-specific headers of the backend are removed; date is present', async () => {
  const a = await ask(session, { ':path': '/keepalive-headers' });
  expect(a.head[':status']).toEqual(200);
  expect(a.body.toString()).toEqual('ok');
  expect(a.head['connection']).toBeUndefined();
  expect(a.head['keep-alive']).toBeUndefined();
  expect(typeof a.head['date']).toEqual('string');
  const other = await ask(session, { ':path': '/', ':authority': 'unknown.test' });
  expect(other.head[':status']).toEqual(404);
  expect(typeof other.head['date']).toEqual('string');
});

tap.test('a stream the client resets frees its backend connection; the session goes on', async () => {
  const before = slowClosed;
  const st = session.request({ ':authority': 'h2.test', ':path': '/slow' });
  st.on('error', () => {});
  st.end();
  await h.sleep(200);
  st.close(http2.constants.NGHTTP2_CANCEL);
  await h.waitFor(() => slowClosed > before, 1200, 'backend connection of the reset stream closed');
  const a = await ask(session, { ':path': '/after-reset' });
  expect(a.body.toString()).toEqual('url /after-reset');
});

tap.test('GOAWAY with streams in flight: they still complete', async () => {
  const s = http2.connect(`https://127.0.0.1:${port}`, { servername: 'h2.test', rejectUnauthorized: false });
  s.on('error', () => {});
  const pending = Promise.all([ask(s, { ':path': '/delay' }), ask(s, { ':path': '/delay' })]);
  await h.sleep(50);
  const closed = new Promise<void>((r) => s.close(() => r()));
  const answers = await pending;
  answers.forEach((a) => expect(a.body.toString()).toEqual('done'));
  await closed;
  await h.waitFor(() => proxy.getStatistics().activeConnections <= 1, 3000, 'the closed session leaves');
});

tap.test('stop() with a stream in flight closes the session and returns promptly', async () => {
  const st = session.request({ ':authority': 'h2.test', ':path': '/slow' });
  st.on('error', () => {});
  st.end();
  await h.sleep(100);
  const gone = new Promise<void>((r) => session.once('close', () => r()));
  const t0 = Date.now();
  await proxy.stop();
  expect(Date.now() - t0).toBeLessThan(3000);
  await gone;
  expect(proxy.getStatistics().activeConnections).toEqual(0);
});

tap.test('teardown', async () => {
  session.destroy();
  await new Promise((r) => backend.close(r));
});

tap.start();
