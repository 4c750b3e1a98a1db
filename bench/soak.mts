// Soak run: mixed traffic through one proxy for a long time, sampling the proxy process's
// resident memory, open descriptors and active connections.
//
//   node --import tsx bench/soak.mts            # 30 minutes (SOAK_SECONDS=1800)
//   SOAK_SECONDS=120 node --import tsx bench/soak.mts
//
// Traffic, all at once, all through the proxy: layer-4 echo streams (short ones with
// connection churn, and long-lived ones), HTTP/1.1 keep-alive requests, HTTP/2 over TLS (sessions
// renewed now and then), WebSocket sessions, a JavaScript socket handler, and `updateRoutes`
// every 5 s (routes added, removed and changed). The proxy runs in its own process
// (bench/soak-proxy.mts) on a copy of the built package. At the end the load stops and the proxy
// must be back to 0 active connections. Prints the samples and a summary (RSS drift over the
// last two thirds of the run, descriptors, errors); writes them to SOAK_OUT when set.
import { fork, execFileSync } from 'node:child_process';
import { cpSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as http from 'node:http';
import * as http2 from 'node:http2';
import * as net from 'node:net';
import WebSocket, { WebSocketServer } from 'ws';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const SECONDS = Number(process.env.SOAK_SECONDS || 1800);
const SAMPLE_MS = Number(process.env.SOAK_SAMPLE_MS || 10_000);
const HOST = '127.0.0.1';

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.listen(0, HOST, () => {
      const p = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(p));
    });
    s.on('error', reject);
  });
}

function makeCert(cn: string) {
  const dir = mkdtempSync(join(tmpdir(), 'soak-cert-'));
  try {
    execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', join(dir, 'k'), '-out', join(dir, 'c'), '-days', '2', '-subj', `/CN=${cn}`, '-addext', `subjectAltName=DNS:${cn}`], { stdio: 'ignore' });
    return { key: readFileSync(join(dir, 'k'), 'utf8'), cert: readFileSync(join(dir, 'c'), 'utf8') };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

// ---- backends -------------------------------------------------------------------------------
const echo = net.createServer((s) => {
  s.on('error', () => {});
  s.pipe(s);
});
const bodies = [0, 100, 4096, 65536, 300_000].map((n) => Buffer.alloc(n, 'b'));
const web = http.createServer((req, res) => {
  const size = bodies[Number(new URL(req.url!, 'http://x').searchParams.get('s') || 0) % bodies.length];
  req.resume();
  req.on('end', () => {
    res.writeHead(200, { 'content-length': size.length });
    res.end(size);
  });
});
const wss = new WebSocketServer({ server: web });
wss.on('connection', (ws) => ws.on('message', (m, binary) => ws.send(m, { binary })));

const listen = (s: net.Server | http.Server) => new Promise<number>((r) => s.listen(0, HOST, () => r((s.address() as net.AddressInfo).port)));

// ---- counters -------------------------------------------------------------------------------
const done = { l4: 0, l4Long: 0, h1: 0, h2: 0, ws: 0, handler: 0, updates: 0 };
const errors: Record<string, number> = {};
const fail = (what: string, e?: any) => {
  const k = `${what}: ${e?.code || e?.message || e || 'error'}`.slice(0, 120);
  errors[k] = (errors[k] || 0) + 1;
};
let running = true;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Runs `once` in a loop until the end, pausing briefly after a failure. */
async function loop(what: string, once: () => Promise<void>) {
  while (running) {
    try {
      await once();
    } catch (e) {
      fail(what, e);
      await sleep(100);
    }
  }
}

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`${what} timed out`)), ms);
    p.then((v) => (clearTimeout(t), resolve(v)), (e) => (clearTimeout(t), reject(e)));
  });
}

