// Issue 14's certificate benchmarks (not a test; results go into bench/RESULTS.md):
//  1. proxy CPU per full TLS handshake with 1 certificate and with 10,000 (one route each,
//     random SNI among them): the certificate and route lookup must not grow with the count;
//  2. start-up time and memory with 10,000 certificates, configured (static) and stored
//     (certificate: 'auto', loaded from the store without an order);
//  3. time from start() to the first HTTPS answer on a fresh order from Pebble.
// The proxy runs in its own process on CPU 1, the client here on CPU 0 (as the harness's pinned
// layout). Uses the release addon: run `pnpm run build` first.
//
//   node --import tsx bench/certs.ts          env: COUNT (10000), HANDSHAKES (6000), ROUNDS (3)
import { execFileSync, fork, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import * as http from 'node:http';
import * as https from 'node:https';
import * as net from 'node:net';
import * as tls from 'node:tls';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import * as h from '../test/helpers.js';
import { startPebble } from '../test/pebble.js';
import { SmartProxy } from '../index.js';

const COUNT = Number(process.env.COUNT || 10_000);
const HANDSHAKES = Number(process.env.HANDSHAKES || 6000);
const ROUNDS = Number(process.env.ROUNDS || 3);
const CONCURRENCY = 16;
const root = join(import.meta.dirname, '..');
const scratch = mkdtempSync(join(existsSync('/dev/shm') ? '/dev/shm' : tmpdir(), 'spn-bench-certs-'));
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const TICK_US = 1e6 / Number(execFileSync('getconf', ['CLK_TCK']).toString().trim());

function cpuUs(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(f[11]) + Number(f[12])) * TICK_US;
}

interface Started { child: ChildProcess; startMs: number; rssBefore: number; rssAfter: number; status?: string }

