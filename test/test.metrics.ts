// getMetrics(): byte counts as the client's network interface sees them (TLS overhead included,
// each byte once per direction), throughput from per-second samples, rates by route and by
// address, requests (each HTTP request once; a layer-4 connection once), and percentiles.
import { tap, expect } from '@git.zone/tstest/tapbundle';
import * as net from 'node:net';
import * as tls from 'node:tls';
import * as http from 'node:http';
import * as http2 from 'node:http2';
import WebSocket, { WebSocketServer } from 'ws';
import { SmartProxy } from '../index.js';
import * as h from './helpers.js';

const cert = h.makeCert('metrics.test');
let echo: h.TestServer;
let sink: h.TestServer;
let web: http.Server;
let webPort: number;
let tlsEcho: h.TestServer;

tap.test('setup', async () => {
  echo = await h.echoServer();
  sink = await h.tcpServer((s) => {
    s.on('data', () => {});
    s.on('error', () => {});
  });
  web = http.createServer((req, res) => {
    req.resume();
    req.on('end', () => res.end('x'.repeat(1000)));
  });
  const wss = new WebSocketServer({ server: web });
  wss.on('connection', (ws) => ws.on('message', (m, binary) => ws.send(m, { binary })));
  await new Promise<void>((r) => web.listen(0, h.HOST, () => r()));
  webPort = (web.address() as net.AddressInfo).port;
  tlsEcho = await h.tlsNameServer('passthrough', cert);
});

/** A proxy with the given routes (metrics on), started. */
async function proxyWith(routes: any[]): Promise<SmartProxy> {
  const p = new SmartProxy({ routes, maxConnectionsPerIP: 0, connectionRateLimitPerMinute: 0 });
  await p.start();
  return p;
}

/** A raw TCP socket to the proxy: its counters are the client's wire bytes. */
function raw(port: number): Promise<net.Socket> {
  return h.connect(port);
}

async function settled(p: SmartProxy) {
  await h.waitFor(() => p.getMetrics().connections.active() === 0, 5000, 'connections to close');
}

tap.test('layer 4: bytes in and out equal what the client sent and received', async () => {
  const port = await h.freePort();
  const p = await proxyWith([h.forward('tcp', port, echo.port)]);
  const s = await raw(port);
  const payload = Buffer.alloc(300_000, 'a');
  s.write(payload);
  await h.readBytes(s, payload.length);
  s.end();
  await h.closed(s);
  await settled(p);
  const m = p.getMetrics();
  expect(m.totals.bytesIn()).toEqual(s.bytesWritten);
  expect(m.totals.bytesOut()).toEqual(s.bytesRead);
  expect(m.requests.total()).toEqual(1); // a layer-4 connection counts once
  await p.stop();
});

tap.test('TLS passthrough and termination: the TLS overhead is counted, once per direction', async () => {
  const [pt, term] = [await h.freePort(), await h.freePort()];
  const p = await proxyWith([
    { name: 'pass', match: { ports: pt, domains: 'metrics.test' }, action: { type: 'forward', target: { host: h.HOST, port: tlsEcho.port }, tls: { mode: 'passthrough' } } },
    { name: 'term', match: { ports: term, domains: 'metrics.test' }, action: { type: 'forward', target: { host: h.HOST, port: webPort }, tls: { mode: 'terminate', certificate: cert } } },
  ]);
  // Passthrough: the backend greets and echoes.
  const sock1 = await raw(pt);
  const t1 = tls.connect({ socket: sock1, servername: 'metrics.test', rejectUnauthorized: false });
  await new Promise((r) => t1.once('secureConnect', r));
  expect(await h.readLine(t1 as unknown as net.Socket)).toEqual('passthrough');
  t1.end();
  await h.closed(sock1);
  // Termination: two HTTP/1.1 requests on one connection.
  const sock2 = await raw(term);
  const t2 = tls.connect({ socket: sock2, servername: 'metrics.test', rejectUnauthorized: false, ALPNProtocols: ['http/1.1'] });
  await new Promise((r) => t2.once('secureConnect', r));
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  (agent as any).createConnection = () => t2;
  for (let i = 0; i < 2; i++) {
    const body = await new Promise<string>((resolve, reject) => {
      http.get({ host: 'metrics.test', path: `/r${i}`, agent }, (res) => {
        let b = '';
        res.on('data', (d) => (b += d));
        res.on('end', () => resolve(b));
      }).on('error', reject);
    });
    expect(body.length).toEqual(1000);
  }
  agent.destroy();
  t2.destroy();
  await h.closed(sock2);
  await settled(p);
  const m = p.getMetrics();
  expect(m.totals.bytesIn()).toEqual(sock1.bytesWritten + sock2.bytesWritten);
  expect(m.totals.bytesOut()).toEqual(sock1.bytesRead + sock2.bytesRead);
  // Two HTTP requests, and the passthrough connection: the terminated connection itself does
  // not count again.
  expect(m.requests.total()).toEqual(3);
  await p.stop();
});

