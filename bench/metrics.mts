// What metrics and the access log cost, and what per-address state a scan leaves.
//
//   node --import tsx bench/metrics.mts        (release build: pnpm run build)
//
// 1. CPU per HTTP request and per TCP connection, proxy in its own process, with metrics off
//    (`metrics.enabled: false`), on (the default), and on with a JSON access log to a file:
//    wrk (keep-alive HTTP/1.1, one per proxy, at once) and connect-send-close loops that go round
//    the proxies in turn; ROUNDS rounds, in each all three proxies run side by side; the
//    proxy process's CPU time (/proc/<pid>/stat) divided by the work done. Ratios to "off" in the
//    same run.
// 2. A scan from SCAN distinct source addresses (127.0.0.0/8, one connection each): the proxy's
//    RSS before and after, and the per-address series the metrics keep (capped).
import { fork, spawn } from 'node:child_process';
import { readFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as http from 'node:http';
import * as net from 'node:net';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const ROUNDS = Number(process.env.ROUNDS || 3);
const SECONDS = Number(process.env.SECONDS || 5);
const SCAN = Number(process.env.SCAN || 100_000);
// The scan's client sockets linger in TIME-WAIT for a minute afterwards (on ports the OS picks).
const HOST = '127.0.0.1';
const CLK_TCK = 100;

const freePort = () =>
  new Promise<number>((resolve) => {
    const s = net.createServer();
    s.listen(0, HOST, () => {
      const p = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(p));
    });
  });

function cpuSeconds(pid: number): number {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  return (Number(f[11]) + Number(f[12])) / CLK_TCK;
}
function rss(pid: number): number {
  return Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] || 0) * 1024;
}

// Backends in this process.
const web = http.createServer((req, res) => res.end('ok'));
web.keepAliveTimeout = 60_000;
await new Promise<void>((r) => web.listen(0, HOST, () => r()));
const webPort = (web.address() as net.AddressInfo).port;
const sink = net.createServer((s) => {
  s.on('error', () => {});
  s.on('data', () => {});
  s.on('end', () => s.end());
});
await new Promise<void>((r) => sink.listen(0, HOST, () => r()));
const sinkPort = (sink.address() as net.AddressInfo).port;

const dir = mkdtempSync(join(tmpdir(), 'bench-metrics-'));

