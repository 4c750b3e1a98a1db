// Issue 16's benchmark (not a test; results go into bench/RESULTS.md): proxy CPU per new
// connection with a PROXY protocol v2 header in and out, against the same without, for
// smartproxy-native and HAProxy (`accept-proxy` + `send-proxy-v2`), in one run.
//
// Topology, the same for every cell: wrk (Connection: close, a new connection per request) →
// a front HAProxy (the load balancer; `send-proxy-v2` in the "v2" cells) → the measured proxy
// (pinned alone to CPU 1, one thread) → nginx (`listen … proxy_protocol` in the "v2" cells).
// wrk, the front HAProxy and nginx share CPU 0. The measured proxy's CPU comes from
// /proc/<pid>/stat over the wrk run; per connection = CPU / completed requests.
// Uses the release addon: run `pnpm run build` first.
//
//   node --import tsx bench/proxy-protocol.ts      env: ROUNDS (3), SECONDS (8), CONNS (20)
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import * as h from '../test/helpers.js';
import { startHaproxy, startNginx, type Peer } from '../test/peers.js';

const ROUNDS = Number(process.env.ROUNDS || 3);
const SECONDS = Number(process.env.SECONDS || 8);
const CONNS = Number(process.env.CONNS || 20);
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
    `global\n  nbthread 1\nfrontend m\n  mode tcp\n  bind 127.0.0.1:${port}${v2 ? ' accept-proxy' : ''}\n  default_backend b\nbackend b\n  mode tcp\n  server s1 127.0.0.1:${backend}${v2 ? ' send-proxy-v2' : ''}\n`,
    port,
  );
  const pid = Number(execFileSync('pgrep', ['-n', '-f', `haproxy.*spn-haproxy`]).toString().trim());
  pin(pid, 1);
  return { pid, stop: peer.close };
}

function wrk(port: number): number {
  const out = execFileSync('taskset', ['-c', '0', 'wrk', '-t1', `-c${CONNS}`, `-d${SECONDS}s`, '-H', 'Connection: close', `http://127.0.0.1:${port}/`]).toString();
  const m = /(\d+) requests in/.exec(out);
  if (!m) throw new Error(`wrk: ${out}`);
  if (/Non-2xx|Socket errors/.test(out)) console.error(out.split('\n').filter((l) => /Non-2xx|Socket errors/.test(l)).join('\n'));
  return Number(m[1]);
}

async function main() {
  execFileSync('taskset', ['-a', '-p', '-c', '0', String(process.pid)], { stdio: 'ignore' });
  const [plainBackend, ppBackend, front, port] = await h.freePorts(4);
  const nginx = await startNginx(
    `server { listen 127.0.0.1:${plainBackend}; location / { return 200 "ok"; } }\n  server { listen 127.0.0.1:${ppBackend} proxy_protocol; location / { return 200 "$proxy_protocol_addr"; } }`,
    plainBackend,
  );
  pin(Number(execFileSync('pgrep', ['-n', '-f', 'nginx: worker']).toString().trim()), 0);
  const cells: Record<string, number[]> = {};
  try {
    for (let round = 0; round < ROUNDS; round++) {
      for (const kind of ['ours', 'haproxy'] as const) {
        for (const v2 of [false, true]) {
          const m = await measured(kind, v2, port, v2 ? ppBackend : plainBackend);
          const lb = await startHaproxy(`frontend f\n  mode tcp\n  bind 127.0.0.1:${front}\n  default_backend b\nbackend b\n  mode tcp\n  server s1 127.0.0.1:${port}${v2 ? ' send-proxy-v2' : ''}\n`, front);
          try {
            wrk(front); // warm-up (and a check that the chain answers)
            const c0 = cpuUs(m.pid);
            const n = wrk(front);
            const us = (cpuUs(m.pid) - c0) / n;
            const key = `${kind} ${v2 ? 'v2' : 'plain'}`;
            (cells[key] ??= []).push(us);
            console.error(`round ${round + 1}, ${key}: ${us.toFixed(1)} µs CPU per connection, ${Math.round(n / SECONDS)} conn/s`);
          } finally {
            await lb.close();
            await m.stop();
          }
        }
      }
    }
  } finally {
    await nginx.close();
  }
  console.log(`\n| proxy (median of ${ROUNDS}; range) | without a header (µs/conn) | v2 in and out (µs/conn) | ratio |`);
  console.log('|---|---|---|---|');
  for (const kind of ['ours', 'haproxy']) {
    const [p, v] = [cells[`${kind} plain`], cells[`${kind} v2`]];
    const fmt = (xs: number[]) => `${median(xs).toFixed(1)} (${Math.min(...xs).toFixed(1)}–${Math.max(...xs).toFixed(1)})`;
    console.log(`| ${kind === 'ours' ? 'smartproxy-native' : 'HAProxy'} | ${fmt(p)} | ${fmt(v)} | ${(median(v) / median(p)).toFixed(3)} |`);
  }
}

main().catch((e) => {
  console.error(e);
  process.exitCode = 1;
});
