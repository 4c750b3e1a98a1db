// The access log: one line per HTTP request (fast path, HTTP/2, hyper's path) and one per
// layer-4 connection at close, valid JSON or the combined format; reopenLogs() for rotation;
// a log path that blocks (a FIFO nobody reads) never blocks a connection: lines are dropped and
// counted instead.
import { tap, expect } from '@git.zone/tstest/tapbundle';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, renameSync, rmSync, openSync, closeSync } from 'node:fs';
import * as http from 'node:http';
import * as http2 from 'node:http2';
import * as net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SmartProxy } from '../index.js';
import * as h from './helpers.js';

const dir = mkdtempSync(join(tmpdir(), 'spn-access-'));
const cert = h.makeCert('log.test');
let web: http.Server;
let webPort: number;
let echo: h.TestServer;

tap.test('setup', async () => {
  web = http.createServer((req, res) => {
    req.resume();
    req.on('end', () => res.writeHead(req.url === '/missing' ? 404 : 200).end('hello'));
  });
  await new Promise<void>((r) => web.listen(0, h.HOST, () => r()));
  webPort = (web.address() as net.AddressInfo).port;
  echo = await h.echoServer();
});

function get(port: number, path: string, headers: Record<string, string> = {}): Promise<number> {
  return new Promise((resolve, reject) => {
    http
      .get({ host: h.HOST, port, path, headers: { host: 'log.test', ...headers }, agent: false }, (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode!));
      })
      .on('error', reject);
  });
}

async function lines(path: string, n: number): Promise<string[]> {
  let got: string[] = [];
  await h.waitFor(() => {
    got = existsSync(path) ? readFileSync(path, 'utf8').split('\n').filter(Boolean) : [];
    return got.length >= n;
  }, 5000, `${n} log lines`);
  return got;
}

tap.test('JSON lines for HTTP requests and layer-4 connections', async () => {
  const path = join(dir, 'access.json.log');
  const [hp, tp, lp] = [await h.freePort(), await h.freePort(), await h.freePort()];
  const p = new SmartProxy({
    accessLog: { enabled: true, path, format: 'json' },
    routes: [
      { name: 'web', match: { ports: hp, domains: 'log.test' }, action: { type: 'forward', target: { host: h.HOST, port: webPort } } },
      { name: 'secure', match: { ports: tp, domains: 'log.test' }, action: { type: 'forward', target: { host: h.HOST, port: webPort }, tls: { mode: 'terminate', certificate: cert } } },
      h.forward('tcp', lp, echo.port),
    ],
  });
  await p.start();
  expect(await get(hp, '/a?x=1', { 'user-agent': 'tester/1' })).toEqual(200);
  expect(await get(hp, '/missing')).toEqual(404);
  expect(await get(hp, '/', { host: 'nowhere.test' })).toEqual(404); // no route: the proxy answers
  const session = http2.connect(`https://${h.HOST}:${tp}`, { servername: 'log.test', rejectUnauthorized: false });
  const a = await h.h2Ask(session, { ':path': '/h2', ':authority': 'log.test' });
  expect(a.head[':status']).toEqual(200);
  session.close();
  const s = await h.connect(lp);
  s.write('ping\n');
  expect(await h.readLine(s)).toEqual('ping');
  s.end();
  await h.closed(s);
  const got = (await lines(path, 5)).map((l) => JSON.parse(l));
  const byPath = (x: string) => got.find((g) => g.path === x);
  const first = byPath('/a?x=1');
  expect(first.type).toEqual('http');
  expect(first.method).toEqual('GET');
  expect(first.status).toEqual(200);
  expect(first.route).toEqual('web');
  expect(first.host).toEqual('log.test');
  expect(first.client).toEqual('127.0.0.1');
  expect(first.backend).toEqual(`${h.HOST}:${webPort}`);
  expect(first.bytesOut).toBeGreaterThan(5);
  expect(typeof first.durationMs).toEqual('number');
  expect(Number.isNaN(Date.parse(first.time))).toBeFalse();
  expect(byPath('/missing').status).toEqual(404);
  const unrouted = got.find((g) => g.host === 'nowhere.test');
  expect(unrouted.status).toEqual(404);
  expect(unrouted.route).toEqual(null);
  expect(byPath('/h2').route).toEqual('secure');
  const tcp = got.find((g) => g.type === 'tcp');
  expect(tcp.route).toEqual('tcp');
  expect(tcp.target).toEqual(`${h.HOST}:${echo.port}`);
  expect(tcp.bytesIn).toEqual(5);
  expect(tcp.bytesOut).toEqual(5);
  expect(tcp.termination.length > 0).toBeTrue();
  // HTTP connections get lines per request, not per connection.
  expect(got.filter((g) => g.type === 'tcp').length).toEqual(1);
  await p.stop();
});

