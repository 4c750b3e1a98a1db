// Idle HTTP connections are not held for a day: the first-request timeout after the TLS
// handshake (httpFirstRequestTimeout, default initialDataTimeout), the keep-alive timeout
// between requests (httpKeepAliveTimeout, HTTP/1.1 and HTTP/2), the head timeout
// (httpHeadersTimeout); a slow answer in flight is not cut by them; and the TLS handshake and
// the first bytes share one initialDataTimeout.
import { tap, expect } from '@git.zone/tstest/tapbundle';
import * as http from 'node:http';
import * as http2 from 'node:http2';
import * as net from 'node:net';
import * as tls from 'node:tls';
import { SmartProxy } from '../index.js';
import * as h from './helpers.js';

let backend: http.Server;
let backendPort: number;
const cert = h.makeCert('idle.test');

tap.test('setup: a backend that answers /slow after 800 ms', async () => {
  backend = http.createServer((req, res) => {
    if (req.url === '/slow') {
      res.writeHead(200, { 'content-type': 'text/plain', 'content-length': '2' });
      res.write('a');
      setTimeout(() => res.end('b'), 800);
    } else res.end('ok');
  });
  await new Promise<void>((r) => backend.listen(0, h.HOST, () => r()));
  backendPort = (backend.address() as net.AddressInfo).port;
});

async function withProxy(options: Record<string, any>, fn: (port: number, p: SmartProxy) => Promise<void>) {
  const port = await h.freePort();
  const p = new SmartProxy({
    ...options,
    routes: [
      { name: 'tls', match: { ports: port, domains: 'idle.test' }, action: { type: 'forward', target: { host: h.HOST, port: backendPort }, tls: { mode: 'terminate', certificate: cert } } },
      { name: 'plain', match: { ports: port, domains: 'plain.test' }, action: { type: 'forward', target: { host: h.HOST, port: backendPort } } },
    ],
  });
  await p.start();
  try {
    await fn(port, p);
  } finally {
    await p.stop();
  }
}

function tlsConnect(port: number, alpn = ['http/1.1']): Promise<tls.TLSSocket> {
  return new Promise((resolve, reject) => {
    const s = tls.connect({ host: h.HOST, port, servername: 'idle.test', rejectUnauthorized: false, ALPNProtocols: alpn }, () => resolve(s));
    s.once('error', reject);
  });
}

const idleClosed = (p: SmartProxy) => p.getStatistics().terminationStats?.incoming?.http_idle_timeout ?? 0;

/** One request on `s`; resolves with the body once the whole response is there. */
function request(s: net.Socket, path: string, host: string): Promise<string> {
  return new Promise((resolve, reject) => {
    let buf = '';
    const onData = (d: Buffer) => {
      buf += d.toString('latin1');
      const end = buf.indexOf('\r\n\r\n');
      if (end < 0) return;
      const head = buf.slice(0, end);
      const len = /content-length: (\d+)/i.exec(head);
      const body = buf.slice(end + 4);
      if (len && body.length >= Number(len[1])) return done(body.slice(0, Number(len[1])));
    };
    const done = (body: string) => {
      s.off('data', onData);
      resolve(body);
    };
    s.on('data', onData);
    s.once('error', reject);
    s.write(`GET ${path} HTTP/1.1\r\nHost: ${host}\r\n\r\n`);
  });
}

tap.test('a TLS client that sends no request is closed after httpFirstRequestTimeout', async () => {
  await withProxy({ httpFirstRequestTimeout: 300 }, async (port, p) => {
    const s = await tlsConnect(port);
    const t0 = Date.now();
    await h.closed(s, 3000);
    expect(Date.now() - t0).toBeLessThan(1500);
    // The client may see the close a moment before the proxy's books record its reason.
    await h.waitFor(() => idleClosed(p) === 1, 2000, 'the termination to be recorded');
  });
});

tap.test('keep-alive: idle between requests closed after httpKeepAliveTimeout; a slow answer and a steady client are not', async () => {
  await withProxy({ httpKeepAliveTimeout: 400 }, async (port, p) => {
    // HTTP/1.1 over TLS: requests every 200 ms keep the connection, then idling ends it.
    const s = await tlsConnect(port);
    for (let i = 0; i < 4; i++) {
      expect(await request(s, '/', 'idle.test')).toEqual('ok');
      await h.sleep(200);
    }
    // An answer that takes 800 ms (twice the keep-alive timeout) arrives whole.
    expect(await request(s, '/slow', 'idle.test')).toEqual('ab');
    const t0 = Date.now();
    await h.closed(s, 3000);
    expect(Date.now() - t0).toBeLessThan(1500);
    // Plain HTTP/1.1 the same.
    const c = await h.connect(port);
    expect(await request(c, '/', 'plain.test')).toEqual('ok');
    await h.closed(c, 3000);
    // HTTP/2: a connection without open streams.
    const session = http2.connect(`https://127.0.0.1:${port}`, { servername: 'idle.test', rejectUnauthorized: false });
    session.on('error', () => {});
    const answer = await h.h2Ask(session, { ':path': '/', ':authority': 'idle.test' });
    expect(answer.body.toString()).toEqual('ok');
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('HTTP/2 connection still open')), 3000);
      session.once('close', () => (clearTimeout(timer), resolve()));
    });
    await h.waitFor(() => idleClosed(p) === 3, 2000, 'the terminations to be recorded');
  });
});

tap.test('httpHeadersTimeout bounds a request head that stops arriving', async () => {
  // (The first head on a plain port is read to route the connection, within initialDataTimeout;
  // the next heads of a keep-alive connection within httpHeadersTimeout.)
  await withProxy({ httpHeadersTimeout: 300 }, async (port) => {
    const c = await h.connect(port);
    expect(await request(c, '/', 'plain.test')).toEqual('ok');
    c.write('GET / HTTP/1.1\r\nHost: plain.test\r\nX-Slow: ');
    const t0 = Date.now();
    await h.closed(c, 3000);
    expect(Date.now() - t0).toBeLessThan(1500);
  });
});

tap.test('the TLS handshake and the first bytes share one initialDataTimeout', async () => {
  // A real ClientHello, captured from Node's TLS client.
  const hello: Buffer = await new Promise((resolve) => {
    const srv = net.createServer((s) => s.once('data', (d) => (resolve(d), s.destroy(), srv.close())));
    srv.listen(0, h.HOST, () => {
      const c = tls.connect({ host: h.HOST, port: (srv.address() as net.AddressInfo).port, servername: 'idle.test', rejectUnauthorized: false });
      c.on('error', () => {});
    });
  });
  await withProxy({ initialDataTimeout: 600 }, async (port) => {
    const c = await h.connect(port);
    const t0 = Date.now();
    await h.sleep(450);
    c.write(hello); // then never finishes the handshake
    await h.closed(c, 3000);
    // Closed 600 ms after connecting, not 450 + 600.
    expect(Date.now() - t0).toBeLessThan(950);
  });
});

tap.test('teardown', async () => {
  backend.close();
});

export default tap.start();