tap.test('HTTP/2 and WebSocket: wire bytes, and each request once', async () => {
  const [term, plain] = [await h.freePort(), await h.freePort()];
  const p = await proxyWith([
    { name: 'h2', match: { ports: term, domains: 'metrics.test' }, action: { type: 'forward', target: { host: h.HOST, port: webPort }, tls: { mode: 'terminate', certificate: cert } } },
    { name: 'ws', match: { ports: plain, domains: 'metrics.test' }, action: { type: 'forward', target: { host: h.HOST, port: webPort }, websocket: { enabled: true } } },
  ]);
  let sock3!: net.Socket;
  const session = http2.connect(`https://metrics.test:${term}`, {
    createConnection: () => {
      sock3 = net.connect(term, h.HOST);
      return tls.connect({ socket: sock3, servername: 'metrics.test', rejectUnauthorized: false, ALPNProtocols: ['h2'] });
    },
  });
  for (let i = 0; i < 5; i++) {
    const a = await h.h2Ask(session, { ':path': `/h2/${i}`, ':authority': 'metrics.test' });
    expect(a.body.length).toEqual(1000);
  }
  // The socket is closed under the session: a GOAWAY and TLS close_notify that the proxy never
  // reads (it closes once it has the GOAWAY) would count on the client's side only.
  sock3.destroy();
  session.destroy();
  await h.closed(sock3);
  let sock4!: net.Socket;
  const ws = new WebSocket(`ws://metrics.test:${plain}/ws`, {
    createConnection: () => (sock4 = net.connect(plain, h.HOST)),
  } as any);
  await new Promise((r, j) => (ws.once('open', r), ws.once('error', j)));
  for (let i = 0; i < 3; i++) {
    const back = new Promise<Buffer>((r) => ws.once('message', (d) => r(d as Buffer)));
    ws.send(Buffer.alloc(5000 * (i + 1), 'w'));
    expect((await back).length).toEqual(5000 * (i + 1));
  }
  ws.close();
  await h.closed(sock4);
  await settled(p);
  const m = p.getMetrics();
  expect(m.totals.bytesIn()).toEqual(sock3.bytesWritten + sock4.bytesWritten);
  expect(m.totals.bytesOut()).toEqual(sock3.bytesRead + sock4.bytesRead);
  expect(m.requests.total()).toEqual(6); // five HTTP/2 requests, one WebSocket upgrade
  await p.stop();
});

tap.test('throughput: instant() follows a steady transfer within 20 % and falls to 0 after', async () => {
  const port = await h.freePort();
  const p = await proxyWith([h.forward('steady', port, sink.port)]);
  const m = p.getMetrics();
  const s = await raw(port);
  const rate = 2_000_000; // bytes per second, in 100 ms steps
  const chunk = Buffer.alloc(rate / 10, 's');
  const readings: number[] = [];
  const started = Date.now();
  for (let i = 0; i < 45; i++) {
    s.write(chunk);
    await h.sleep(Math.max(0, started + (i + 1) * 100 - Date.now()));
    if (i >= 20 && i % 5 === 0) readings.push(m.throughput.instant().in);
  }
  const avg = readings.reduce((a, b) => a + b, 0) / readings.length;
  console.log(`instant() readings ${readings.map((r) => Math.round(r)).join(', ')} (sent ${rate} B/s)`);
  expect(Math.abs(avg - rate) / rate).toBeLessThan(0.2);
  expect(m.throughput.recent().in).toBeGreaterThan(rate * 0.3);
  expect(m.throughput.byRoute(2).get('steady')!.in).toBeGreaterThan(rate * 0.5);
  expect(m.throughput.byIP(2).get('127.0.0.1')!.in).toBeGreaterThan(rate * 0.5);
  const hist = m.throughput.history(10);
  expect(hist.length).toBeGreaterThan(2);
  expect(hist.every((pt) => typeof pt.timestamp === 'number' && pt.in >= 0 && pt.out >= 0)).toBeTrue();
  s.destroy();
  await h.waitFor(() => m.throughput.instant().in === 0, 3500, 'instant() to fall to 0');
  expect(m.throughput.byRoute(1).size).toEqual(0);
  // A window longer than the run: the window's bytes divided by its length.
  const total = m.totals.bytesIn();
  expect(Math.abs(m.throughput.custom(3600).in - total / 3600)).toBeLessThan(1);
  await p.stop();
});

