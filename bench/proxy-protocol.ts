// Issue 16's benchmark (not a test; results go into bench/RESULTS.md): proxy CPU per new
// connection with a PROXY protocol v2 header in and out, against the same without, for
// smartproxy-native and HAProxy (`accept-proxy` + `send-proxy-v2`), in one run.
//
// Topology, the same for every cell: wrk (Connection: close, a new connection per request) →
// a front HAProxy (the load balancer; `send-proxy-v2` in the "v2" cells) → the measured proxy
// (pinned to CPU 1, one thread) → nginx (`listen … proxy_protocol` in the "v2" cells).
// The "plain" and "v2" chains of one proxy run side by side, at the same time (both measured
// proxies on CPU 1; both wrk, both front HAProxies and nginx on CPU 0), so that both cells see
// the same machine noise; each round also reports its own v2/plain ratio ("paired"). The
// measured proxy's CPU comes from /proc/<pid>/stat over the wrk run; per connection = CPU /
// completed requests.
// BACKEND=same: instead of nginx, one small responder for both cells (answers once a request
// head arrived, whatever came before it), so the backend does the same work in both and only
// the proxies differ. On loopback the receiver's TCP work runs in the sender's system call, so
// nginx parsing a header (and waking differently) shows up in the measured proxy's CPU.
// Our v2 cell runs with the defaults a user gets: `proxyIPs` turns `acceptProxyProtocol` on, and
// with it `deferAccept` (connections accepted once the header arrived); HAProxy's counterpart,
// `defer-accept`, is opt-in (HAPROXY_DEFER=1).
// Uses the release addon: run `pnpm run build` first.
//
//   node --import tsx bench/proxy-protocol.ts      env: ROUNDS (3), SECONDS (8), CONNS (20), RATE, BACKEND,
//   HAPROXY_DEFER
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import * as net from 'node:net';
import { join } from 'node:path';
import * as h from '../test/helpers.js';
import { startHaproxy, startNginx, type Peer } from '../test/peers.js';

const ROUNDS = Number(process.env.ROUNDS || 3);
const SECONDS = Number(process.env.SECONDS || 8);
const CONNS = Number(process.env.CONNS || 20);
// RATE > 0: an open-loop load of RATE connections per second per chain instead of wrk.
const RATE = Number(process.env.RATE || 0);
const SAME_BACKEND = process.env.BACKEND === 'same';
const WARMUP = Number(process.env.WARMUP || 3);
// HAPROXY_DEFER=1: HAProxy's v2 cell binds with `defer-accept`, the counterpart of our
// `deferAccept` (on by default with acceptProxyProtocol; HAProxy's is opt-in).
const HAPROXY_DEFER = process.env.HAPROXY_DEFER === '1';

/** The responder of BACKEND=same, in its own process on CPU 0. */
async function sameBackend(port: number): Promise<{ stop: () => Promise<void> }> {
  const code = `const net = require('node:net');
net.createServer((s) => { let head = ''; s.on('error', () => {}); s.on('data', (d) => { head += d.toString('latin1');
  if (head.includes('\\r\\n\\r\\n')) s.end('HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\nConnection: close\\r\\n\\r\\nok'); }); })
  .listen(${port}, '127.0.0.1', () => console.log('up'));`;
  const child = spawn('taskset', ['-c', '0', process.execPath, '-e', code], { stdio: ['ignore', 'pipe', 'inherit'] });
  await new Promise((r) => child.stdout!.once('data', r));
  return { stop: () => new Promise<void>((r) => (child.once('exit', () => r()), child.kill('SIGTERM'))) };
}
const root = join(import.meta.dirname, '..');
const TICK_US = 1e6 / Number(execFileSync('getconf', ['CLK_TCK']).toString().trim());
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

function cpuUs(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(f[11]) + Number(f[12])) * TICK_US;
}

function pin(pid: number, cpu: number) {
  execFileSync('taskset', ['-a', '-p', '-c', String(cpu), String(pid)], { stdio: 'ignore' });
}

/** The measured proxy: ours (through bench/launcher.js) or HAProxy, on `port`, to `backend`. */
async function measured(kind: 'ours' | 'haproxy', v2: boolean, port: number, backend: number): Promise<{ pid: number; stop: () => Promise<void> }> {
  if (kind === 'ours') {
    const child: ChildProcess = spawn(process.execPath, [join(root, 'bench/launcher.js')], {
      env: { ...process.env, PERF_MODE: 'tcp', PERF_LISTEN_PORT: String(port), PERF_BACKEND_HOST: h.HOST, PERF_BACKEND_PORT: String(backend), PERF_THREADS: '1', ...(v2 ? { PERF_PROXY_PROTOCOL: 'v2' } : {}) },
      stdio: ['ignore', 'ignore', 'inherit'],
    });
    pin(child.pid!, 1);
    await h.waitFor(async () => (await h.connect(port).then((s) => (s.destroy(), true), () => false)), 10_000, 'our proxy');
    return {
      pid: child.pid!,
      stop: () => new Promise<void>((r) => (child.once('exit', () => r()), child.kill('SIGTERM'))),
    };
  }
  const peer: Peer & { pid?: number } = await startHaproxy(
    `global\n  nbthread 1\nfrontend m\n  mode tcp\n  bind 127.0.0.1:${port}${v2 ? ' accept-proxy' : ''}${v2 && HAPROXY_DEFER ? ' defer-accept' : ''}\n  default_backend b\nbackend b\n  mode tcp\n  server s1 127.0.0.1:${backend}${v2 ? ' send-proxy-v2' : ''}\n`,
    port,
  );
  const pid = Number(execFileSync('pgrep', ['-n', '-f', `haproxy.*spn-haproxy`]).toString().trim());
  pin(pid, 1);
  return { pid, stop: peer.close };
}