/** Connects, sends `size` bytes, reads them back, closes. */
function echoOnce(port: number, size: number): Promise<void> {
  return withTimeout(
    new Promise((resolve, reject) => {
      const s = net.connect(port, HOST);
      let got = 0;
      s.on('error', reject);
      s.on('connect', () => s.write(Buffer.alloc(size, 'e')));
      s.on('data', (d) => {
        got += d.length;
        if (got >= size) s.end();
      });
      s.on('close', () => (got >= size ? resolve() : reject(new Error(`echo ${got}/${size}`))));
    }),
    10_000,
    'echo',
  );
}

/** A long-lived stream: writes and reads continuously for `ms`, then closes. */
function longStream(port: number, ms: number): Promise<void> {
  return withTimeout(
    new Promise((resolve, reject) => {
      const s = net.connect(port, HOST);
      const chunk = Buffer.alloc(16384, 'l');
      let sent = 0;
      let got = 0;
      const until = Date.now() + ms;
      s.on('error', reject);
      // Without enableHalfOpen a client's FIN ends the connection (upstream's default): the
      // stream closes only once every byte came back.
      const pump = () => {
        while (Date.now() < until && sent - got < 1 << 20) {
          sent += chunk.length;
          if (!s.write(chunk)) return;
        }
        if (Date.now() >= until && got === sent) s.end();
      };
      s.on('connect', pump);
      s.on('drain', pump);
      s.on('data', (d) => {
        got += d.length;
        if (sent - got < 1 << 19) pump();
      });
      s.on('close', () => (got === sent ? resolve() : reject(new Error(`long ${got}/${sent}`))));
    }),
    ms + 15_000,
    'long stream',
  );
}

function h1Get(agent: http.Agent, port: number, i: number): Promise<void> {
  return withTimeout(
    new Promise((resolve, reject) => {
      const post = i % 3 === 0;
      const headers: http.OutgoingHttpHeaders = { host: i % 7 === 0 ? 'www.soak.test' : 'soak.test' };
      if (post) headers['content-length'] = 2048;
      const req = http.request({ host: HOST, port, method: post ? 'POST' : 'GET', path: `/k?s=${i % 5}`, agent, headers }, (res) => {
        res.on('data', () => {});
        res.on('end', () => (res.statusCode === 200 ? resolve() : reject(new Error(`status ${res.statusCode}`))));
        res.on('error', reject);
      });
      req.on('error', reject);
      req.end(post ? Buffer.alloc(2048, 'p') : undefined);
    }),
    10_000,
    'h1',
  );
}

function h2Get(session: http2.ClientHttp2Session, i: number): Promise<void> {
  return withTimeout(
    new Promise((resolve, reject) => {
      const st = session.request({ ':path': `/h2?s=${i % 5}`, ':authority': 'secure.soak.test' });
      let status = 0;
      st.on('response', (h) => (status = Number(h[':status'])));
      st.on('data', () => {});
      st.on('end', () => (status === 200 ? resolve() : reject(new Error(`status ${status}`))));
      st.on('error', reject);
      st.end();
    }),
    10_000,
    'h2',
  );
}

async function wsSession(port: number): Promise<void> {
  const ws = new WebSocket(`ws://${HOST}:${port}/ws`, { headers: { host: 'soak.test' } });
  let failed: Error | undefined;
  let wake = () => {};
  const messages: Buffer[] = [];
  ws.on('error', (e) => ((failed = e), wake()));
  ws.on('close', () => ((failed ??= new Error('ws closed')), wake()));
  ws.on('message', (d) => (messages.push(d as Buffer), wake()));
  const next = <T>(take: () => T | undefined, what: string) =>
    withTimeout(
      new Promise<T>((resolve, reject) => {
        const check = () => {
          const v = take();
          if (v !== undefined) resolve(v);
          else if (failed) reject(failed);
          else wake = check;
        };
        check();
      }),
      10_000,
      what,
    );
  ws.on('open', () => wake());
  await next(() => (ws.readyState === WebSocket.OPEN ? true : undefined), 'ws open');
  for (let i = 0; i < 20; i++) {
    const msg = Buffer.alloc(1 + ((i * 997) % 20_000), 'w');
    ws.send(msg);
    const back = await next(() => messages.shift(), 'ws echo');
    if (back.length !== msg.length) throw new Error('ws echo length');
  }
  failed = undefined;
  const closed = new Promise((r) => ws.once('close', r));
  ws.close();
  await withTimeout(closed, 10_000, 'ws close');
}

