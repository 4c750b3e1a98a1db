import { tap, expect } from '@git.zone/tstest/tapbundle';
import * as tls from 'node:tls';
import * as net from 'node:net';
import { SmartProxy } from '../index.js';
import * as h from './helpers.js';

let certA: h.Cert, certB: h.Cert, certW: h.Cert;
let a: h.TestServer, b: h.TestServer, w: h.TestServer;
let port: number;
let proxy: SmartProxy;

function tlsClient(servername: string | undefined, opts: tls.ConnectionOptions = {}) {
  return new Promise<{ socket: tls.TLSSocket; line: string; subject: string }>((resolve, reject) => {
    const socket = tls.connect({ port, host: '127.0.0.1', servername, rejectUnauthorized: false, ...opts }, async () => {
      try {
        const line = await h.readLine(socket as unknown as net.Socket);
        resolve({ socket, line, subject: socket.getPeerCertificate().subject?.CN ?? '' });
      } catch (e) {
        reject(e);
      }
    });
    socket.once('error', reject);
  });
}

/** The bytes a real Node TLS client sends first, captured by a plain TCP server. */
async function captureClientHello(servername: string): Promise<Buffer> {
  let resolveHello: (b: Buffer) => void;
  const got = new Promise<Buffer>((r) => (resolveHello = r));
  const cap = await h.tcpServer((s) => s.once('data', (d) => resolveHello(d)));
  const c = tls.connect({ port: cap.port, host: '127.0.0.1', servername, rejectUnauthorized: false });
  c.on('error', () => {});
  const hello = await got;
  c.destroy();
  await cap.close();
  return hello;
}

tap.test('setup: two TLS backends, a wildcard backend, passthrough routes', async () => {
  certA = h.makeCert('a.example.com');
  certB = h.makeCert('b.example.com');
  certW = h.makeCert('wild.example.net', ['*.example.net']);
  a = await h.tlsNameServer('A', certA);
  b = await h.tlsNameServer('B', certB);
  w = await h.tlsNameServer('W', certW);
  port = await h.freePort();
  const pass = (name: string, domains: string | string[], target: number) => ({
    name,
    match: { ports: port, domains },
    action: { type: 'forward' as const, target: { host: '127.0.0.1', port: target }, tls: { mode: 'passthrough' as const } },
  });
  proxy = new SmartProxy({ routes: [pass('a', 'a.example.com', a.port), pass('b', ['b.example.com'], b.port), pass('w', '*.example.net', w.port)] });
  await proxy.start();
});

tap.test('each domain reaches its own backend, which presents its own certificate', async () => {
  const ra = await tlsClient('a.example.com');
  expect(ra.line).toEqual('A');
  expect(ra.subject).toEqual('a.example.com');
  const rb = await tlsClient('B.Example.COM');
  expect(rb.line).toEqual('B');
  expect(rb.subject).toEqual('b.example.com');
  // Data flows both ways through the encrypted tunnel.
  ra.socket.write('ping\n');
  expect(await h.readLine(ra.socket as unknown as net.Socket)).toEqual('ping');
  ra.socket.destroy();
  rb.socket.destroy();
});

tap.test('a wildcard route takes subdomains but not unknown names', async () => {
  const r = await tlsClient('deep.sub.example.net');
  expect(r.line).toEqual('W');
  expect(r.subject).toEqual('wild.example.net');
  r.socket.destroy();
  const err = await tlsClient('nobody.example.org').then(() => null, (e) => e);
  expect(err).toBeInstanceOf(Error);
  // The unrecognized_name alert (112) itself, not just any failure.
  expect(err.code).toEqual('ERR_SSL_TLSV1_UNRECOGNIZED_NAME');
});

tap.test('a ClientHello without SNI gets an alert when only domain routes exist', async () => {
  const err = await tlsClient(undefined).then(() => null, (e) => e);
  expect(err).toBeInstanceOf(Error);
  // The handshake_failure alert (40) itself.
  expect(err.code).toEqual('ERR_SSL_SSLV3_ALERT_HANDSHAKE_FAILURE');
  const stats = proxy.getStatistics();
  expect(stats.terminationStats.incoming.no_route).toBeGreaterThanOrEqual(2);
});

