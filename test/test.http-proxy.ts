import { tap, expect } from '@git.zone/tstest/tapbundle';
import * as http from 'node:http';
import * as net from 'node:net';
import * as crypto from 'node:crypto';
import { fork } from 'node:child_process';
import { SmartProxy } from '../index.js';
import * as h from './helpers.js';

// The HTTP layer on a plain port: per-request routing, headers and templates, CORS, rewrite,
// streaming bodies, error statuses.
const servers: http.Server[] = [];
let apiPort: number, webPort: number, bigPort: number;
let port: number;
let proxy: SmartProxy;

async function httpServer(handler: http.RequestListener): Promise<number> {
  const s = http.createServer(handler);
  servers.push(s);
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
  return (s.address() as net.AddressInfo).port;
}

const info = (name: string): http.RequestListener => (req, res) => {
  res.setHeader('content-type', 'application/json');
  res.setHeader('x-backend', name);
  res.setHeader('connection', 'keep-alive');
  res.end(JSON.stringify({ name, url: req.url, headers: req.headers }));
};

function request(opts: http.RequestOptions & { body?: Buffer | string }): Promise<{ status: number; headers: http.IncomingHttpHeaders; text: string; json: any }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, ...opts }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (d) => (text += d));
      res.on('end', () => {
        let json: any;
        try {
          json = JSON.parse(text);
        } catch {}
        resolve({ status: res.statusCode!, headers: res.headers, text, json });
      });
    });
    req.on('error', reject);
    req.end(opts.body);
  });
}

/** Writes `raw` (requests, pipelined) on one connection and returns what came back, once
 * `done` says it is all there and 100 ms more brought nothing else. */
async function pipelined(port: number, raw: string, done: (text: string) => boolean): Promise<string> {
  const k = await h.connect(port);
  let text = '';
  k.on('data', (d) => (text += d));
  k.write(raw);
  try {
    await h.waitFor(() => done(text), 5000, 'the answers');
    await h.sleep(100);
    return text;
  } finally {
    k.destroy();
  }
}

tap.test('setup', async () => {
  apiPort = await httpServer(info('api'));
  webPort = await httpServer(info('web'));
  bigPort = await httpServer((req, res) => {
    if (req.url === '/upload') {
      h.digestBody(req).then((d) => res.end(JSON.stringify(d)));
      return;
    }
    // /download: 64 MiB of deterministic data, streamed.
    res.setHeader('content-type', 'application/octet-stream');
    let i = 0;
    const chunk = (k: number) => crypto.createHash('sha512').update(String(k)).digest().subarray(0, 64).toString('hex').repeat(64 * 2).slice(0, 16384);
    const pump = () => {
      while (i < 4096) {
        if (!res.write(chunk(i++))) return res.once('drain', pump);
      }
      res.end();
    };
    pump();
  });
  port = await h.freePort();
  proxy = new SmartProxy({
    routes: [
      { name: 'user', match: { ports: port, domains: 'app.test', path: '/users/:id' }, action: { type: 'forward', target: { host: '127.0.0.1', port: apiPort } } },
      {
        name: 'api',
        match: { ports: port, domains: 'app.test', path: '/api/*' },
        action: { type: 'forward', target: { host: '127.0.0.1', port: apiPort } },
        headers: {
          request: { 'X-Route': '{routeName}', 'X-Client': '{clientIp}', 'X-Orig-Path': '{path}', 'X-Domain': '{domain}' },
          response: { 'X-Served-By': 'smartproxy-native {routeName}' },
          cors: { enabled: true, allowOrigin: ['https://ui.test'], allowMethods: 'GET, POST', allowHeaders: 'X-Token', maxAge: 600 },
        },
      },
      {
        name: 'rewrite',
        match: { ports: port, domains: 'app.test', path: '/old/*' },
        action: { type: 'forward', target: { host: '127.0.0.1', port: webPort }, advanced: { urlRewrite: { pattern: '^/old/(.*)$', target: '/new/$1', onlyRewritePath: true } } },
      },
      { name: 'big', match: { ports: port, domains: 'big.test' }, action: { type: 'forward', target: { host: '127.0.0.1', port: bigPort } } },
      { name: 'down', match: { ports: port, domains: 'down.test' }, action: { type: 'forward', target: { host: '127.0.0.1', port: 1 } } },
      { name: 'web', match: { ports: port, domains: 'app.test' }, action: { type: 'forward', target: { host: '127.0.0.1', port: webPort } } },
    ],
  });
  await proxy.start();
});