// ---- main -----------------------------------------------------------------------------------
const ports = { l4: await freePort(), web: await freePort(), tls: await freePort(), handler: await freePort() };
const echoPort = await listen(echo);
const webPort = await listen(web);
const cert = makeCert('secure.soak.test');

// The package copy the proxy runs on.
const pkg = mkdtempSync(join(tmpdir(), 'soak-pkg-'));
for (const f of readdirSync(root)) {
  if (/^(index\.js|index\.d\.ts|binding\.js|package\.json|.*\.node)$/.test(f)) cpSync(join(root, f), join(pkg, f));
}
cpSync(join(root, 'lib'), join(pkg, 'lib'), { recursive: true });

const child = fork(join(root, 'bench/soak-proxy.mts'), [], {
  execArgv: ['--import', 'tsx'],
  env: { ...process.env, SOAK_PKG: pkg },
  stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
});
const replies: ((m: any) => boolean)[] = [];
child.on('message', (m: any) => {
  if (m.error) fail('proxy', m.error.split('\n')[0]);
  const i = replies.findIndex((f) => f(m));
  if (i >= 0) replies.splice(i, 1);
});
const ask = (msg: any, key: string): Promise<any> =>
  withTimeout(
    new Promise((resolve) => {
      replies.push((m) => (m[key] !== undefined || m.error ? (resolve(m), true) : false));
      child.send(msg);
    }),
    30_000,
    key,
  );
await withTimeout(new Promise((r) => child.once('message', r)), 30_000, 'proxy ready');
const routes = [
  { name: 'web', match: { ports: ports.web, domains: ['soak.test', '*.soak.test'] }, action: { type: 'forward', target: { host: HOST, port: webPort } } },
  { name: 'tls', match: { ports: ports.tls, domains: 'secure.soak.test' }, action: { type: 'forward', target: { host: HOST, port: webPort }, tls: { mode: 'terminate', certificate: cert } } },
  { name: 'l4', match: { ports: ports.l4 }, action: { type: 'forward', target: { host: HOST, port: echoPort } } },
  { name: 'handler', match: { ports: ports.handler }, action: { type: 'socket-handler' } },
];
const started = await ask({ routes }, 'started');
if (!started.started) throw new Error(`proxy did not start: ${started.error}`);

function sampleProc() {
  const status = readFileSync(`/proc/${child.pid}/status`, 'utf8');
  const rss = Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] || 0) * 1024;
  const fds = readdirSync(`/proc/${child.pid}/fd`).length;
  return { rss, fds };
}

const t0 = Date.now();
const samples: { t: number; rss: number; fds: number; active: number; total: number; heap: number; external: number }[] = [];
const sampler = (async () => {
  while (running) {
    const { rss, fds } = sampleProc();
    const st = (await ask({ stats: true }, 'stats')).stats || {};
    const s = { t: Math.round((Date.now() - t0) / 1000), rss, fds, active: st.active, total: st.total, heap: st.heap, external: st.external };
    samples.push(s);
    const mib = (n: number) => (n / 1048576).toFixed(1);
    console.log(`t=${s.t}s rss=${mib(rss)}MiB (V8 heap ${mib(s.heap)}, external ${mib(s.external)}) fds=${fds} active=${s.active} total=${s.total} done=${JSON.stringify(done)}`);
    await sleep(SAMPLE_MS);
  }
})();

