import { tap, expect } from '@git.zone/tstest/tapbundle';
import * as http from 'node:http';
import * as net from 'node:net';
import { SmartProxy } from '../index.js';
import * as h from './helpers.js';

// HTTP/1.1 over raw sockets: framing (lengths, chunks, trailers, no-body responses, responses
// delimited by close), pipelining, kept backend connections going stale, early answers to
// uploads, interim responses, and the requests that are handed to the general HTTP server
// (Expect, HTTP/1.0) on a connection that started on the fast path.
const servers: http.Server[] = [];
const tcp: h.TestServer[] = [];
let port: number;
let proxy: SmartProxy;
let backendConnections = 0;
let backendOpen = 0;
let oneShotPort: number;

const echo: http.RequestListener = (req, res) => {
  if (req.url === '/chunked') {
    res.setHeader('Trailer', 'X-Sum');
    res.write('part1-');
    res.write('part2');
    res.addTrailers({ 'X-Sum': 'p12' });
    res.end();
    return;
  }
  if (req.url === '/hints') {
    res.writeEarlyHints({ link: '</style.css>; rel=preload' });
    res.end('hinted');
    return;
  }
  if (req.url === '/nothing') {
    res.statusCode = 204;
    res.end();
    return;
  }
  h.digestBody(req).then(({ bytes, sha }) => {
    const body = JSON.stringify({ method: req.method, url: req.url, headers: req.headers, bytes, sha });
    res.setHeader('content-type', 'application/json');
    res.setHeader('content-length', Buffer.byteLength(body));
    res.end(body);
  });
};

interface RawResponse {
  status: number;
  headers: Record<string, string>;
  body: Buffer;
  trailers: string;
}

/** Reads HTTP/1.1 responses off a raw socket, one at a time, by their framing. */
class Reader {
  private buf = Buffer.alloc(0);
  private ended = false;
  private wake: (() => void) | null = null;
  constructor(readonly s: net.Socket) {
    s.on('data', (d) => {
      this.buf = Buffer.concat([this.buf, d]);
      this.wake?.();
    });
    const end = () => {
      this.ended = true;
      this.wake?.();
    };
    s.on('end', end);
    s.on('close', end);
    s.on('error', () => {});
  }

  private async more(deadline: number) {
    if (this.ended) throw new Error('connection closed');
    await new Promise<void>((resolve, reject) => {
      const t = setTimeout(() => reject(new Error('no response in time')), Math.max(1, deadline - Date.now()));
      this.wake = () => {
        clearTimeout(t);
        this.wake = null;
        resolve();
      };
    });
  }

  async next(opts: { head?: boolean } = {}, ms = 5000): Promise<RawResponse> {
    const deadline = Date.now() + ms;
    let end: number;
    while ((end = this.buf.indexOf('\r\n\r\n')) < 0) await this.more(deadline);
    const lines = this.buf.subarray(0, end).toString('latin1').split('\r\n');
    this.buf = this.buf.subarray(end + 4);
    const status = Number(lines[0].split(' ')[1]);
    const headers: Record<string, string> = {};
    for (const l of lines.slice(1)) {
      const i = l.indexOf(':');
      const k = l.slice(0, i).trim().toLowerCase();
      headers[k] = headers[k] ? `${headers[k]}, ${l.slice(i + 1).trim()}` : l.slice(i + 1).trim();
    }
    if (status < 200 || status === 204 || status === 304 || opts.head) return { status, headers, body: Buffer.alloc(0), trailers: '' };
    if (/chunked/i.test(headers['transfer-encoding'] ?? '')) {
      const parts: Buffer[] = [];
      for (;;) {
        let eol: number;
        while ((eol = this.buf.indexOf('\r\n')) < 0) await this.more(deadline);
        const size = parseInt(this.buf.subarray(0, eol).toString(), 16);
        this.buf = this.buf.subarray(eol + 2);
        if (size === 0) break;
        while (this.buf.length < size + 2) await this.more(deadline);
        parts.push(this.buf.subarray(0, size));
        this.buf = this.buf.subarray(size + 2);
      }
      let tEnd: number;
      while (!this.buf.subarray(0, 2).equals(Buffer.from('\r\n')) && (tEnd = this.buf.indexOf('\r\n\r\n')) < 0) await this.more(deadline);
      let trailers = '';
      if (this.buf.subarray(0, 2).equals(Buffer.from('\r\n'))) this.buf = this.buf.subarray(2);
      else {
        tEnd = this.buf.indexOf('\r\n\r\n');
        trailers = this.buf.subarray(0, tEnd).toString();
        this.buf = this.buf.subarray(tEnd + 4);
      }
      return { status, headers, body: Buffer.concat(parts), trailers };
    }
    if (headers['content-length'] !== undefined) {
      const n = Number(headers['content-length']);
      while (this.buf.length < n) await this.more(deadline);
      const body = this.buf.subarray(0, n);
      this.buf = this.buf.subarray(n);
      return { status, headers, body, trailers: '' };
    }
    while (!this.ended) await this.more(deadline).catch(() => {});
    const body = this.buf;
    this.buf = Buffer.alloc(0);
    return { status, headers, body, trailers: '' };
  }