tap.test('path routing, including :param paths', async () => {
  expect((await request({ path: '/users/42', headers: { host: 'app.test' } })).json.name).toEqual('api');
  expect((await request({ path: '/api/v1/things', headers: { host: 'app.test' } })).json.name).toEqual('api');
  expect((await request({ path: '/', headers: { host: 'app.test' } })).json.name).toEqual('web');
  expect((await request({ path: '/users/', headers: { host: 'app.test' } })).json.name).toEqual('web');
});

tap.test('header templates reach the backend and the client; Host is kept; hop-by-hop headers are not forwarded', async () => {
  const r = await request({ path: '/api/x?q=1', headers: { host: 'app.test:8080', 'x-forwarded-for': '203.0.113.9', 'x-secret': 'no', connection: 'keep-alive, x-secret' } });
  const seen = r.json.headers;
  expect(seen.host).toEqual('app.test:8080');
  expect(seen['x-route']).toEqual('api');
  expect(seen['x-client']).toEqual('127.0.0.1');
  expect(seen['x-orig-path']).toEqual('/api/x');
  expect(seen['x-domain']).toEqual('app.test');
  expect(seen['x-forwarded-for']).toEqual('203.0.113.9, 127.0.0.1');
  expect(seen['x-forwarded-proto']).toEqual('http');
  expect(seen['x-forwarded-host']).toEqual('app.test:8080');
  expect(seen['x-secret']).toBeUndefined();
  expect(r.headers['x-served-by']).toEqual('smartproxy-native api');
});

tap.test('CORS: preflight answered by the proxy, headers on responses for allowed origins only', async () => {
  const pre = await request({ method: 'OPTIONS', path: '/api/x', headers: { host: 'app.test', origin: 'https://ui.test', 'access-control-request-method': 'POST' } });
  expect(pre.status).toEqual(204);
  expect(pre.headers['access-control-allow-origin']).toEqual('https://ui.test');
  expect(pre.headers['access-control-allow-methods']).toEqual('GET, POST');
  expect(pre.headers['access-control-max-age']).toEqual('600');
  const ok = await request({ path: '/api/x', headers: { host: 'app.test', origin: 'https://ui.test' } });
  expect(ok.headers['access-control-allow-origin']).toEqual('https://ui.test');
  const other = await request({ path: '/api/x', headers: { host: 'app.test', origin: 'https://evil.test' } });
  expect(other.headers['access-control-allow-origin']).toBeUndefined();
});

