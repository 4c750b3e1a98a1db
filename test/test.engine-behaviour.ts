// Engine behaviour that earlier suites named but did not pin down: the metrics API, stop() with
// open connections under gracefulShutdownTimeout, IP rules of HTTP routes answered with 403,
// enableHalfOpen both ways, a target function that never settles, and an idle WebSocket closed
// by inactivityTimeout.
import { tap, expect } from '@git.zone/tstest/tapbundle';
import * as http from 'node:http';
import * as net from 'node:net';
import WebSocket, { WebSocketServer } from 'ws';
import { SmartProxy } from '../index.js';
import * as h from './helpers.js';

let greeter: h.TestServer;
let web: http.Server;
let webPort: number;
let webRequests = 0;

tap.test('setup', async () => {
  greeter = await h.namedServer('hi');
  web = http.createServer((req, res) => {
    webRequests++;
    res.end(`web ${req.url}`);
  });
  await new Promise<void>((r) => web.listen(0, h.HOST, () => r()));
  webPort = (web.address() as net.AddressInfo).port;
});

tap.test('getMetrics(): live connections by route and IP, and totals', async () => {
  const port = await h.freePort();
  const p = new SmartProxy({ routes: [h.forward('m', port, greeter.port)] });
  await p.start();
  const m = p.getMetrics();
  const a = await h.connect(port);
  const b = await h.connect(port);
  expect(await h.readLine(a)).toEqual('hi');
  expect(await h.readLine(b)).toEqual('hi');
  expect(m.connections.active()).toEqual(2);
  expect(m.connections.total()).toEqual(2);
  expect(m.connections.byRoute().get('m')).toEqual(2);
  expect(m.connections.byIP().get('127.0.0.1')).toEqual(2);
  expect(m.connections.topIPs(1)).toEqual([{ ip: '127.0.0.1', count: 2 }]);
  a.write('ping\n');
  expect(await h.readLine(a)).toEqual('ping'); // echoed back
  await h.waitFor(() => m.totals.bytesIn() >= 5, 3000, 'bytes in to be counted');
  expect(m.totals.bytesOut()).toBeGreaterThanOrEqual(6); // two greetings
  a.destroy();
  b.destroy();
  await h.waitFor(() => m.connections.active() === 0, 3000, 'both to close');
  expect(m.totals.connections()).toEqual(2);
  await p.stop();
});

tap.test('stop() closes open connections and resolves within gracefulShutdownTimeout', async () => {
  const port = await h.freePort();
  const p = new SmartProxy({ gracefulShutdownTimeout: 1000, routes: [h.forward('g', port, greeter.port)] });
  await p.start();
  const conns = await Promise.all([h.connect(port), h.connect(port), h.connect(port)]);
  for (const c of conns) expect(await h.readLine(c)).toEqual('hi');
  const t0 = Date.now();
  await p.stop();
  expect(Date.now() - t0).toBeLessThan(1500);
  await Promise.all(conns.map((c) => h.closed(c, 2000)));
  expect(p.getStatistics().activeConnections).toEqual(0);
});

function get(port: number, host: string, path = '/', socket?: net.Socket): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: h.HOST, port, path, headers: { host }, agent: false, createConnection: socket ? () => socket : undefined }, (res) => {
      let body = '';
      res.on('data', (d) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode!, body }));
    });
    req.on('error', reject);
  });
}

tap.test('IP rules of HTTP routes are answered with 403 per request, and the backend sees nothing', async () => {
  const port = await h.freePort();
  const p = new SmartProxy({
    routes: [
      { name: 'open', match: { ports: port, domains: 'open.test' }, action: { type: 'forward', target: { host: h.HOST, port: webPort } } },
      {
        name: 'closed',
        match: { ports: port, domains: 'closed.test' },
        action: { type: 'forward', target: { host: h.HOST, port: webPort } },
        security: { ipBlockList: ['127.0.0.1'] },
      },
      {
        name: 'allow-other',
        match: { ports: port, domains: 'allow.test' },
        action: { type: 'forward', target: { host: h.HOST, port: webPort } },
        security: { ipAllowList: ['10.0.0.0/8'] },
      },
    ],
  });
  await p.start();
  const before = webRequests;
  expect(await get(port, 'closed.test')).toEqual({ status: 403, body: 'Forbidden\n' });
  expect((await get(port, 'allow.test')).status).toEqual(403);
  expect(webRequests).toEqual(before);
  // On one keep-alive connection: an allowed request, a refused one, an allowed one.
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  const ask = (host: string) =>
    new Promise<number>((resolve, reject) => {
      http
        .get({ host: h.HOST, port, path: '/', headers: { host }, agent }, (res) => {
          res.resume();
          res.on('end', () => resolve(res.statusCode!));
        })
        .on('error', reject);
    });
  expect([await ask('open.test'), await ask('closed.test'), await ask('open.test')]).toEqual([200, 403, 200]);
  expect(webRequests).toEqual(before + 2);
  agent.destroy();
  await p.stop();
});

/** A backend that answers only after the client's end of stream (needs half-open). */
async function lateBackend(): Promise<h.TestServer> {
  const s = net.createServer({ allowHalfOpen: true }, (c) => {
    let got = '';
    c.on('data', (d) => (got += d));
    c.on('end', () => c.end(`late:${got}`));
    c.on('error', () => {});
  });
  await new Promise<void>((r) => s.listen(0, h.HOST, () => r()));
  const port = (s.address() as net.AddressInfo).port;
  return { port, server: s, sockets: new Set(), accepted: () => 0, close: () => new Promise((r) => s.close(() => r())) };
}

