#!/usr/bin/env node
// New connections through a plain forward route, a function-target route and a socket-handler
// route of one proxy, in one run (issue: JavaScript in the data path). Not a test.
//
//   node bench/js-routes.mjs [connections per route, default 3000] [concurrency, default 8]
//
// Each connection: connect, send 4 bytes, read the 4-byte echo, close. Reports connections/s and
// the median / p99 latency per route, and the median cost a function target adds over the plain
// route (target: < 100 µs), and the plain route's rate with and without JS routes present.
import net from 'node:net';
import { SmartProxy, SocketHandlers } from '../index.js';

const N = Number(process.argv[2] || 3000);
const C = Number(process.argv[3] || 8);

const echo = net.createServer((s) => s.pipe(s));
await new Promise((r) => echo.listen(0, '127.0.0.1', r));
const backendPort = echo.address().port;

async function freePort() {
  const s = net.createServer();
  await new Promise((r) => s.listen(0, '127.0.0.1', r));
  const p = s.address().port;
  await new Promise((r) => s.close(r));
  return p;
}

function once(port) {
  return new Promise((resolve, reject) => {
    const t0 = process.hrtime.bigint();
    const s = net.connect(port, '127.0.0.1', () => s.write('ping'));
    let got = 0;
    s.on('data', (d) => {
      got += d.length;
      if (got >= 4) {
        const us = Number(process.hrtime.bigint() - t0) / 1000;
        s.destroy();
        resolve(us);
      }
    });
    s.on('error', reject);
  });
}

async function measure(port) {
  for (let i = 0; i < 200; i++) await once(port); // warm-up
  const lat = [];
  let next = 0;
  const t0 = process.hrtime.bigint();
  await Promise.all(
    Array.from({ length: C }, async () => {
      while (next < N) {
        next++;
        lat.push(await once(port));
      }
    }),
  );
  const secs = Number(process.hrtime.bigint() - t0) / 1e9;
  lat.sort((a, b) => a - b);
  return { rate: N / secs, p50: lat[Math.floor(lat.length * 0.5)], p99: lat[Math.floor(lat.length * 0.99)] };
}

const [plainOnly, plain, fn, sock] = await Promise.all([freePort(), freePort(), freePort(), freePort()]);
const limits = { maxConnectionsPerIP: 0, connectionRateLimitPerMinute: 0 };

// 1. The plain route alone.
const alone = new SmartProxy({ ...limits, routes: [{ name: 'plain', match: { ports: plainOnly }, action: { type: 'forward', target: { host: '127.0.0.1', port: backendPort } } }] });
await alone.start();
const plainAlone = await measure(plainOnly);
await alone.stop();

// 2. The same plain route next to JS routes.
const socketEcho = (socket) => socket.on('data', (d) => socket.write(d));
const proxy = new SmartProxy({
  ...limits,
  routes: [
    { name: 'plain', match: { ports: plain }, action: { type: 'forward', target: { host: '127.0.0.1', port: backendPort } } },
    { name: 'function', match: { ports: fn }, action: { type: 'forward', target: { host: '127.0.0.1', port: () => backendPort } } },
    { name: 'socket', match: { ports: sock }, action: { type: 'socket-handler', socketHandler: socketEcho } },
  ],
});
await proxy.start();
const rows = [
  ['plain forward (alone)', plainAlone],
  ['plain forward (with JS routes)', await measure(plain)],
  ['function target (port)', await measure(fn)],
  ['socket handler (echo in JS)', await measure(sock)],
];
await proxy.stop();
echo.close();

const fmt = (x) => x.toFixed(0);
console.log(`connections per route: ${N}, concurrency: ${C}, node ${process.version}`);
console.log('| route | conn/s | p50 µs | p99 µs |');
console.log('|---|---|---|---|');
for (const [name, r] of rows) console.log(`| ${name} | ${fmt(r.rate)} | ${fmt(r.p50)} | ${fmt(r.p99)} |`);
const base = rows[1][1].p50;
console.log(`\nfunction target median cost over plain: ${fmt(rows[2][1].p50 - base)} µs (target < 100 µs)`);
console.log(`plain route with JS routes present vs alone: ${(rows[1][1].rate / rows[0][1].rate).toFixed(2)}x conn/s`);
void SocketHandlers;
