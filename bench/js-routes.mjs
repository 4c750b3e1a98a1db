#!/usr/bin/env node
// New connections through a plain forward route, a function-target route and a socket-handler
// route of one proxy, in one run (issue: JavaScript in the data path). Not a test.
//
//   node bench/js-routes.mjs [connections per route, default 3000] [rounds, default 5] [clients, default 4]
//
// Each connection: connect, send 4 bytes, read the 4-byte echo, close (bench/conn-latency.py).
// Two measurements:
// 1. Load: per route, phases of N connections from `clients` concurrent clients, the routes in
//    rotating order, `rounds` times. Per phase: connections per second, the median latency, and
//    the proxy's CPU time per connection (this process: its tokio threads and its JavaScript
//    thread, which runs the function targets and socket handlers). Reports each route's median
//    over the rounds and the CPU a function target adds per connection over the plain route
//    (target: < 100 µs), and the plain route's CPU with and without JS routes in the proxy.
// 2. Sequential: one connection at a time, routes interleaved connection by connection; the
//    median, p99 and mean latency per route and direct to the backend, and the latency a
//    function target adds at the median on an otherwise idle machine.
// The load generator and the echo backend run in child processes, so the proxy's JavaScript
// thread only serves the proxy's callbacks, as in a real deployment.
import net from 'node:net';
import { fork, spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { SmartProxy } from '../index.js';

const N = Number(process.argv[2] || 3000);
const ROUNDS = Number(process.argv[3] || 5);
const CLIENTS = Number(process.argv[4] || 4);
const LOADGEN = fileURLToPath(new URL('conn-latency.py', import.meta.url));

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
      const client = spawn('python3', [LOADGEN, String(N), ports.join(',')], {
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
  const load = await loadPhases([plainOnly, plain, fn, sock]);
  const seqCpu = process.cpuUsage();
  const results = await remote([backendPort, plainOnly, plain, fn, sock]);
  const seqUsed = process.cpuUsage(seqCpu);
  await proxy.stop();
  await alone.stop();
  backend.kill();

  const routes = ['plain forward (alone)', 'plain forward (with JS routes)', 'function target (port)', 'socket handler (echo in JS)'];
  const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  const col = (i, key, digits = 0) => {
    const xs = load.map((round) => round[i][key]);
    return `${median(xs).toFixed(digits)} (${Math.min(...xs).toFixed(digits)}-${Math.max(...xs).toFixed(digits)})`;
  };
  console.log(`load: ${ROUNDS} rounds, per round and route ${N} connections from ${CLIENTS} concurrent clients; medians (min-max) over the rounds`);
  console.log('| route | conn/s | p50 µs | proxy CPU µs/conn |');
  console.log('|---|---|---|---|');
  routes.forEach((name, i) => console.log(`| ${name} | ${col(i, 'rate')} | ${col(i, 'p50')} | ${col(i, 'cpu', 1)} |`));
  const added = load.map((round) => round[2].cpu - round[1].cpu);
  console.log(`\nfunction target: CPU per connection over the plain route ${median(added).toFixed(1)} µs (per round: ${added.map((x) => x.toFixed(1)).join(', ')}; target < 100 µs)`);
  const ratio = load.map((round) => round[1].cpu / round[0].cpu);
  console.log(`plain route, CPU per connection with JS routes present vs alone: ${median(ratio).toFixed(2)}x\n`);

  const names = ['direct to the backend', 'plain forward (alone)', 'plain forward (with JS routes)', 'function target (port)', 'socket handler (echo in JS)'];
  const fmt = (x) => x.toFixed(0);
  console.log(`sequential: connections per route: ${N}, node ${process.version}, load generator and backend in child processes, routes interleaved`);
  console.log('| route | p50 µs | p99 µs | mean µs |');
  console.log('|---|---|---|---|');
  names.forEach((name, i) => console.log(`| ${name} | ${fmt(results[i].p50)} | ${fmt(results[i].p99)} | ${fmt(results[i].mean)} |`));
  console.log(`\nfunction target: median cost over the plain route ${fmt(results[3].p50 - results[2].p50)} µs (target < 100 µs)`);
  console.log(`plain route, median latency with JS routes present vs alone: ${(results[2].p50 / results[1].p50).toFixed(2)}x`);
  // Warm-up included: 100 connections per port before the N measured ones (conn-latency.py).
  const seqConns = 4 * (N + 100);
  console.log(`proxy CPU per connection over the sequential run (all four proxied routes, warm-up included): ${((seqUsed.user + seqUsed.system) / seqConns).toFixed(1)} µs`);
}

/**
 * Runs the load phases: per round, each port in rotating order gets N connections from CLIENTS
 * concurrent clients. Returns per round and port { rate, p50, cpu } (cpu: this process's CPU
 * time per connection in µs, user + system, all threads).
 */
async function loadPhases(ports) {
  const gen = spawn('python3', [LOADGEN, '--serve'], { stdio: ['pipe', 'pipe', 'inherit'] });
  const lines = [];
  let waiting = null;
  let buf = '';
  gen.stdout.on('data', (d) => {
    buf += d;
    let nl;
    while ((nl = buf.indexOf('\n')) >= 0) {
      lines.push(buf.slice(0, nl));
      buf = buf.slice(nl + 1);
    }
    if (waiting && lines.length) waiting();
  });
  const exited = new Promise((_, reject) => gen.on('close', (code) => reject(new Error(`load generator exited with ${code}`))));
  exited.catch(() => {});
  const phase = async (port, n) => {
    const before = process.cpuUsage();
    gen.stdin.write(`${port} ${n} ${CLIENTS}\n`);
    await Promise.race([new Promise((resolve) => (lines.length ? resolve() : (waiting = resolve))), exited]);
    waiting = null;
    const used = process.cpuUsage(before);
    const r = JSON.parse(lines.shift());
    if (r.error) throw new Error(`port ${port}: ${r.errors} client(s) failed: ${r.error}`);
    return { rate: r.rate, p50: r.p50, cpu: (used.user + used.system) / n };
  };
  try {
    for (const port of ports) await phase(port, Math.min(N, 500)); // warm-up
    const rounds = [];
    for (let r = 0; r < ROUNDS; r++) {
      const round = new Array(ports.length);
      for (let k = 0; k < ports.length; k++) {
        const i = (k + r) % ports.length;
        round[i] = await phase(ports[i], N);
      }
      rounds.push(round);
    }
    return rounds;
  } finally {
    gen.stdin.end();
  }
}

if (process.argv[2] === '--backend') {
  const echo = net.createServer((s) => s.pipe(s));
  echo.listen(0, '127.0.0.1', () => process.send(echo.address().port));
} else {
  await main();
}