function halfClose(port: number): Promise<string> {
  return new Promise((resolve) => {
    const c = net.connect({ port, host: h.HOST, allowHalfOpen: true }, () => {
      c.write('question');
      c.end();
    });
    let got = '';
    c.on('data', (d) => (got += d));
    c.on('error', () => {});
    c.on('close', () => resolve(got));
    setTimeout(() => c.destroy(), 3000);
  });
}

tap.test('enableHalfOpen: the answer to a half-closed request arrives only when enabled', async () => {
  const late = await lateBackend();
  for (const enableHalfOpen of [true, false]) {
    const port = await h.freePort();
    const p = new SmartProxy({ enableHalfOpen, routes: [h.forward('half', port, late.port)] });
    await p.start();
    const got = await halfClose(port);
    expect(got).toEqual(enableHalfOpen ? 'late:question' : '');
    await p.stop();
  }
  await late.close();
});

tap.test('a target function that never settles: that connection closes after the call timeout, others are served', async () => {
  const [port, other] = await h.freePorts(2);
  const p = new SmartProxy({
    routes: [
      { name: 'hang', match: { ports: port }, action: { type: 'forward', target: { host: h.HOST, port: (() => new Promise(() => {})) as any } } },
      h.forward('plain', other, greeter.port),
    ],
  });
  await p.start();
  const t0 = Date.now();
  const hanging = await h.connect(port);
  const closed = h.closed(hanging, 15_000);
  // Meanwhile the proxy serves other connections.
  const s = await h.connect(other);
  expect(await h.readLine(s)).toEqual('hi');
  s.destroy();
  await closed;
  const took = Date.now() - t0;
  expect(took).toBeGreaterThan(9_000); // the engine's 10 s call timeout
  expect(took).toBeLessThan(14_000);
  expect(p.getStatistics().terminationStats.incoming.target_function_error).toEqual(1);
  await p.stop();
});

tap.test('an idle WebSocket is closed by inactivityTimeout, an active one stays', async () => {
  const server = http.createServer();
  const wss = new WebSocketServer({ server });
  wss.on('connection', (ws) => ws.on('message', (m) => ws.send(m)));
  await new Promise<void>((r) => server.listen(0, h.HOST, () => r()));
  const backendPort = (server.address() as net.AddressInfo).port;
  const port = await h.freePort();
  const p = new SmartProxy({
    inactivityTimeout: 1000,
    keepAliveTreatment: 'standard',
    routes: [{ name: 'ws', match: { ports: port, domains: 'ws.test' }, action: { type: 'forward', target: { host: h.HOST, port: backendPort }, websocket: { enabled: true } } }],
  });
  await p.start();
  const open = () =>
    new Promise<WebSocket>((resolve, reject) => {
      const ws = new WebSocket(`ws://127.0.0.1:${port}/`, { headers: { host: 'ws.test' } });
      ws.once('open', () => resolve(ws));
      ws.once('error', reject);
    });
  const idle = await open();
  const busy = await open();
  busy.on('message', () => {});
  const talk = setInterval(() => busy.send('x'), 200);
  await h.waitFor(() => idle.readyState === WebSocket.CLOSED, 4000, 'the idle WebSocket to close');
  expect(busy.readyState).toEqual(WebSocket.OPEN);
  clearInterval(talk);
  busy.close();
  await h.waitFor(() => p.getStatistics().activeConnections === 0, 4000, 'the books to close');
  expect(p.getStatistics().terminationStats.incoming.inactivity_timeout).toBeGreaterThanOrEqual(1);
  await p.stop();
  for (const c of wss.clients) c.terminate();
  await new Promise((r) => server.close(r));
});

tap.test('backend failures through the hyper client: unreachable → 502, silent past advanced.timeout → 504', async () => {
  const [port, dead] = await h.freePorts(2); // nothing listens on `dead`
  const held = new Set<net.Socket>();
  const silent = net.createServer((c) => {
    held.add(c); // accepts, never answers
    c.on('error', () => {});
  });
  await new Promise<void>((r) => silent.listen(0, h.HOST, () => r()));
  const silentPort = (silent.address() as net.AddressInfo).port;
  const viaHyper = { backendProtocol: 'http2' as const }; // HTTP/2 to the backend: hyper's client
  const p = new SmartProxy({
    routes: [
      { name: 'dead', match: { ports: port, domains: 'dead.test' }, action: { type: 'forward', target: { host: h.HOST, port: dead }, options: viaHyper } },
      {
        name: 'silent',
        match: { ports: port, domains: 'silent.test' },
        action: { type: 'forward', target: { host: h.HOST, port: silentPort }, options: viaHyper, advanced: { timeout: 300 } },
      },
    ],
  });
  await p.start();
  const dead502 = await get(port, 'dead.test');
  expect(dead502.status).toEqual(502);
  expect(dead502.body).toEqual('Bad Gateway: the backend could not be reached\n');
  const t0 = Date.now();
  const slow = await get(port, 'silent.test');
  expect(slow.status).toEqual(504);
  expect(Date.now() - t0).toBeLessThan(3000);
  await p.stop();
  // Known: the HTTP/2 client's background handshake with a silent backend outlives stop() (see
  // the session notes); the test closes its side itself.
  for (const c of held) c.destroy();
  await new Promise((r) => silent.close(r));
});

tap.test('teardown', async () => {
  await greeter.close();
  await new Promise((r) => web.close(r));
});

export default tap.start();