tap.test('advanced.testResponse: the proxy answers every request itself (HTTP/1.1, HTTP/2); the backend is never asked', async () => {
  let asked = 0;
  const backend = http.createServer((_q, r) => (asked++, r.end('backend')));
  await new Promise<void>((r) => backend.listen(0, '127.0.0.1', () => r()));
  const bport = (backend.address() as net.AddressInfo).port;
  const [plain, raw, secure] = await h.freePorts(3);
  const cert = h.makeCert('fixed.test');
  const testResponse = { status: 418, headers: { 'Content-Type': 'text/plain', 'X-Fixed': 'yes' }, body: 'short and stout' };
  const p = new SmartProxy({
    routes: [
      h.forward('fixed', plain, bport, { match: { domains: 'fixed.test' }, action: { advanced: { testResponse } } }),
      h.forward('fixed-any', raw, bport, { action: { advanced: { testResponse: { status: 503, body: '' } } } }),
      h.forward('fixed-tls', secure, bport, { match: { domains: 'fixed.test' }, action: { tls: { mode: 'terminate', certificate: cert }, advanced: { testResponse } } }),
    ],
  });
  await p.start();
  const h2 = await import('node:http2');
  const session = h2.connect(`https://127.0.0.1:${secure}`, { servername: 'fixed.test', ca: cert.cert });
  try {
    for (const r of [
      await request({ port: plain, path: '/a', headers: { host: 'fixed.test' } }),
      await request({ port: plain, method: 'POST', path: '/b', headers: { host: 'fixed.test' }, body: 'payload' }),
    ]) {
      expect([r.status, r.text, r.headers['x-fixed'], r.headers['content-type'], r.headers['content-length']]).toEqual([418, 'short and stout', 'yes', 'text/plain', '15']);
    }
    const a = await h.h2Ask(session, { ':path': '/c', ':authority': 'fixed.test' });
    expect([a.head[':status'], a.body.toString(), a.head['x-fixed']]).toEqual([418, 'short and stout', 'yes']);
    // HEAD gets the head only, on HTTP/1.1 with the body's length (the next response on the
    // connection starts right after it) and on HTTP/2.
    const text = await pipelined(plain, 'HEAD /h HTTP/1.1\r\nHost: fixed.test\r\n\r\nGET /g HTTP/1.1\r\nHost: fixed.test\r\n\r\n', (t) => t.endsWith('short and stout'));
    const answers = text.split('HTTP/1.1 418 ');
    expect(answers.length).toEqual(3);
    expect(answers[1]).toMatch(/\r\ncontent-length: 15\r\n(?:[^\r\n]+\r\n)*\r\n$/i);
    expect(answers[2].endsWith('\r\n\r\nshort and stout')).toEqual(true);
    const hd = await h.h2Ask(session, { ':method': 'HEAD', ':path': '/c', ':authority': 'fixed.test' });
    expect([hd.head[':status'], hd.body.length]).toEqual([418, 0]);
    // A route without domains: HTTP gets the answer; bytes that are not HTTP are refused (never
    // relayed to the backend around the fixed answer).
    expect((await request({ port: raw, path: '/', headers: { host: 'x' } })).status).toEqual(503);
    const s = await h.connect(raw);
    const got: Buffer[] = [];
    s.on('data', (d) => got.push(d));
    s.on('error', () => {});
    s.write('SSH-2.0-client not http\r\n\r\n');
    await h.closed(s);
    expect(Buffer.concat(got).length).toEqual(0);
    expect(asked).toEqual(0);
  } finally {
    session.close();
    await p.stop();
    await new Promise((r) => backend.close(r));
  }
});

tap.test('URL rewrite', async () => {
  const r = await request({ path: '/old/page?keep=1', headers: { host: 'app.test' } });
  expect(r.json.url).toEqual('/new/page?keep=1');
});

tap.test('consecutive requests on one keep-alive connection reach different routes', async () => {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  const sockets = new Set<net.Socket>();
  const one = await request({ agent, path: '/api/a', headers: { host: 'app.test' } });
  const two = await request({ agent, path: '/page', headers: { host: 'app.test' } });
  const three = await request({ agent, path: '/users/7', headers: { host: 'app.test' } });
  for (const s of Object.values(agent.sockets).flat()) sockets.add(s as net.Socket);
  for (const s of Object.values(agent.freeSockets).flat()) sockets.add(s as net.Socket);
  expect([one.json.name, two.json.name, three.json.name]).toEqual(['api', 'web', 'api']);
  expect(sockets.size).toEqual(1);
  expect(proxy.getStatistics().totalConnections).toBeGreaterThan(0);
  agent.destroy();
});