tap.test('a route without domains catches SNI-less clients', async () => {
  const fallback = await h.tlsNameServer('F', certA);
  await proxy.updateRoutes([
    ...proxy.settings.routes,
    { name: 'no-sni', match: { ports: port }, action: { type: 'forward', target: { host: '127.0.0.1', port: fallback.port }, tls: { mode: 'passthrough' } } },
  ]);
  const r = await tlsClient(undefined);
  expect(r.line).toEqual('F');
  r.socket.destroy();
  await proxy.updateRoutes(proxy.settings.routes.slice(0, 3));
  await fallback.close();
});

tap.test('a ClientHello split across TCP segments and TLS records arrives byte-exact', async () => {
  const hello = await captureClientHello('a.example.com');
  expect(hello[0]).toEqual(0x16);
  const received: Buffer[] = [];
  const raw = await h.tcpServer((s) => s.on('data', (d) => received.push(d)));
  const rp = await h.freePort();
  const rproxy = new SmartProxy({
    routes: [{ name: 'raw', match: { ports: rp, domains: 'a.example.com' }, action: { type: 'forward', target: { host: '127.0.0.1', port: raw.port } } }],
  });
  await rproxy.start();
  // 1. The same record, delivered in three TCP segments with pauses.
  let c = await h.connect(rp);
  const cuts = [3, 40, hello.length];
  let from = 0;
  for (const to of cuts) {
    c.write(hello.subarray(from, to));
    from = to;
    await h.sleep(60);
  }
  await h.waitFor(() => Buffer.concat(received).length >= hello.length, 5000, 'backend to get the hello');
  expect(Buffer.concat(received).equals(hello)).toBeTrue();
  c.destroy();
  // 2. The handshake message re-framed into records of 100 bytes each.
  const body = hello.subarray(5, 5 + hello.readUInt16BE(3));
  const parts: Buffer[] = [];
  for (let i = 0; i < body.length; i += 100) {
    const chunk = body.subarray(i, i + 100);
    parts.push(Buffer.from([0x16, 0x03, 0x01, chunk.length >> 8, chunk.length & 0xff]), chunk);
  }
  const framed = Buffer.concat(parts);
  received.length = 0;
  c = await h.connect(rp);
  c.write(framed);
  await h.waitFor(() => Buffer.concat(received).length >= framed.length, 5000, 'backend to get the framed hello');
  expect(Buffer.concat(received).equals(framed)).toBeTrue();
  c.destroy();
  await rproxy.stop();
  await raw.close();
});

tap.test('a malformed ClientHello closes that connection only', async () => {
  const c = await h.connect(port);
  c.write(Buffer.from([0x16, 0x03, 0x01, 0x00, 0x05, 0x02, 0x00, 0x00, 0x01, 0x00]));
  await h.closed(c);
  const r = await tlsClient('a.example.com');
  expect(r.line).toEqual('A');
  r.socket.destroy();
  expect(proxy.getStatistics().terminationStats.incoming.tls_error).toEqual(1);
});

tap.test('match.tlsVersion routes by the highest offered version', async () => {
  const v12 = await h.tlsNameServer('V12', certA);
  const v13 = await h.tlsNameServer('V13', certA);
  const vp = await h.freePort();
  const vproxy = new SmartProxy({
    routes: [
      { name: 'tls13', match: { ports: vp, domains: 'a.example.com', tlsVersion: ['TLSv1.3'] }, action: { type: 'forward', target: { host: '127.0.0.1', port: v13.port } } },
      { name: 'older', match: { ports: vp, domains: 'a.example.com' }, action: { type: 'forward', target: { host: '127.0.0.1', port: v12.port } } },
    ],
  });
  await vproxy.start();
  const connectVia = (opts: tls.ConnectionOptions) =>
    new Promise<string>((resolve, reject) => {
      const s = tls.connect({ port: vp, host: '127.0.0.1', servername: 'a.example.com', rejectUnauthorized: false, ...opts }, async () => {
        resolve(await h.readLine(s as unknown as net.Socket));
        s.destroy();
      });
      s.once('error', reject);
    });
  expect(await connectVia({})).toEqual('V13');
  expect(await connectVia({ maxVersion: 'TLSv1.2' })).toEqual('V12');
  await vproxy.stop();
  await v12.close();
  await v13.close();
});

tap.test('teardown', async () => {
  await proxy.stop();
  await Promise.all([a.close(), b.close(), w.close()]);
  expect(proxy.getStatistics().activeConnections).toEqual(0);
});

tap.start();