function wrk(port: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const c = spawn('taskset', ['-c', '0', 'wrk', '-t1', `-c${CONNS}`, `-d${SECONDS}s`, '-H', 'Connection: close', `http://127.0.0.1:${port}/`]);
    let out = '';
    c.stdout.on('data', (d) => (out += d));
    c.on('close', () => {
      const m = /(\d+) requests in/.exec(out);
      if (!m) return reject(new Error(`wrk: ${out}`));
      if (/Non-2xx|Socket errors/.test(out)) console.error(out.split('\n').filter((l) => /Non-2xx|Socket errors/.test(l)).join('\n'));
      resolve(Number(m[1]));
    });
  });
}

/** An open-loop load at RATE new connections per second to each of `ports` (the same offered
 * load for every chain, so no cell runs at a lower rate because its chain is slower); one HTTP
 * request per connection. Connections completed per port. */
async function paced(ports: number[], seconds = SECONDS): Promise<number[]> {
  const done = ports.map(() => 0);
  const perTick = RATE / 100;
  let owed = 0;
  let turn = 0;
  const pending = new Set<Promise<void>>();
  const one = (i: number) => {
    const p = new Promise<void>((resolve) => {
      const s = net.connect(ports[i], '127.0.0.1', () => s.write('GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n'));
      s.on('data', () => {});
      s.on('error', () => resolve());
      s.on('close', (hadError) => {
        if (!hadError) done[i]++;
        resolve();
      });
    });
    pending.add(p);
    p.then(() => pending.delete(p));
  };
  const until = Date.now() + seconds * 1000;
  await new Promise<void>((resolve) => {
    const t = setInterval(() => {
      if (Date.now() >= until) return clearInterval(t), resolve();
      owed += perTick;
      // Alternating which chain gets the first connection of each tick.
      for (; owed >= 1; owed--, turn++) ports.forEach((_, k) => one((k + turn) % ports.length));
    }, 10);
  });
  await Promise.all(pending);
  return done;
}

async function main() {
  execFileSync('taskset', ['-a', '-p', '-c', '0', String(process.pid)], { stdio: 'ignore' });
  const [plainBackend, ppBackend, ...ports] = await h.freePorts(6);
  const nginx = await startNginx(
    `server { listen 127.0.0.1:${plainBackend}; location / { return 200 "ok"; } }\n  server { listen 127.0.0.1:${ppBackend} proxy_protocol; location / { return 200 "$proxy_protocol_addr"; } }`,
    plainBackend,
  );
  pin(Number(execFileSync('pgrep', ['-n', '-f', 'nginx: worker']).toString().trim()), 0);
  const [samePort] = await h.freePorts(1);
  const same = SAME_BACKEND ? await sameBackend(samePort) : null;
  const cells: Record<string, number[]> = {};
  try {
    for (let round = 0; round < ROUNDS; round++) {
      for (const kind of ['ours', 'haproxy'] as const) {
        // Both chains at once: [port, front] pairs for plain and v2.
        const chains = [false, true].map((v2, i) => ({ v2, port: ports[2 * i], front: ports[2 * i + 1] }));
        const started: { stop: () => Promise<void> }[] = [];
        try {
          const ms = [];
          for (const c of chains) {
            const m = await measured(kind, c.v2, c.port, same ? samePort : c.v2 ? ppBackend : plainBackend);
            started.push(m);
            ms.push(m);
            const lb = await startHaproxy(`frontend f\n  mode tcp\n  bind 127.0.0.1:${c.front}\n  default_backend b\nbackend b\n  mode tcp\n  server s1 127.0.0.1:${c.port}${c.v2 ? ' send-proxy-v2' : ''}\n`, c.front);
            started.push({ stop: lb.close });
          }
          // Warm-up (and a check that the chains answer), with the load that is measured.
          if (RATE) await paced(chains.map((c) => c.front), WARMUP);
          else await Promise.all(chains.map((c) => wrk(c.front)));
          const c0 = ms.map((m) => cpuUs(m.pid));
          const ns = RATE ? await paced(chains.map((c) => c.front)) : await Promise.all(chains.map((c) => wrk(c.front)));
          chains.forEach((c, i) => {
            const us = (cpuUs(ms[i].pid) - c0[i]) / ns[i];
            const key = `${kind} ${c.v2 ? 'v2' : 'plain'}`;
            (cells[key] ??= []).push(us);
            console.error(`round ${round + 1}, ${key}: ${us.toFixed(1)} µs CPU per connection, ${Math.round(ns[i] / SECONDS)} conn/s`);
          });
        } finally {
          for (const x of started.reverse()) await x.stop();
        }
      }
    }
  } finally {
    await same?.stop();
    await nginx.close();
  }
  console.log(`\n| proxy (median of ${ROUNDS}; range) | without a header (µs/conn) | v2 in and out (µs/conn) | ratio | paired |`);
  console.log('|---|---|---|---|---|');
  for (const kind of ['ours', 'haproxy']) {
    const [p, v] = [cells[`${kind} plain`], cells[`${kind} v2`]];
    const fmt = (xs: number[]) => `${median(xs).toFixed(1)} (${Math.min(...xs).toFixed(1)}–${Math.max(...xs).toFixed(1)})`;
    const paired = median(v.map((x, i) => x / p[i]));
    console.log(`| ${kind === 'ours' ? 'smartproxy-native' : 'HAProxy'} | ${fmt(p)} | ${fmt(v)} | ${(median(v) / median(p)).toFixed(3)} | ${paired.toFixed(3)} |`);
  }
}

main().catch((e) => {
  console.error(e);
  process.exitCode = 1;
});
