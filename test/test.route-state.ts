// Runtime state that must survive route updates (connection counts, rate-limit windows, TLS
// session tickets), ports freed by the update that drops them, WebSocket connections kept on
// the books until they close, bounded configuration values, and one X-Forwarded-For rule on
// both HTTP paths.
import { tap, expect } from '@git.zone/tstest/tapbundle';
import * as http from 'node:http';
import * as net from 'node:net';
import * as tls from 'node:tls';
import WebSocket, { WebSocketServer } from 'ws';
import { SmartProxy } from '../index.js';
import * as h from './helpers.js';

let greeter: h.TestServer;
let web: http.Server;
let webPort: number;

tap.test('setup: a greeting TCP backend and an HTTP backend that echoes X-Forwarded-For', async () => {
  greeter = await h.namedServer('ok');
  web = http.createServer((req, res) => {
    res.setHeader('x-seen-xff', String(req.headers['x-forwarded-for'] ?? ''));
    res.end('web');
  });
  await new Promise<void>((r) => web.listen(0, h.HOST, () => r()));
  webPort = (web.address() as net.AddressInfo).port;
});

/** Connects; 'ok' when the backend greets, 'closed' when the proxy closes first. */
function attempt(port: number): Promise<{ result: 'ok' | 'closed'; socket: net.Socket }> {
  return new Promise((resolve) => {
    const s = net.connect({ port, host: h.HOST });
    s.on('error', () => {});
    s.once('data', () => resolve({ result: 'ok', socket: s }));
    s.once('close', () => resolve({ result: 'closed', socket: s }));
  });
}

tap.test('security.maxConnections still counts the open connections after updateRoutes with the same routes', async () => {
  const port = await h.freePort();
  const routes = () => [h.forward('capped', port, greeter.port, { security: { maxConnections: 2 } })];
  const p = new SmartProxy({ routes: routes() });
  await p.start();
  const a = await attempt(port);
  const b = await attempt(port);
  expect([a.result, b.result]).toEqual(['ok', 'ok']);
  await p.updateRoutes(routes());
  const c = await attempt(port);
  expect(c.result).toEqual('closed');
  expect(a.socket.destroyed || b.socket.destroyed).toBeFalse();
  // The documented rule: a changed route starts with fresh state (its old connections keep the old one).
  await p.updateRoutes([h.forward('capped', port, greeter.port, { security: { maxConnections: 3 } })]);
  const fresh = [await attempt(port), await attempt(port), await attempt(port), await attempt(port)];
  expect(fresh.map((x) => x.result)).toEqual(['ok', 'ok', 'ok', 'closed']);
  for (const x of [a, b, ...fresh]) x.socket.destroy();
  await h.waitFor(() => p.getStatistics().activeConnections === 0, 5000, 'all closed');
  await p.stop();
});

function get(port: number, headers: Record<string, string> = {}): Promise<{ status: number; xff: string }> {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: h.HOST, port, path: '/', headers: { host: 'rl.test', ...headers }, agent: false }, (res) => {
      res.resume();
      res.on('end', () => resolve({ status: res.statusCode!, xff: String(res.headers['x-seen-xff'] ?? '') }));
    });
    req.on('error', reject);
  });
}

tap.test('a rate-limit window is not reset by updateRoutes with the same routes', async () => {
  const port = await h.freePort();
  const routes = () => [
    {
      name: 'limited',
      match: { ports: port, domains: 'rl.test' },
      action: { type: 'forward' as const, target: { host: h.HOST, port: webPort } },
      security: { rateLimit: { enabled: true, maxRequests: 2, window: 60 } },
    },
  ];
  const p = new SmartProxy({ routes: routes() });
  await p.start();
  expect((await get(port)).status).toEqual(200);
  expect((await get(port)).status).toEqual(200);
  await p.updateRoutes(routes());
  expect((await get(port)).status).toEqual(429);
  await p.stop();
});