  closed(ms = 5000) {
    return this.ended ? Promise.resolve() : h.closed(this.s, ms);
  }
}

async function open() {
  const s = await h.connect(port);
  return { s, r: new Reader(s) };
}

const get = (path: string, host = 'app.test', extra = '') => `GET ${path} HTTP/1.1\r\nHost: ${host}\r\n${extra}\r\n`;

tap.test('setup: an echo backend, a close-delimited backend, an early-answering backend', async () => {
  const s = http.createServer(echo);
  s.on('connection', (c) => {
    backendConnections++;
    backendOpen++;
    c.on('close', () => backendOpen--);
  });
  s.keepAliveTimeout = 150; // kept backend connections go stale quickly
  servers.push(s);
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
  const echoPort = (s.address() as net.AddressInfo).port;
  // HTTP/1.0 style: no length, the body ends when the connection does.
  const closing = await h.tcpServer((c) => {
    c.once('data', () => c.end('HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\n\r\nhello until close'));
    c.on('error', () => {});
  });
  // Answers 413 on the first bytes of a request and discards the rest of the upload.
  const early = await h.tcpServer((c) => {
    c.once('data', () => c.write('HTTP/1.1 413 Payload Too Large\r\ncontent-length: 4\r\nconnection: close\r\n\r\nnope'));
    c.on('data', () => {});
    c.on('error', () => {});
  });
  // Serves one request per connection, then drops the connection when the next one arrives (as
  // a backend closing an idle connection at the moment a request is on its way would).
  const oneShot = await h.tcpServer((c) => {
    let served = false;
    c.on('data', () => {
      if (served) return c.destroy();
      served = true;
      c.write('HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok');
    });
    c.on('error', () => {});
  });
  oneShotPort = oneShot.port;
  // Status lines without a reason phrase ("HTTP/1.1 200", and "HTTP/1.1 404 " with an empty one).
  const terse = await h.tcpServer((c) => {
    let n = 0;
    c.on('data', () => c.write(n++ % 2 === 0 ? 'HTTP/1.1 200\r\ncontent-length: 2\r\n\r\nok' : 'HTTP/1.1 404 \r\ncontent-length: 0\r\n\r\n'));
    c.on('error', () => {});
  });
  tcp.push(closing, early, oneShot, terse);
  port = await h.freePort();
  proxy = new SmartProxy({
    routes: [
      { name: 'closing', match: { ports: port, domains: 'close.test' }, action: { type: 'forward', target: { host: '127.0.0.1', port: closing.port } } },
      { name: 'oneshot', match: { ports: port, domains: 'oneshot.test' }, action: { type: 'forward', target: { host: '127.0.0.1', port: oneShotPort } } },
      { name: 'early', match: { ports: port, domains: 'early.test' }, action: { type: 'forward', target: { host: '127.0.0.1', port: early.port } } },
      { name: 'app', match: { ports: port, domains: 'app.test' }, action: { type: 'forward', target: { host: '127.0.0.1', port: echoPort } } },
      { name: 'terse', match: { ports: port, domains: 'terse.test' }, action: { type: 'forward', target: { host: '127.0.0.1', port: terse.port } } },
    ],
  });
  await proxy.start();
});

tap.test('pipelined requests are answered in order on one connection', async () => {
  const { s, r } = await open();
  s.write(get('/echo?a') + get('/echo?b') + get('/echo?c'));
  for (const q of ['a', 'b', 'c']) {
    const res = await r.next();
    expect(res.status).toEqual(200);
    expect(JSON.parse(res.body.toString()).url).toEqual(`/echo?${q}`);
  }
  s.destroy();
});

tap.test('chunked uploads and downloads (with trailers) pass through; the connection stays usable', async () => {
  const { s, r } = await open();
  s.write('POST /up HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n');
  const up = JSON.parse((await r.next()).body.toString());
  expect(up.bytes).toEqual(11);
  expect(up.sha).toEqual(h.sha256(Buffer.from('hello world')));
  s.write(get('/chunked'));
  const down = await r.next();
  expect(down.headers['transfer-encoding']).toEqual('chunked');
  expect(down.body.toString()).toEqual('part1-part2');
  expect(down.trailers).toMatch(/x-sum: p12/i);
  s.write(get('/after'));
  expect(JSON.parse((await r.next()).body.toString()).url).toEqual('/after');
  s.destroy();
});

