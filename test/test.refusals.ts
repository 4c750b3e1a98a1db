// Graceful refusals: after an answer that ends the connection (431 for a head too large, 404
// for a request with a body still arriving), the proxy closes its sending side (over TLS with
// a close_notify) and reads what the client still sends for a bounded time, so clients read
// the answer instead of a reset.
import { tap, expect } from '@git.zone/tstest/tapbundle';
import * as net from 'node:net';
import * as tls from 'node:tls';
import { SmartProxy } from '../index.js';
import * as h from './helpers.js';

let proxy: SmartProxy;
let port: number;
let backend: h.TestServer;
let cert: h.Cert;

tap.test('setup', async () => {
  const setup = await h.terminatingSetup('refuse.test', 'tls');
  ({ port, backend, cert } = setup);
  proxy = new SmartProxy({ maxConnectionsPerIP: 0, connectionRateLimitPerMinute: 0, routes: [setup.route] });
  await proxy.start();
});

/** Sends `first`, then keeps sending `more` (while the socket takes it), and resolves with
 * what the client read (or the error code it got). */
function pushAndRead(s: net.Socket, first: Buffer, more: Buffer, rounds: number): Promise<{ text: string; error?: string }> {
  return new Promise((resolve) => {
    let text = '';
    let error: string | undefined;
    s.on('data', (d) => (text += d.toString('latin1')));
    s.on('error', (e: any) => (error = e.code || e.message));
    s.on('close', () => resolve({ text, error }));
    s.write(first);
    let i = 0;
    const pump = () => {
      while (i < rounds && !s.destroyed && s.writable) {
        i++;
        if (!s.write(more)) return s.once('drain', pump);
      }
    };
    pump();
  });
}

tap.test('over TLS, 50 clients sending heads too large all read the 431', async () => {
  const big = Buffer.from(`GET / HTTP/1.1\r\nHost: refuse.test\r\nX-Big: ${'a'.repeat(70 * 1024)}`);
  const filler = Buffer.alloc(16 * 1024, 'a');
  const results = await Promise.all(
    Array.from({ length: 50 }, async () => {
      const s = await new Promise<tls.TLSSocket>((resolve, reject) => {
        const c = tls.connect({ host: h.HOST, port, servername: 'refuse.test', rejectUnauthorized: false }, () => resolve(c));
        c.once('error', reject);
      });
      return pushAndRead(s as unknown as net.Socket, big, filler, 8);
    }),
  );
  const got431 = results.filter((r) => r.text.startsWith('HTTP/1.1 431')).length;
  const resets = results.filter((r) => r.error === 'ECONNRESET').length;
  expect({ got431, resets }).toEqual({ got431: 50, resets: 0 });
});

tap.test('plain HTTP: a 404 for a request whose body is still arriving is read by the client', async () => {
  const p2port = await h.freePort();
  const p2 = new SmartProxy({ routes: [{ name: 'only', match: { ports: p2port, domains: 'known.test' }, action: { type: 'forward', target: { host: h.HOST, port: backend.port } } }, { name: 'tls', match: { ports: p2port, domains: 'other.test' }, action: { type: 'forward', target: { host: h.HOST, port: backend.port }, tls: { mode: 'terminate', certificate: cert } } }] });
  await p2.start();
  try {
    const results = await Promise.all(
      Array.from({ length: 20 }, async () => {
        const s = await h.connect(p2port);
        const head = Buffer.from('POST /upload HTTP/1.1\r\nHost: unknown.test\r\nContent-Length: 1000000\r\n\r\n');
        return pushAndRead(s, head, Buffer.alloc(32 * 1024, 'x'), 20);
      }),
    );
    expect(results.filter((r) => r.text.startsWith('HTTP/1.1 404')).length).toEqual(20);
  } finally {
    await p2.stop();
  }
});

tap.test('teardown', async () => {
  await proxy.stop();
  await backend.close();
});

export default tap.start();