function tlsSession(port: number, session?: Buffer): Promise<{ reused: boolean; session?: Buffer }> {
  return new Promise((resolve, reject) => {
    let got: Buffer | undefined;
    let reused = false;
    const s = tls.connect({ host: h.HOST, port, servername: 'resume.test', rejectUnauthorized: false, session, maxVersion: 'TLSv1.3' });
    s.on('session', (b) => (got = b));
    s.on('error', reject);
    s.once('secureConnect', () => {
      reused = s.isSessionReused();
      // TLS 1.3 tickets arrive after the handshake: ask for a response so they are read.
      s.write('GET / HTTP/1.1\r\nhost: resume.test\r\nconnection: close\r\n\r\n');
    });
    s.on('data', () => {});
    s.once('close', () => resolve({ reused, session: got }));
  });
}

for (const resumption of [true, false]) {
  tap.test(`TLS sessions ${resumption ? 'resume across updateRoutes' : 'never resume with tlsSessionResumption: false'}`, async () => {
    const port = await h.freePort();
    const cert = h.makeCert('resume.test');
    const routes = () => [
      {
        name: 'tls',
        match: { ports: port, domains: 'resume.test' },
        action: {
          type: 'forward' as const,
          target: { host: h.HOST, port: webPort },
          tls: { mode: 'terminate' as const, certificate: { key: cert.key, cert: cert.cert } },
        },
      },
    ];
    const p = new SmartProxy({ routes: routes(), tlsSessionResumption: resumption });
    await p.start();
    const first = await tlsSession(port);
    expect(first.reused).toBeFalse();
    if (resumption) {
      expect(first.session).toBeTruthy();
      expect((await tlsSession(port, first.session)).reused).toBeTrue();
    }
    await p.updateRoutes(routes());
    const again = await tlsSession(port, first.session);
    expect(again.reused).toEqual(resumption);
    await p.stop();
  });
}

tap.test('a port removed by updateRoutes is closed when it resolves, and can be added back at once', async () => {
  const [a, b] = await h.freePorts(2);
  const one = [h.forward('a', a, greeter.port)];
  const two = [...one, h.forward('b', b, greeter.port)];
  const p = new SmartProxy({ routes: one });
  await p.start();
  for (let i = 0; i < 150; i++) {
    await p.updateRoutes(two);
    await p.updateRoutes(one);
  }
  // Closed for real: a plain listener can take the port now.
  const taken = net.createServer();
  await new Promise<void>((resolve, reject) => {
    taken.once('error', reject);
    taken.listen(b, h.HOST, () => resolve());
  });
  await new Promise((r) => taken.close(r));
  await p.updateRoutes(two);
  expect((await attempt(b)).result).toEqual('ok');
  await p.stop();
});

tap.test('durations and multipliers too large to use are refused with the field, not a panic', async () => {
  const port = await h.freePort();
  const p = new SmartProxy({
    routes: [
      {
        name: 'rl',
        match: { ports: port },
        action: { type: 'forward', target: { host: h.HOST, port: webPort } },
        security: { rateLimit: { enabled: true, maxRequests: 1, window: 1e300 } },
      },
    ],
  });
  const err: any = await p.start().catch((e) => e);
  expect(err.code).toEqual('ERR_INVALID_CONFIG');
  expect(err.message).toMatch(/route "rl" \(index 0\): security\.rateLimit\.window: must be at most/);
  const q = new SmartProxy({ keepAliveInactivityMultiplier: 1e300, routes: [h.forward('x', port, webPort)] });
  const err2: any = await q.start().catch((e) => e);
  expect(err2.code).toEqual('ERR_INVALID_CONFIG');
  expect(err2.message).toMatch(/keepAliveInactivityMultiplier: must be at most 1000/);
});