tap.test('HEAD and 204 responses carry no body; the next request on the connection still works', async () => {
  const { s, r } = await open();
  s.write('HEAD /echo HTTP/1.1\r\nHost: app.test\r\n\r\n');
  const head = await r.next({ head: true });
  expect(head.status).toEqual(200);
  expect(Number(head.headers['content-length'])).toBeGreaterThan(0);
  s.write(get('/nothing'));
  expect((await r.next()).status).toEqual(204);
  s.write(get('/third'));
  expect(JSON.parse((await r.next()).body.toString()).url).toEqual('/third');
  s.destroy();
});

tap.test('a response without length is delimited by close, and the client is told so', async () => {
  const { s, r } = await open();
  s.write(get('/', 'close.test'));
  const res = await r.next();
  expect(res.status).toEqual(200);
  expect(res.headers.connection).toEqual('close');
  expect(res.body.toString()).toEqual('hello until close');
  await r.closed();
});

tap.test('status lines without a reason phrase are passed on; the connection stays usable', async () => {
  const { s, r } = await open();
  s.write(get('/a', 'terse.test'));
  const first = await r.next();
  expect(first.status).toEqual(200);
  expect(first.body.toString()).toEqual('ok');
  s.write(get('/b', 'terse.test'));
  expect((await r.next()).status).toEqual(404);
  s.write(get('/c'));
  expect(JSON.parse((await r.next()).body.toString()).url).toEqual('/c');
  s.destroy();
});

tap.test('a kept backend connection the backend closed meanwhile is replaced, not failed', async () => {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  const ask = (path: string) =>
    new Promise<number>((resolve, reject) => {
      http.get({ host: '127.0.0.1', port, path, agent, headers: { host: 'app.test' } }, (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode!));
      }).on('error', reject);
    });
  expect(await ask('/one')).toEqual(200);
  const before = backendConnections;
  // Past the backend's keepAliveTimeout it closes every kept connection.
  await h.waitFor(() => backendOpen === 0, 5000, 'the backend closing idle connections');
  expect(await ask('/two')).toEqual(200);
  expect(backendConnections - before).toEqual(1);
  agent.destroy();
});

tap.test('a request the backend drops on a kept connection is retried once on a new one', async () => {
  const { s, r } = await open();
  for (let i = 0; i < 3; i++) {
    s.write(get(`/n${i}`, 'oneshot.test'));
    const res = await r.next();
    expect(res.status).toEqual(200);
    expect(res.body.toString()).toEqual('ok');
  }
  s.destroy();
});

tap.test('a backend that answers before the upload ends: the client gets the answer and the connection closes', async () => {
  const { s, r } = await open();
  s.write(`POST /big HTTP/1.1\r\nHost: early.test\r\nContent-Length: ${8 * 1024 * 1024}\r\n\r\n`);
  s.write(Buffer.alloc(256 * 1024));
  const res = await r.next();
  expect(res.status).toEqual(413);
  expect(res.body.toString()).toEqual('nope');
  s.destroy();
  // The same when the client waits for a 100 that never comes: it gets the final answer.
  const waiting = await open();
  waiting.s.write('POST /big HTTP/1.1\r\nHost: early.test\r\nContent-Length: 1000\r\nExpect: 100-continue\r\n\r\n');
  expect((await waiting.r.next()).status).toEqual(413);
  await waiting.r.closed();
  // The proxy keeps serving.
  const again = await open();
  again.s.write(get('/still'));
  expect((await again.r.next()).status).toEqual(200);
  again.s.destroy();
});

tap.test('a client that leaves while the backend has not answered frees the backend connection', async () => {
  let backendClosed = false;
  const silent = await h.tcpServer((c) => {
    c.on('data', () => {}); // reads the request, never answers
    c.on('close', () => (backendClosed = true));
    c.on('error', () => {});
  });
  const p2 = await h.freePort();
  const px = new SmartProxy({ routes: [{ name: 'silent', match: { ports: p2, domains: 'silent.test' }, action: { type: 'forward', target: { host: '127.0.0.1', port: silent.port } } }] });
  await px.start();
  const s = await h.connect(p2);
  s.write(get('/', 'silent.test'));
  await h.sleep(100);
  s.destroy();
  await h.waitFor(() => backendClosed, 3000, 'the backend connection closing');
  await px.stop();
  await silent.close();
});

tap.test('interim 103 responses are passed on before the final one', async () => {
  const { s, r } = await open();
  s.write(get('/hints'));
  const hints = await r.next();
  expect(hints.status).toEqual(103);
  expect(hints.headers.link).toMatch(/style\.css/);
  const fin = await r.next();
  expect(fin.status).toEqual(200);
  expect(fin.body.toString()).toEqual('hinted');
  s.destroy();
});