const updater = (async () => {
  let n = 0;
  while (running) {
    await sleep(5000);
    if (!running) break;
    const r = await ask({ update: ++n }, 'updated');
    if (r.updated !== undefined) done.updates++;
  }
})();

const loops: Promise<void>[] = [];
for (let i = 0; i < 3; i++) loops.push(loop('l4', async () => (await echoOnce(ports.l4, 1 + ((done.l4 * 7919) % 200_000)), void done.l4++)));
for (let i = 0; i < 2; i++) loops.push(loop('l4-long', async () => (await longStream(ports.l4, 60_000), void done.l4Long++)));
const agent = new http.Agent({ keepAlive: true, maxSockets: 8 });
for (let i = 0; i < 6; i++) loops.push(loop('h1', async () => (await h1Get(agent, ports.web, done.h1), void done.h1++)));
for (let i = 0; i < 2; i++)
  loops.push(
    loop('h2', async () => {
      const session = http2.connect(`https://${HOST}:${ports.tls}`, { servername: 'secure.soak.test', rejectUnauthorized: false });
      session.on('error', () => {});
      try {
        for (let k = 0; k < 500 && running; k += 4) {
          await Promise.all([0, 1, 2, 3].map((j) => h2Get(session, k + j)));
          done.h2 += 4;
        }
      } finally {
        session.close();
      }
    }),
  );
for (let i = 0; i < 2; i++) loops.push(loop('ws', async () => (await wsSession(ports.web), void done.ws++)));
for (let i = 0; i < 2; i++) loops.push(loop('handler', async () => (await echoOnce(ports.handler, 1 + ((done.handler * 31) % 10_000)), void done.handler++)));

await sleep(SECONDS * 1000);
running = false;
await Promise.all(loops);
await updater;
agent.destroy();
await sampler;
// Idle: every connection must have left the books.
let after = { active: -1 };
for (let i = 0; i < 30; i++) {
  await sleep(500);
  after = (await ask({ stats: true }, 'stats')).stats || after;
  if (after.active === 0) break;
}
const end = sampleProc();

// Drift over the last two thirds (the first third warms up: allocator arenas, pools), as the
// change of the median of its first and last tenths (single samples swing with garbage
// collection), and of the native part (RSS less the V8 heap).
const late = samples.filter((s) => s.t >= SECONDS / 3);
const median = (xs: number[]) => xs.sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? 0;
const tenth = Math.max(1, Math.floor(late.length / 10));
const head = late.slice(0, tenth);
const tail = late.slice(-tenth);
const rssA = median(head.map((s) => s.rss));
const rssB = median(tail.map((s) => s.rss));
const natA = median(head.map((s) => s.rss - s.heap));
const natB = median(tail.map((s) => s.rss - s.heap));
const first = late[0] ?? samples[0];
const last = late[late.length - 1] ?? samples[samples.length - 1];
const drift = rssA ? (rssB - rssA) / rssA : 0;
const summary = {
  seconds: SECONDS,
  done,
  errors,
  rss: {
    atThird: first?.rss,
    atEnd: last?.rss,
    max: Math.max(...samples.map((s) => s.rss)),
    driftLastTwoThirds: drift,
    nativeDriftLastTwoThirds: natA ? (natB - natA) / natA : 0,
    v8HeapAtThird: first?.heap,
    v8HeapAtEnd: last?.heap,
  },
  fds: { min: Math.min(...samples.map((s) => s.fds)), max: Math.max(...samples.map((s) => s.fds)), idleAfter: end.fds },
  activeAfter: after.active,
};
console.log(JSON.stringify(summary, null, 2));
if (process.env.SOAK_OUT) writeFileSync(process.env.SOAK_OUT, JSON.stringify({ summary, samples }, null, 2));
await ask({ stop: true }, 'stopped').catch(() => {});
child.kill();
echo.close();
web.closeAllConnections?.();
web.close();
rmSync(pkg, { recursive: true, force: true });
process.exit(after.active === 0 ? 0 : 1);