/** A proxy process with `extra` options; resolves with its pid, ports and a stop function. */
async function proxy(extra: object) {
  const ports = { http: await freePort(), tcp: await freePort() };
  const child = fork(join(root, 'bench/soak-proxy.mts'), [], { execArgv: ['--import', 'tsx'], stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  await new Promise((r) => child.once('message', r));
  const routes = [
    { name: 'web', match: { ports: ports.http, domains: 'bench.test' }, action: { type: 'forward', target: { host: HOST, port: webPort } } },
    { name: 'tcp', match: { ports: ports.tcp }, action: { type: 'forward', target: { host: HOST, port: sinkPort } } },
  ];
  child.send({ routes, options: extra });
  const m: any = await new Promise((r) => child.once('message', r));
  if (!m.started) throw new Error(`proxy: ${JSON.stringify(m)}`);
  return {
    pid: child.pid!,
    ports,
    stats: () => new Promise<any>((r) => (child.once('message', (x: any) => r(x.stats)), child.send({ stats: true }))),
    stop: () => new Promise<void>((r) => (child.once('exit', () => r()), child.send({ stop: true }))),
  };
}

/** wrk against the proxy (asynchronously: the backend answers from this process). */
function wrk(port: number): Promise<number> {
  return new Promise((resolve) => {
    const c = spawn('wrk', ['-t1', '-c32', `-d${SECONDS}s`, '-H', 'Host: bench.test', `http://${HOST}:${port}/`]);
    let out = '';
    c.stdout.on('data', (d) => (out += d));
    c.on('close', () => resolve(Number(/(\d+) requests in/.exec(out)?.[1] || 0)));
  });
}

/** Connect-send-close loops (16 at once), each loop going round the `ports` in turn, so every
 * proxy gets the same share under the same conditions; connections done per port. */
async function connLoop(ports: number[]): Promise<number[]> {
  const until = Date.now() + SECONDS * 1000;
  const n = ports.map(() => 0);
  const one = (port: number) =>
    new Promise<void>((resolve) => {
      const s = net.connect(port, HOST, () => s.end('x'.repeat(100)));
      s.on('error', () => resolve());
      s.on('close', () => resolve());
    });
  await Promise.all(
    Array.from({ length: 16 }, async (_, w) => {
      for (let k = w; Date.now() < until; k++) {
        const i = k % ports.length;
        await one(ports[i]);
        n[i]++;
      }
    }),
  );
  return n;
}

const modes: [string, object][] = [
  ['metrics off', { metrics: { enabled: false } }],
  ['metrics on', {}],
  ['metrics on + access log', { accessLog: { path: join(dir, 'access.log'), format: 'json' } }],
];
const results: Record<string, { http: number[]; tcp: number[]; rps: number[]; cps: number[] }> = {};
for (const [name] of modes) results[name] = { http: [], tcp: [], rps: [], cps: [] };
for (let round = 0; round < ROUNDS; round++) {
  // All modes run at once, side by side under the same load and the same machine noise; CPU is
  // read per proxy process. Each round starts them in another order.
  const order = [...modes.slice(round % modes.length), ...modes.slice(0, round % modes.length)];
  const ps = [];
  for (const [, extra] of order) ps.push(await proxy(extra));
  await Promise.all(ps.map((p) => wrk(p.ports.http))); // warm-up
  let c0 = ps.map((p) => cpuSeconds(p.pid));
  const reqs = await Promise.all(ps.map((p) => wrk(p.ports.http)));
  ps.forEach((p, i) => results[order[i][0]].http.push(((cpuSeconds(p.pid) - c0[i]) / reqs[i]) * 1e6));
  ps.forEach((_, i) => results[order[i][0]].rps.push(reqs[i] / SECONDS));
  c0 = ps.map((p) => cpuSeconds(p.pid));
  const conns = await connLoop(ps.map((p) => p.ports.tcp));
  ps.forEach((p, i) => results[order[i][0]].tcp.push(((cpuSeconds(p.pid) - c0[i]) / conns[i]) * 1e6));
  ps.forEach((_, i) => results[order[i][0]].cps.push(conns[i] / SECONDS));
  for (const p of ps) await p.stop();
}
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const base = results['metrics off'];
// Two ratios to "off": of the medians, and the median of each round's own ratio.
const paired = (xs: number[], base: number[]) => median(xs.map((x, i) => x / base[i]));
console.log(`\nCPU per unit of work (proxy process, µs; median of ${ROUNDS} rounds of ${SECONDS} s)`);
console.log('| mode | per HTTP request | ratio | paired | per TCP connection | ratio | paired |');
console.log('|---|---|---|---|---|---|---|');
for (const [name] of modes) {
  const r = results[name];
  console.log(
    `| ${name} | ${median(r.http).toFixed(2)} | ${(median(r.http) / median(base.http)).toFixed(3)} | ${paired(r.http, base.http).toFixed(3)} ` +
      `| ${median(r.tcp).toFixed(1)} | ${(median(r.tcp) / median(base.tcp)).toFixed(3)} | ${paired(r.tcp, base.tcp).toFixed(3)} |`,
  );
}
// Throughput: each proxy's requests (wrk) and connections per second in the same rounds (the
// connection loops go round the proxies in turn, so their rates are equal by construction).
console.log(`\nThroughput (median of ${ROUNDS} rounds, the three proxies loaded at once)`);
console.log('| mode | HTTP requests/s | ratio | TCP connections/s |');
console.log('|---|---|---|---|');
for (const [name] of modes) {
  const r = results[name];
  console.log(`| ${name} | ${median(r.rps).toFixed(0)} | ${paired(r.rps, base.rps).toFixed(3)} | ${median(r.cps).toFixed(0)} |`);
}
if (process.env.VERBOSE) console.log(JSON.stringify(results));

// The scan.
const p = await proxy({ maxConnectionsPerIP: 0, connectionRateLimitPerMinute: 0 });
const before = rss(p.pid);
const started = Date.now();
let done = 0;
const source = (i: number) => `127.${1 + ((i >> 16) & 0xff)}.${(i >> 8) & 0xff}.${(i & 0xff) || 1}`;
await Promise.all(
  Array.from({ length: 64 }, async (_, w) => {
    for (let i = w; i < SCAN; i += 64) {
      await new Promise<void>((resolve) => {
        const s = net.connect({ port: p.ports.tcp, host: HOST, localAddress: source(i) }, () => s.end('scan'));
        s.on('error', () => resolve());
        s.on('close', () => resolve());
      });
      done++;
    }
  }),
);
await new Promise((r) => setTimeout(r, 2500)); // a sample or two
const after = rss(p.pid);
console.log(`\nscan: ${done} connections from ${SCAN} addresses in ${((Date.now() - started) / 1000).toFixed(1)} s`);
console.log(`proxy RSS ${(before / 1048576).toFixed(1)} → ${(after / 1048576).toFixed(1)} MiB (+${((after - before) / 1048576).toFixed(1)} MiB)`);
await p.stop();
web.close();
sink.close();
rmSync(dir, { recursive: true, force: true });
process.exit(0);