tap.test('several X-Forwarded-For fields are joined the same way on the HTTP/1.1 fast path and the hyper path', async () => {
  const port = await h.freePort();
  const p = new SmartProxy({ routes: [{ name: 'web', match: { ports: port, domains: 'rl.test' }, action: { type: 'forward', target: { host: h.HOST, port: webPort } } }] });
  await p.start();
  const raw = (version: string) =>
    new Promise<string>((resolve, reject) => {
      const s = net.connect(port, h.HOST, () =>
        s.write(`GET / ${version}\r\nHost: rl.test\r\nX-Forwarded-For: 1.1.1.1\r\nX-Forwarded-For: 2.2.2.2, 3.3.3.3\r\nConnection: close\r\n\r\n`),
      );
      let data = '';
      s.on('data', (d) => (data += d));
      s.on('error', reject);
      s.on('close', () => resolve(/x-seen-xff: ([^\r\n]*)/i.exec(data)?.[1] ?? `no header in ${JSON.stringify(data.slice(0, 200))}`));
    });
  const expected = '1.1.1.1, 2.2.2.2, 3.3.3.3, 127.0.0.1';
  expect(await raw('HTTP/1.1')).toEqual(expected); // fast path
  expect(await raw('HTTP/1.0')).toEqual(expected); // hyper path
  await p.stop();
});

let wsServer: http.Server;
let wss: WebSocketServer;
let wsPort: number;

function openWs(port: number): Promise<WebSocket> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://127.0.0.1:${port}/`, { headers: { host: 'ws.test' } });
    ws.once('open', () => resolve(ws));
    ws.once('error', reject);
    ws.once('unexpected-response', (_req, res) => reject(new Error(`status ${res.statusCode}`)));
  });
}

tap.test('a WebSocket stays on the books until it closes: counted, limited per IP, bytes counted, lifetime enforced', async () => {
  wsServer = http.createServer((_req, res) => res.end('x'));
  wss = new WebSocketServer({ server: wsServer });
  wss.on('connection', (ws) => ws.on('message', (m, bin) => ws.send(m, { binary: bin })));
  await new Promise<void>((r) => wsServer.listen(0, h.HOST, () => r()));
  wsPort = (wsServer.address() as net.AddressInfo).port;
  const port = await h.freePort();
  const p = new SmartProxy({
    maxConnectionsPerIP: 2,
    maxConnectionLifetime: 2000,
    keepAliveTreatment: 'standard',
    routes: [{ name: 'ws', match: { ports: port, domains: 'ws.test' }, action: { type: 'forward', target: { host: h.HOST, port: wsPort }, websocket: { enabled: true } } }],
  });
  await p.start();
  const a = await openWs(port);
  const b = await openWs(port);
  expect(p.getStatistics().activeConnections).toEqual(2);
  // A third connection from the same address is refused while both are open.
  const third = await openWs(port).then(
    (ws) => (ws.close(), 'opened'),
    () => 'refused',
  );
  expect(third).toEqual('refused');
  // Bytes after the upgrade are counted.
  const before = p.getStatistics().bytesIn;
  const echoed = await new Promise<Buffer>((resolve) => {
    a.once('message', (m) => resolve(m as Buffer));
    a.send(Buffer.alloc(50_000, 7));
  });
  expect(echoed.length).toEqual(50_000);
  expect(p.getStatistics().bytesIn - before).toBeGreaterThan(50_000);
  // maxConnectionLifetime closes them.
  await h.waitFor(() => a.readyState === WebSocket.CLOSED && b.readyState === WebSocket.CLOSED, 8000, 'the lifetime to close both');
  await h.waitFor(() => p.getStatistics().activeConnections === 0, 5000, 'the books to close');
  expect(p.getStatistics().terminationStats.incoming.max_lifetime).toBeGreaterThanOrEqual(2);
  await p.stop();
});

tap.test('teardown', async () => {
  await greeter.close();
  await new Promise((r) => web.close(r));
  for (const c of wss?.clients ?? []) c.terminate();
  await new Promise((r) => wsServer?.close(r) ?? r(null));
});

export default tap.start();