tap.test('Expect: 100-continue (waiting for the 100 or not) and HTTP/1.0 are served on connections that started on the fast path', async () => {
  const { s, r } = await open();
  s.write(get('/first'));
  expect(JSON.parse((await r.next()).body.toString()).url).toEqual('/first');
  s.write('POST /expect HTTP/1.1\r\nHost: app.test\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n');
  expect((await r.next()).status).toEqual(100);
  s.write('hello');
  const posted = JSON.parse((await r.next()).body.toString());
  expect(posted.bytes).toEqual(5);
  // A client that does not wait for the 100 gets it anyway, then the answer.
  s.write('POST /eager HTTP/1.1\r\nHost: app.test\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\nabc');
  let eager = await r.next();
  if (eager.status === 100) eager = await r.next();
  expect(JSON.parse(eager.body.toString()).bytes).toEqual(3);
  s.write(get('/last'));
  expect(JSON.parse((await r.next()).body.toString()).url).toEqual('/last');
  s.destroy();
  const old = await open();
  old.s.write('GET /old HTTP/1.0\r\nHost: app.test\r\n\r\n');
  const res = await old.r.next();
  expect(res.status).toEqual(200);
  expect(JSON.parse(res.body.toString()).url).toEqual('/old');
  await old.r.closed();
});

tap.test('Connection: close is honoured; X-Forwarded-For is appended; hop-by-hop headers stay behind', async () => {
  const { s, r } = await open();
  s.write(get('/xff', 'app.test', 'X-Forwarded-For: 10.1.2.3\r\nConnection: close, x-private\r\nX-Private: 1\r\nKeep-Alive: timeout=5\r\n'));
  const res = await r.next();
  expect(res.headers.connection).toEqual('close');
  const seen = JSON.parse(res.body.toString()).headers;
  expect(seen['x-forwarded-for']).toEqual('10.1.2.3, 127.0.0.1');
  expect(seen['x-forwarded-proto']).toEqual('http');
  expect(seen['x-forwarded-host']).toEqual('app.test');
  expect(seen['x-private']).toBeUndefined();
  expect(seen['keep-alive']).toBeUndefined();
  await r.closed();
});

tap.test('framing abuse: bad Content-Length gets 400, Transfer-Encoding wins over Content-Length, huge heads get 431', async () => {
  let c = await open();
  c.s.write('POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: 12abc\r\n\r\n');
  expect((await c.r.next()).status).toEqual(400);
  await c.r.closed();
  c = await open();
  c.s.write('POST /te HTTP/1.1\r\nHost: app.test\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n0\r\n\r\n');
  const te = JSON.parse((await c.r.next()).body.toString());
  expect(te.bytes).toEqual(4);
  expect(te.headers['content-length']).toBeUndefined();
  c.s.destroy();
  c = await open();
  c.s.write(`GET / HTTP/1.1\r\nHost: app.test\r\nX-Big: ${'a'.repeat(70 * 1024)}\r\n\r\n`);
  expect((await c.r.next()).status).toEqual(431);
  await c.r.closed();
  c = await open();
  c.s.write(get('/fine'));
  expect((await c.r.next()).status).toEqual(200);
  c.s.destroy();
});

tap.test('HTTP/2 clients (h2c): requests reach HTTP/1.1 backends; chunked bodies decoded, cookies joined, uploads streamed', async () => {
  const h2 = await import('node:http2');
  const session = h2.connect(`http://127.0.0.1:${port}`);
  session.on('error', () => {});
  const ask = (headers: Record<string, any>, body?: string) => h.h2Ask(session, { ':authority': 'app.test', ...headers }, body);
  const chunked = await ask({ ':path': '/chunked' });
  expect(chunked.head[':status']).toEqual(200);
  expect(chunked.body.toString()).toEqual('part1-part2');
  const cookie = await ask({ ':path': '/cookie', cookie: ['a=1', 'b=2'] });
  expect(JSON.parse(cookie.body.toString()).headers.cookie).toEqual('a=1; b=2');
  expect((await ask({ ':path': '/nothing' })).head[':status']).toEqual(204);
  const head = await ask({ ':method': 'HEAD', ':path': '/echo' });
  expect(head.head[':status']).toEqual(200);
  expect(head.body.length).toEqual(0);
  const up = await ask({ ':method': 'POST', ':path': '/up' }, 'hello');
  expect(JSON.parse(up.body.toString()).bytes).toEqual(5);
  const many = await Promise.all(Array.from({ length: 20 }, (_, i) => ask({ ':path': `/p${i}` })));
  many.forEach((r, i) => expect(JSON.parse(r.body.toString()).url).toEqual(`/p${i}`));
  await new Promise<void>((r) => session.close(() => r()));
});

tap.test('teardown', async () => {
  await proxy.stop();
  for (const s of servers) await new Promise((r) => s.close(r));
  for (const t of tcp) await t.close();
});

tap.start();
