import { tap, expect } from '@git.zone/tstest/tapbundle';
import * as http from 'node:http';
import * as net from 'node:net';
import WebSocket, { WebSocketServer } from 'ws';
import { SmartProxy } from '../index.js';
import * as h from './helpers.js';

let server: http.Server;
let wss: WebSocketServer;
let backendPort: number;
let tlsPort: number, plainPort: number;
let proxy: SmartProxy;
let cert: h.Cert;

tap.test('setup: a WebSocket echo backend, a terminated route and a plain route', async () => {
  server = http.createServer((_req, res) => res.end('plain http'));
  wss = new WebSocketServer({ server });
  wss.on('connection', (ws, req) => {
    ws.send(`hello ${req.url} ${req.headers['x-ws-extra'] ?? ''}`.trim());
    ws.on('message', (m, isBinary) => ws.send(m, { binary: isBinary }));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  backendPort = (server.address() as net.AddressInfo).port;
  cert = h.makeCert('ws.example.com');
  [tlsPort, plainPort] = await h.freePorts(2);
  proxy = new SmartProxy({
    routes: [
      {
        name: 'wss',
        match: { ports: tlsPort, domains: 'ws.example.com' },
        action: {
          type: 'forward',
          target: { host: '127.0.0.1', port: backendPort },
          tls: { mode: 'terminate', certificate: { key: cert.key, cert: cert.cert } },
          websocket: { enabled: true, customHeaders: { 'X-WS-Extra': 'via-{routeName}' } },
        },
      },
      {
        name: 'ws-plain',
        match: { ports: plainPort, domains: 'ws.example.com' },
        action: { type: 'forward', target: { host: '127.0.0.1', port: backendPort }, websocket: { enabled: true, allowedOrigins: ['https://ok.test'] } },
      },
    ],
  });
  await proxy.start();
});

function open(url: string, opts: WebSocket.ClientOptions = {}): Promise<{ ws: WebSocket; first: string }> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { rejectUnauthorized: false, ...opts });
    ws.once('message', (m) => resolve({ ws, first: m.toString() }));
    ws.once('error', reject);
    ws.once('unexpected-response', (_req, res) => reject(new Error(`status ${res.statusCode}`)));
  });
}

function roundTrip(ws: WebSocket, data: string | Buffer): Promise<Buffer> {
  return new Promise((resolve) => {
    ws.once('message', (m) => resolve(Buffer.isBuffer(m) ? m : Buffer.from(m as ArrayBuffer)));
    ws.send(data);
  });
}

tap.test('echo through a TLS-terminated route, text and binary, both ways', async () => {
  const { ws, first } = await open(`wss://127.0.0.1:${tlsPort}/chat?room=1`, { servername: 'ws.example.com', headers: { host: 'ws.example.com' } });
  expect(first).toEqual('hello /chat?room=1 via-wss');
  expect((await roundTrip(ws, 'ping')).toString()).toEqual('ping');
  const big = Buffer.alloc(1024 * 1024, 7);
  const back = await roundTrip(ws, big);
  expect(back.equals(big)).toBeTrue();
  const closed = new Promise<number>((r) => ws.once('close', (code) => r(code)));
  ws.close(1000);
  expect(await closed).toEqual(1000);
});

tap.test('allowedOrigins: listed origin accepted, others get 403', async () => {
  const ok = await open(`ws://127.0.0.1:${plainPort}/x`, { headers: { host: 'ws.example.com' }, origin: 'https://ok.test' });
  expect(ok.first).toEqual('hello /x');
  ok.ws.close();
  const err = await open(`ws://127.0.0.1:${plainPort}/x`, { headers: { host: 'ws.example.com' }, origin: 'https://evil.test' }).then(() => null, (e) => e);
  expect(String(err?.message)).toEqual('status 403');
});

tap.test('closing the backend side closes the client', async () => {
  const { ws } = await open(`ws://127.0.0.1:${plainPort}/y`, { headers: { host: 'ws.example.com' }, origin: 'https://ok.test' });
  const closed = new Promise<void>((r) => ws.once('close', () => r()));
  for (const c of wss.clients) c.terminate();
  await closed;
});


tap.test('pingInterval: the proxy pings clients; answered pings keep them, pongs stay off the backend', async () => {
  const p = await h.freePort();
  let backendPongs = 0;
  wss.on('connection', (ws) => ws.on('pong', () => backendPongs++));
  const px = new SmartProxy({
    routes: [{ name: 'ping', match: { ports: p, domains: 'ws.example.com' }, action: { type: 'forward', target: { host: '127.0.0.1', port: backendPort }, websocket: { enabled: true, pingInterval: 150, pingTimeout: 300, maxPayloadSize: 4096 } } }],
  });
  await px.start();
  // A well-behaved client (ws answers pings automatically).
  const { ws } = await open(`ws://127.0.0.1:${p}/k`, { headers: { host: 'ws.example.com' } });
  let pings = 0;
  ws.on('ping', () => pings++);
  await h.sleep(800);
  expect(pings).toBeGreaterThanOrEqual(3);
  expect(ws.readyState).toEqual(WebSocket.OPEN);
  expect((await roundTrip(ws, 'still here')).toString()).toEqual('still here');
  expect(backendPongs).toEqual(0);
  // maxPayloadSize: a 5000-byte message closes with 1009.
  const closed = new Promise<number>((r) => ws.once('close', (code) => r(code)));
  ws.send(Buffer.alloc(5000, 1));
  expect(await closed).toEqual(1009);
  // A client that never answers pings is disconnected.
  const mute = await open(`ws://127.0.0.1:${p}/m`, { headers: { host: 'ws.example.com' }, autoPong: false } as any);
  const t0 = Date.now();
  await new Promise<void>((r) => mute.ws.once('close', () => r()));
  expect(Date.now() - t0).toBeLessThan(2000);
  await px.stop();
});

tap.test('teardown', async () => {
  await proxy.stop();
  wss.close();
  await new Promise((r) => server.close(r));
});

tap.start();