tap.test('no matching route gives 404, a dead backend 502', async () => {
  expect((await request({ path: '/', headers: { host: 'nobody.test' } })).status).toEqual(404);
  expect((await request({ path: '/', headers: { host: 'down.test' } })).status).toEqual(502);
  // To HEAD, both carry the head alone, so the next answer on the connection is read right.
  const text = await pipelined(
    port,
    'HEAD / HTTP/1.1\r\nHost: down.test\r\n\r\nHEAD / HTTP/1.1\r\nHost: nobody.test\r\n\r\nGET / HTTP/1.1\r\nHost: nobody.test\r\n\r\n',
    (t) => (t.match(/HTTP\/1\.1 /g) ?? []).length === 3 && !t.endsWith('\r\n\r\n'),
  );
  const answers = text.split(/(?=HTTP\/1\.1 )/);
  expect(answers.map((a) => a.slice(9, 12))).toEqual(['502', '404', '404']);
  for (const a of answers.slice(0, 2)) expect(a.endsWith('\r\n\r\n')).toEqual(true);
  expect(answers[2].endsWith('\r\n\r\n')).toEqual(false);
});

tap.test('a malformed request gets 400 and the proxy keeps serving', async () => {
  const s = await h.connect(port);
  s.write('GET / HTTP/1.1\r\nHost: app.test\r\nBad Header Line\r\n\r\n');
  const chunks: Buffer[] = [];
  s.on('data', (d) => chunks.push(d));
  await h.closed(s);
  expect(Buffer.concat(chunks).toString()).toMatch(/^HTTP\/1\.1 400/);
  expect((await request({ path: '/', headers: { host: 'app.test' } })).status).toEqual(200);
});

tap.test('64 MiB upload and download stream through with equal checksums and bounded memory', async () => {
  // The proxy runs in a child process here, so that its memory is measured alone.
  const childPort = await h.freePort();
  const child = fork('test/fixtures/proxy-child.ts', [JSON.stringify({ routes: [{ name: 'big', match: { ports: childPort, domains: 'big.test' }, action: { type: 'forward', target: { host: '127.0.0.1', port: bigPort } } }] })], {
    execArgv: ['--import', 'tsx'],
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  const ask = (m: string) => new Promise<any>((r) => { child.once('message', r); child.send(m); });
  await new Promise((r) => child.once('message', r));
  const { rss: rssBefore } = await ask('rss');
  const port = childPort;
  // Upload: generated chunk by chunk, hashed on both ends.
  const up = crypto.createHash('sha256');
  const upload = await new Promise<any>((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, method: 'POST', path: '/upload', headers: { host: 'big.test' } }, (res) => {
      let t = '';
      res.on('data', (d) => (t += d));
      res.on('end', () => resolve(JSON.parse(t)));
    });
    req.on('error', reject);
    let i = 0;
    const block = crypto.randomBytes(65536);
    const pump = () => {
      while (i < 1024) {
        const chunk = Buffer.from(block);
        chunk.writeUInt32BE(i++, 0);
        up.update(chunk);
        if (!req.write(chunk)) return req.once('drain', pump);
      }
      req.end();
    };
    pump();
  });
  expect(upload.bytes).toEqual(64 * 1024 * 1024);
  expect(upload.sha).toEqual(up.digest('hex'));
  // Download: compare with the same data generated locally.
  const expected = crypto.createHash('sha256');
  for (let k = 0; k < 4096; k++) {
    expected.update(crypto.createHash('sha512').update(String(k)).digest().subarray(0, 64).toString('hex').repeat(64 * 2).slice(0, 16384));
  }
  const got = crypto.createHash('sha256');
  let n = 0;
  await new Promise<void>((resolve, reject) => {
    http
      .get({ host: '127.0.0.1', port, path: '/download', headers: { host: 'big.test' } }, (res) => {
        res.on('data', (d) => {
          got.update(d);
          n += d.length;
        });
        res.on('end', () => resolve());
      })
      .on('error', reject);
  });
  expect(n).toEqual(64 * 1024 * 1024);
  expect(got.digest('hex')).toEqual(expected.digest('hex'));
  // 128 MiB moved through the proxy; its process grew by a small fraction of that.
  const { peak } = await ask('rss');
  child.send('stop');
  await new Promise((r) => child.once('exit', r));
  expect(peak - rssBefore).toBeLessThan(24 * 1024 * 1024);
});