async function startProxy(cfg: Record<string, unknown>): Promise<Started> {
  const file = join(scratch, `cfg-${Date.now()}.json`);
  writeFileSync(file, JSON.stringify(cfg));
  const child = fork(join(root, 'bench/cert-proxy.mjs'), [file], { execArgv: ['--expose-gc'], stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  execFileSync('taskset', ['-a', '-p', '-c', '1', String(child.pid)], { stdio: 'ignore' });
  const m: any = await new Promise((resolve, reject) => {
    child.once('message', resolve);
    child.once('exit', (c) => reject(new Error(`proxy exited (${c})`)));
  });
  rmSync(file);
  return { child, ...m };
}

async function stopProxy(p: Started) {
  const exited = new Promise((r) => p.child.once('exit', r));
  p.child.send('stop');
  await exited;
}

/** `n` full handshakes, `CONCURRENCY` at a time, each naming one of `names`. */
async function handshakes(port: number, names: string[], n: number) {
  let started = 0;
  const one = (): Promise<void> =>
    new Promise((resolve, reject) => {
      const servername = names[Math.floor(Math.random() * names.length)];
      const s = tls.connect({ host: h.HOST, port, servername, rejectUnauthorized: false });
      s.once('secureConnect', () => {
        if (s.getPeerCertificate().subject?.CN !== servername && !s.getPeerCertificate().subjectaltname?.includes(servername)) {
          reject(new Error(`wrong certificate for ${servername}`));
        }
        s.destroy();
        resolve();
      });
      s.once('error', reject);
    });
  const worker = async () => {
    while (started < n) {
      started++;
      await one();
    }
  };
  await Promise.all(Array.from({ length: CONCURRENCY }, worker));
}

async function main() {
  execFileSync('taskset', ['-a', '-p', '-c', '0', String(process.pid)], { stdio: 'ignore' });
  const backend = net.createServer((c) => c.destroy());
  await new Promise<void>((r) => backend.listen(0, h.HOST, () => r()));
  const backendPort = (backend.address() as net.AddressInfo).port;
  const [port, acmePort] = await h.freePorts(2);

  console.error(`generating ${COUNT} certificates and a store of them in ${scratch} ...`);
  const gen0 = Date.now();
  execFileSync('cargo', ['run', '-q', '-p', 'smartproxy-engine', '--profile', 'ci', '--target', 'x86_64-unknown-linux-gnu', '--example', 'bench_certs', '--', String(COUNT), join(scratch, 'certs.json'), join(scratch, 'store')], { cwd: root, stdio: 'inherit' });
  console.error(`... ${((Date.now() - gen0) / 1000).toFixed(1)} s`);
  const all: { domain: string; cert: string; key: string }[] = JSON.parse(readFileSync(join(scratch, 'certs.json'), 'utf8'));

  // 1. Handshake CPU, 1 vs COUNT certificates, alternating, ROUNDS each.
  const perHandshake: Record<string, number[]> = { one: [], many: [] };
  for (let round = 0; round < ROUNDS; round++) {
    for (const which of ['one', 'many'] as const) {
      const certs = which === 'one' ? all.slice(0, 1) : all;
      const p = await startProxy({ mode: 'static', certs, port, backendPort });
      const names = certs.map((c) => c.domain);
      await handshakes(port, names, 500);
      const c0 = cpuUs(p.child.pid!);
      const t0 = Date.now();
      await handshakes(port, names, HANDSHAKES);
      const us = (cpuUs(p.child.pid!) - c0) / HANDSHAKES;
      perHandshake[which].push(us);
      console.error(`handshakes, ${which === 'one' ? 1 : COUNT} certificates, round ${round + 1}: ${us.toFixed(1)} µs CPU each, ${Math.round(HANDSHAKES / ((Date.now() - t0) / 1000))}/s`);
      await stopProxy(p);
    }
  }

  // 2. Start-up and memory: 1 certificate (the baseline), COUNT configured, COUNT stored.
  const startup: Record<string, { ms: number[]; rss: number[]; status?: string }> = {};
  for (let round = 0; round < ROUNDS; round++) {
    for (const [key, mode, certs] of [['one', 'static', all.slice(0, 1)], ['static', 'static', all], ['stored', 'stored', all]] as const) {
      const p = await startProxy({ mode, certs, port, backendPort, store: join(scratch, 'store'), acmePort });
      (startup[key] ??= { ms: [], rss: [] }).ms.push(p.startMs);
      startup[key].rss.push(p.rssAfter);
      startup[key].status = p.status;
      console.error(`start-up, ${key}: ${p.startMs.toFixed(0)} ms, RSS ${(p.rssAfter / 1048576).toFixed(1)} MiB (before start ${(p.rssBefore / 1048576).toFixed(1)}), last route's certificate ${p.status}`);
      await stopProxy(p);
    }
  }

  // 3. start() to the first HTTPS answer on a fresh Pebble order (HTTP-01).
  const [challengePort] = await h.freePorts(1);
  const pebble = await startPebble({ httpPort: challengePort });
  const hello = http.createServer((_, res) => res.end('hello'));
  await new Promise<void>((r) => hello.listen(0, h.HOST, () => r()));
  const helloPort = (hello.address() as net.AddressInfo).port;
  const firstAnswer: number[] = [];
  try {
    for (let round = 0; round < ROUNDS; round++) {
      const domain = `fresh${round}.bench.test`;
      const proxy = new SmartProxy({
        acme: { email: 'ops@example.com', port: challengePort, directoryUrl: pebble.directoryUrl, directoryCa: pebble.directoryCa, certificateStore: join(scratch, `pebble-store-${round}`) },
        routes: [{ name: 'fresh', match: { ports: port, domains: domain }, action: { type: 'forward', target: { host: h.HOST, port: helloPort }, tls: { mode: 'terminate', certificate: 'auto' } } }],
      });
      const t0 = performance.now();
      await proxy.start();
      for (;;) {
        const ok = await new Promise<boolean>((resolve) => {
          const req = https.get({ host: h.HOST, port, servername: domain, headers: { host: domain }, rejectUnauthorized: false, agent: false, timeout: 2000 }, (res) => {
            res.resume();
            res.on('end', () => resolve(res.statusCode === 200));
          });
          req.on('error', () => resolve(false));
        });
        if (ok) break;
        if (performance.now() - t0 > 60_000) throw new Error('no HTTPS answer within 60 s');
        await h.sleep(10);
      }
      firstAnswer.push(performance.now() - t0);
      console.error(`start() to first HTTPS answer, round ${round + 1}: ${firstAnswer.at(-1)!.toFixed(0)} ms`);
      await proxy.stop();
    }
  } finally {
    await pebble.close();
    hello.close();
    backend.close();
  }

  const kib = (b: number) => b / 1024;
  const base = median(startup.one.rss);
  console.log(`\n| row (median of ${ROUNDS}) | value |`);
  console.log('|---|---|');
  const [one, many] = [median(perHandshake.one), median(perHandshake.many)];
  console.log(`| proxy CPU per full TLS handshake, 1 certificate (µs) | ${one.toFixed(1)} (${perHandshake.one.map((x) => x.toFixed(1)).join(', ')}) |`);
  console.log(`| proxy CPU per full TLS handshake, ${COUNT} certificates, random SNI (µs) | ${many.toFixed(1)} (${perHandshake.many.map((x) => x.toFixed(1)).join(', ')}) |`);
  console.log(`| ratio ${COUNT} / 1 | ${(many / one).toFixed(3)} |`);
  for (const key of ['one', 'static', 'stored']) {
    const s = startup[key];
    const label = key === 'one' ? '1 configured certificate' : `${COUNT} ${key === 'static' ? 'configured' : 'stored (auto)'} certificates`;
    const per = key === 'one' ? '' : `, ${(kib(median(s.rss) - base) / COUNT).toFixed(2)} KiB per certificate over the 1-certificate proxy`;
    console.log(`| start(), ${label} | ${median(s.ms).toFixed(0)} ms, RSS ${(median(s.rss) / 1048576).toFixed(1)} MiB${per} (certificate ${s.status}) |`);
  }
  console.log(`| start() to first HTTPS answer, fresh Pebble order (HTTP-01, PEBBLE_VA_NOSLEEP) | ${median(firstAnswer).toFixed(0)} ms (${firstAnswer.map((x) => x.toFixed(0)).join(', ')}) |`);
}

main()
  .catch((e) => {
    console.error(e);
    process.exitCode = 1;
  })
  .finally(() => rmSync(scratch, { recursive: true, force: true }));
