#!/usr/bin/env node
// New connections through a plain forward route, a function-target route and a socket-handler
// route of one proxy, in one run (issue: JavaScript in the data path). Not a test.
//
//   node bench/js-routes.mjs [connections per route, default 3000] [concurrency, default 8]
//
// Each connection: connect, send 4 bytes, read the 4-byte echo, close. Reports connections/s and
// the median / p99 latency per route, the median cost a function target adds over the plain
// route (target: < 100 µs), and the plain route's rate with and without JS routes present.
// The load generator runs in a child process, so the proxy's JavaScript thread only serves the
// proxy's callbacks, as in a real deployment.
import net from 'node:net';
import { fork } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { SmartProxy } from '../index.js';

const N = Number(process.argv[2] || 3000);
const C = Number(process.argv[3] || 8);

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

async function freePort() {
  const s = net.createServer();
  await new Promise((r) => s.listen(0, '127.0.0.1', r));
  const p = s.address().port;
  await new Promise((r) => s.close(r));
  return p;
}

async function main() {
  const echo = net.createServer((s) => s.pipe(s));
  await new Promise((r) => echo.listen(0, '127.0.0.1', r));
  const backendPort = echo.address().port;
  const client = fork(fileURLToPath(import.meta.url), [String(N), String(C), '--client']);
  const remote = (port) =>
    new Promise((resolve) => {
      client.once('message', resolve);
      client.send(port);
    });
  const [plainOnly, plain, fn, sock] = await Promise.all([freePort(), freePort(), freePort(), freePort()]);
  const limits = { maxConnectionsPerIP: 0, connectionRateLimitPerMinute: 0 };
  const forward = (name, port, target) => ({ name, match: { ports: port }, action: { type: 'forward', target } });

  // 1. The plain route alone.
  const alone = new SmartProxy({ ...limits, routes: [forward('plain', plainOnly, { host: '127.0.0.1', port: backendPort })] });
  await alone.start();
  const plainAlone = await remote(plainOnly);
  await alone.stop();

  // 2. The same plain route next to JS routes.
  const proxy = new SmartProxy({
    ...limits,
    routes: [
      forward('plain', plain, { host: '127.0.0.1', port: backendPort }),
      forward('function', fn, { host: '127.0.0.1', port: () => backendPort }),
      { name: 'socket', match: { ports: sock }, action: { type: 'socket-handler', socketHandler: (socket) => socket.on('data', (d) => socket.write(d)) } },
    ],
  });
  await proxy.start();
  const rows = [
    ['plain forward (alone)', plainAlone],
    ['plain forward (with JS routes)', await remote(plain)],
    ['function target (port)', await remote(fn)],
    ['socket handler (echo in JS)', await remote(sock)],
  ];
  await proxy.stop();
  echo.close();
  client.kill();

  const fmt = (x) => x.toFixed(0);
  console.log(`connections per route: ${N}, concurrency: ${C}, node ${process.version}, load generator in a child process`);
  console.log('| route | conn/s | p50 µs | p99 µs |');
  console.log('|---|---|---|---|');
  for (const [name, r] of rows) console.log(`| ${name} | ${fmt(r.rate)} | ${fmt(r.p50)} | ${fmt(r.p99)} |`);
  console.log(`\nfunction target: median cost over the plain route ${fmt(rows[2][1].p50 - rows[1][1].p50)} µs (target < 100 µs)`);
  console.log(`plain route with JS routes present vs alone: ${(rows[1][1].rate / rows[0][1].rate).toFixed(2)}x conn/s`);
}

if (process.argv[4] === '--client') {
  process.on('message', async (port) => process.send(await measure(port)));
} else {
  await main();
}