tap.test("backendProtocol 'http2' speaks HTTP/2 to the backend; HTTP/1.1 backends are pooled", async () => {
  const h2 = await import('node:http2');
  const h2server = h2.createServer();
  h2server.on('stream', (stream, headers) => {
    stream.respond({ ':status': 200, 'content-type': 'application/json' });
    stream.end(JSON.stringify({ path: headers[':path'], version: '2' }));
  });
  await new Promise<void>((r) => h2server.listen(0, '127.0.0.1', () => r()));
  const h2port = (h2server.address() as net.AddressInfo).port;
  let backendConnections = 0;
  const counted = http.createServer(info('pooled'));
  counted.on('connection', () => backendConnections++);
  await new Promise<void>((r) => counted.listen(0, '127.0.0.1', () => r()));
  servers.push(counted);
  const p2 = await h.freePort();
  const px = new SmartProxy({
    routes: [
      { name: 'h2', match: { ports: p2, domains: 'h2.test' }, action: { type: 'forward', target: { host: '127.0.0.1', port: h2port }, options: { backendProtocol: 'http2' } } },
      { name: 'pooled', match: { ports: p2, domains: 'pool.test' }, action: { type: 'forward', target: { host: '127.0.0.1', port: (counted.address() as net.AddressInfo).port } } },
    ],
  });
  await px.start();
  const r = await request({ port: p2, path: '/over-h2', headers: { host: 'h2.test' } });
  expect(r.json).toEqual({ path: '/over-h2', version: '2' });
  // Three client connections, one after another: one pooled backend connection serves them.
  for (let i = 0; i < 3; i++) {
    expect((await request({ port: p2, path: `/p${i}`, headers: { host: 'pool.test' }, agent: false })).json.name).toEqual('pooled');
  }
  expect(backendConnections).toEqual(1);
  await px.stop();
  await new Promise((res) => h2server.close(res));
});

tap.test('a backend that does not answer in time gives 504', async () => {
  const silent = await h.tcpServer(() => {}); // accepts, never responds
  const p3 = await h.freePort();
  const px = new SmartProxy({
    routes: [{ name: 'slow', match: { ports: p3, domains: 'slow.test' }, action: { type: 'forward', target: { host: '127.0.0.1', port: silent.port }, advanced: { timeout: 300 } } }],
  });
  await px.start();
  const t0 = Date.now();
  const r = await request({ port: p3, path: '/', headers: { host: 'slow.test' } });
  expect(r.status).toEqual(504);
  expect(Date.now() - t0).toBeLessThan(3000);
  await px.stop();
  await silent.close();
});

tap.test('requests on an open keep-alive connection follow updateRoutes', async () => {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  expect((await request({ agent, path: '/', headers: { host: 'app.test' } })).json.name).toEqual('web');
  const routes = proxy.settings.routes.map((r) => (r.name === 'web' ? { ...r, action: { ...r.action, target: { host: '127.0.0.1', port: apiPort } } } : r));
  await proxy.updateRoutes(routes);
  expect((await request({ agent, path: '/', headers: { host: 'app.test' } })).json.name).toEqual('api');
  expect(Object.values(agent.freeSockets).flat().length + Object.values(agent.sockets).flat().length).toEqual(1);
  agent.destroy();
});

tap.test('teardown', async () => {
  await proxy.stop();
  for (const s of servers) await new Promise((r) => s.close(r));
});

tap.start();