tap.test('requests: each HTTP request on a keep-alive connection once; perSecond and perMinute', async () => {
  const port = await h.freePort();
  const p = await proxyWith([{ name: 'web', match: { ports: port, domains: 'metrics.test' }, action: { type: 'forward', target: { host: h.HOST, port: webPort } } }]);
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  for (let i = 0; i < 20; i++) {
    await new Promise<void>((resolve, reject) => {
      http.get({ host: h.HOST, port, path: `/k${i}`, agent, headers: { host: 'metrics.test' } }, (res) => {
        res.resume();
        res.on('end', () => resolve());
      }).on('error', reject);
    });
  }
  agent.destroy();
  const m = p.getMetrics();
  expect(m.requests.total()).toEqual(20);
  await h.waitFor(() => m.requests.perMinute() === 20, 2500, 'the samples to hold the requests');
  await h.sleep(1100);
  expect(m.requests.perSecond()).toEqual(0);
  await p.stop();
});

tap.test('percentiles: connection durations and sizes from known connections', async () => {
  const port = await h.freePort();
  const p = await proxyWith([h.forward('dur', port, echo.port)]);
  // Ten connections living 100, 200, ... 1000 ms, each sending (i+1) KiB.
  await Promise.all(
    Array.from({ length: 10 }, async (_, i) => {
      const s = await raw(port);
      s.write(Buffer.alloc((i + 1) * 1024, 'p'));
      await h.readBytes(s, (i + 1) * 1024);
      await h.sleep((i + 1) * 100 - 20);
      s.destroy();
    }),
  );
  await settled(p);
  const pc = p.getMetrics().percentiles;
  const d = pc.connectionDuration();
  console.log('connectionDuration', d, 'bytesTransferred', pc.bytesTransferred());
  expect(d.p50).toBeGreaterThan(400);
  expect(d.p50).toBeLessThan(700);
  expect(d.p99).toBeGreaterThan(800);
  expect(d.p99).toBeLessThan(1300);
  const b = pc.bytesTransferred();
  expect(b.in.p50).toBeGreaterThan(4 * 1024);
  expect(b.in.p50).toBeLessThan(7 * 1024);
  expect(b.out.p99).toBeGreaterThan(8 * 1024);
  await p.stop();
});

tap.test('metrics options: sampling off, and bad values named', async () => {
  const port = await h.freePort();
  const p = new SmartProxy({ routes: [h.forward('off', port, sink.port)], metrics: { enabled: false } });
  await p.start();
  const s = await raw(port);
  s.write(Buffer.alloc(100_000));
  await h.sleep(1300);
  expect(p.getMetrics().throughput.recent().in).toEqual(0);
  expect(p.getMetrics().requests.perMinute()).toEqual(0);
  s.destroy();
  await p.stop();
  for (const [metrics, field] of [
    [{ retentionSeconds: 0 }, 'metrics.retentionSeconds'],
    [{ sampleIntervalMs: 250 }, 'metrics.sampleIntervalMs'],
    [{ prometheusPath: 'metrics' }, 'metrics.prometheusPath'],
  ] as const) {
    const bad = new SmartProxy({ routes: [h.forward('x', await h.freePort(), sink.port)], metrics: metrics as any });
    let msg = '';
    try {
      await bad.start();
    } catch (e: any) {
      msg = e.message;
    }
    if (!msg.includes(field)) console.log("metrics option", JSON.stringify(metrics), "gave", JSON.stringify(msg));
    expect(msg.includes(field)).toBeTrue();
  }
});

tap.test('teardown', async () => {
  echo.close();
  sink.close();
  tlsEcho.close();
  web.closeAllConnections?.();
  await new Promise<void>((r) => web.close(() => r()));
});

export default tap.start();
