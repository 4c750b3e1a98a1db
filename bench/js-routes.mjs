#!/usr/bin/env node
// New connections through a plain forward route, a function-target route and a socket-handler
// route of one proxy, in one run (issue: JavaScript in the data path). Not a test.
//
//   node bench/js-routes.mjs [connections per route, default 3000]
//
// Each connection: connect, send 4 bytes, read the 4-byte echo, close (bench/conn-latency.py,
// one connection at a time, routes interleaved connection by connection). Reports the median,
// p99 and mean latency per route and direct to the backend, the median cost a function target
// adds over the plain route (target: < 100 µs), and the plain route's latency with and without
// JS routes in the proxy. The load generator and the echo backend run in child processes, so
// the proxy's JavaScript thread only serves the proxy's callbacks, as in a real deployment.
import net from 'node:net';
import { fork, spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { SmartProxy } from '../index.js';

const N = Number(process.argv[2] || 3000);

async function freePort() {
  const s = net.createServer();
  await new Promise((r) => s.listen(0, '127.0.0.1', r));
  const p = s.address().port;
  await new Promise((r) => s.close(r));
  return p;
}

async function main() {
  // The echo backend runs in its own process too: the proxy's JavaScript thread serves only the
  // proxy's callbacks (a backend on that thread would compete with them for it).
  const backend = fork(fileURLToPath(import.meta.url), ['--backend']);
  const backendPort = await new Promise((resolve) => backend.once('message', resolve));
  const remote = (ports) =>
    new Promise((resolve, reject) => {
      const client = spawn('python3', [fileURLToPath(new URL('conn-latency.py', import.meta.url)), String(N), ports.join(',')], {
        stdio: ['ignore', 'pipe', 'inherit'],
      });
      let out = '';
      client.stdout.on('data', (d) => (out += d));
      client.on('error', reject);
      client.on('close', (code) => (code === 0 ? resolve(JSON.parse(out)) : reject(new Error(`load generator exited with ${code}`))));
    });
  const [plainOnly, plain, fn, sock] = await Promise.all([freePort(), freePort(), freePort(), freePort()]);
  const limits = { maxConnectionsPerIP: 0, connectionRateLimitPerMinute: 0 };
  const forward = (name, port, target) => ({ name, match: { ports: port }, action: { type: 'forward', target } });

  // The plain route alone, in a proxy of its own, and next to JS routes in a second proxy.
  const alone = new SmartProxy({ ...limits, routes: [forward('plain', plainOnly, { host: '127.0.0.1', port: backendPort })] });
  const proxy = new SmartProxy({
    ...limits,
    routes: [
      forward('plain', plain, { host: '127.0.0.1', port: backendPort }),
      forward('function', fn, { host: '127.0.0.1', port: () => backendPort }),
      { name: 'socket', match: { ports: sock }, action: { type: 'socket-handler', socketHandler: (socket) => socket.on('data', (d) => socket.write(d)) } },
    ],
  });
  await alone.start();
  await proxy.start();
  const results = await remote([backendPort, plainOnly, plain, fn, sock]);
  await proxy.stop();
  await alone.stop();
  backend.kill();

  const names = ['direct to the backend', 'plain forward (alone)', 'plain forward (with JS routes)', 'function target (port)', 'socket handler (echo in JS)'];
  const fmt = (x) => x.toFixed(0);
  console.log(`connections per route: ${N}, node ${process.version}, load generator and backend in child processes, routes interleaved`);
  console.log('| route | p50 µs | p99 µs | mean µs |');
  console.log('|---|---|---|---|');
  names.forEach((name, i) => console.log(`| ${name} | ${fmt(results[i].p50)} | ${fmt(results[i].p99)} | ${fmt(results[i].mean)} |`));
  console.log(`\nfunction target: median cost over the plain route ${fmt(results[3].p50 - results[2].p50)} µs (target < 100 µs)`);
  console.log(`plain route, median latency with JS routes present vs alone: ${(results[2].p50 / results[1].p50).toFixed(2)}x`);
}

if (process.argv[2] === '--backend') {
  const echo = net.createServer((s) => s.pipe(s));
  echo.listen(0, '127.0.0.1', () => process.send(echo.address().port));
} else {
  await main();
}