tap.test('combined format, and reopenLogs() after a rotation', async () => {
  const path = join(dir, 'access.combined.log');
  const port = await h.freePort();
  const p = new SmartProxy({
    accessLog: { path, format: 'combined' },
    routes: [{ name: 'web', match: { ports: port, domains: 'log.test' }, action: { type: 'forward', target: { host: h.HOST, port: webPort } } }],
  });
  await p.start();
  await get(port, '/one', { referer: 'http://ref.test/', 'user-agent': 'ua "quoted"' });
  const [line] = await lines(path, 1);
  expect(/^127\.0\.0\.1 - - \[\d\d\/\w{3}\/\d{4}:\d\d:\d\d:\d\d \+0000\] "GET \/one HTTP\/1\.1" 200 \d+ "http:\/\/ref\.test\/" "ua \\x22quoted\\x22" /.test(line)).toBeTrue();
  renameSync(path, path + '.1');
  p.reopenLogs();
  await h.sleep(400);
  await get(port, '/two');
  const [after] = await lines(path, 1);
  expect(after.includes('/two')).toBeTrue();
  expect(readFileSync(path + '.1', 'utf8').includes('/two')).toBeFalse();
  await p.stop();
});

tap.test('a log path that blocks never blocks a connection: lines are dropped and counted', async () => {
  const fifo = join(dir, 'blocked.fifo');
  execFileSync('mkfifo', [fifo]);
  // A reader that opens the FIFO and never reads: the writer fills the pipe, then blocks.
  const holder = openSync(fifo, 'r+');
  const port = await h.freePort();
  const p = new SmartProxy({
    maxConnectionsPerIP: 0,
    connectionRateLimitPerMinute: 0,
    accessLog: { path: fifo, format: 'json' },
    routes: [{ name: 'web', match: { ports: port, domains: 'log.test' }, action: { type: 'forward', target: { host: h.HOST, port: webPort } } }],
  });
  await p.start();
  const agent = new http.Agent({ keepAlive: true, maxSockets: 16 });
  const one = () =>
    new Promise<number>((resolve, reject) => {
      http
        .get({ host: h.HOST, port, path: `/${'p'.repeat(200)}`, agent, headers: { host: 'log.test' } }, (res) => {
          res.resume();
          res.on('end', () => resolve(res.statusCode!));
        })
        .on('error', reject);
    });
  const started = Date.now();
  let ok = 0;
  for (let round = 0; round < 80; round++) {
    const r = await Promise.all(Array.from({ length: 100 }, one));
    ok += r.filter((s) => s === 200).length;
  }
  agent.destroy();
  console.log(`8000 requests with a blocked log in ${Date.now() - started} ms`);
  expect(ok).toEqual(8000);
  const dropped = Number(/smartproxy_access_log_dropped_total (\d+)/.exec(p.getPrometheusMetrics())?.[1]);
  console.log(`dropped ${dropped}`);
  expect(dropped).toBeGreaterThan(0);
  await p.stop();
  closeSync(holder);
});

tap.test("engine log lines reach JavaScript as 'log' events (level, message, route, client); consoleLog: false keeps them off the console", async () => {
  const port = await h.freePort();
  const p = new SmartProxy({
    enableDetailedLogging: true,
    consoleLog: false,
    routes: [{ name: 'down', match: { ports: port, domains: 'log.test' }, action: { type: 'forward', target: { host: h.HOST, port: 1 } } }],
  } as any);
  const events: any[] = [];
  p.on('log', (e) => events.push(e));
  const printed: string[] = [];
  const orig = console.log;
  console.log = (...a: any[]) => printed.push(a.join(' '));
  try {
    await p.start();
    expect(await get(port, '/')).toEqual(502);
    await h.waitFor(() => events.some((e) => e.level === 'debug' && / closed: /.test(e.message)), 3000, 'a log event');
  } finally {
    console.log = orig;
  }
  const e = events.find((x) => / closed: /.test(x.message));
  expect(e.time instanceof Date).toBeTrue();
  expect(e.route).toEqual('down');
  expect(e.client).toEqual('127.0.0.1');
  expect(printed.some((l) => l.includes('[smartproxy]'))).toBeFalse();
  await p.stop();
});

tap.test('teardown', async () => {
  echo.close();
  web.closeAllConnections?.();
  await new Promise<void>((r) => web.close(() => r()));
  rmSync(dir, { recursive: true, force: true });
});

export default tap.start();
