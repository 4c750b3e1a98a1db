// The metrics listener: Prometheus text that the real `promtool check metrics` accepts (Debian
// package `prometheus`, installed when missing), counters equal to getMetrics(), per-route
// status classes, certificate expiry, /status.json, the status page's document, and a clear
// error when its port is taken.
import { tap, expect } from '@git.zone/tstest/tapbundle';
import { spawnSync } from 'node:child_process';
import * as http from 'node:http';
import * as net from 'node:net';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SmartProxy } from '../index.js';
import * as h from './helpers.js';
import { ensureInstalled } from './peers.js';

const cert = h.makeCert('prom.test');
let proxy: SmartProxy;
let web: http.Server;
let echo: h.TestServer;
let ports: { web: number; tls: number; l4: number; metrics: number };

function get(port: number, path: string, host = 'prom.test'): Promise<{ status: number; body: string; type: string }> {
  return new Promise((resolve, reject) => {
    http
      .get({ host: h.HOST, port, path, headers: { host }, agent: false }, (res) => {
        let body = '';
        res.on('data', (d) => (body += d));
        res.on('end', () => resolve({ status: res.statusCode!, body, type: String(res.headers['content-type']) }));
      })
      .on('error', reject);
  });
}

/** The value of one sample line of `text` (undefined when absent). */
function sample(text: string, line: string): number | undefined {
  const l = text.split('\n').find((x) => x.startsWith(line + ' '));
  return l === undefined ? undefined : Number(l.slice(line.length + 1));
}

tap.test('setup', async () => {
  ensureInstalled('/usr/bin/promtool', 'prometheus');
  web = http.createServer((req, res) => {
    req.resume();
    res.end('ok');
  });
  await new Promise<void>((r) => web.listen(0, h.HOST, () => r()));
  echo = await h.echoServer();
  ports = { web: await h.freePort(), tls: await h.freePort(), l4: await h.freePort(), metrics: await h.freePort() };
  const webPort = (web.address() as net.AddressInfo).port;
  proxy = new SmartProxy({
    metrics: { prometheusEnabled: true, prometheusPort: ports.metrics },
    routes: [
      { name: 'web', match: { ports: ports.web, domains: 'prom.test' }, action: { type: 'forward', target: { host: h.HOST, port: webPort } } },
      { name: 'dead', match: { ports: ports.web, domains: 'dead.test' }, action: { type: 'forward', target: { host: h.HOST, port: 1 } } },
      { name: 'secure', match: { ports: ports.tls, domains: 'prom.test' }, action: { type: 'forward', target: { host: h.HOST, port: webPort }, tls: { mode: 'terminate', certificate: cert } } },
      h.forward('l4', ports.l4, echo.port),
    ],
  });
  await proxy.start();
});

tap.test('promtool accepts the text, and its counters equal getMetrics()', async () => {
  for (let i = 0; i < 5; i++) expect((await get(ports.web, `/a${i}`)).status).toEqual(200);
  expect((await get(ports.web, '/', 'dead.test')).status).toEqual(502);
  expect((await get(ports.web, '/', 'nowhere.test')).status).toEqual(404);
  const s = await h.connect(ports.l4);
  s.write('hello\n');
  expect(await h.readLine(s)).toEqual('hello');
  s.destroy();
  await h.waitFor(() => proxy.getMetrics().connections.active() === 0, 5000, 'connections to close');
  await h.sleep(1200); // one sample: per-route bytes are folded in once a second
  const r = await get(ports.metrics, '/metrics');
  expect(r.status).toEqual(200);
  expect(r.type.includes('text/plain; version=0.0.4')).toBeTrue();
  const check = spawnSync('promtool', ['check', 'metrics'], { input: r.body, encoding: 'utf8' });
  console.log(`promtool: exit ${check.status}\n${check.stdout}${check.stderr}`);
  expect(check.status).toEqual(0);
  const m = proxy.getMetrics();
  const text = r.body;
  expect(sample(text, 'smartproxy_requests_total')).toEqual(m.requests.total());
  expect(sample(text, 'smartproxy_connections_total')).toEqual(m.connections.total());
  expect(sample(text, 'smartproxy_http_requests_total{route="web",status_class="2xx"}')).toEqual(5);
  expect(sample(text, 'smartproxy_http_requests_total{route="dead",status_class="5xx"}')).toEqual(1);
  expect(sample(text, 'smartproxy_http_requests_total{route="",status_class="4xx"}')).toEqual(1);
  const bytesIn = text.split('\n').filter((l) => l.startsWith('smartproxy_bytes_total{') && l.includes('direction="in"'));
  expect(bytesIn.reduce((a, l) => a + Number(l.split(' ')[1]), 0)).toEqual(m.totals.bytesIn());
  expect(sample(text, 'smartproxy_route_connections_total{route="l4"}')).toEqual(1);
  expect(sample(text, 'smartproxy_backend_connect_errors_total')).toBeGreaterThanOrEqual(1);
  expect(sample(text, `smartproxy_listener_up{port="${ports.tls}"}`)).toEqual(1);
  const expiry = text.split('\n').find((l) => l.startsWith('smartproxy_certificate_expiry_timestamp_seconds{route="secure",domain="prom.test"'));
  expect(expiry).toBeTruthy();
  const when = Number(expiry!.split(' ')[1]);
  expect(Math.abs(when - (Date.now() / 1000 + 2 * 86400))).toBeLessThan(86400 + 600);
  expect(text.includes('smartproxy_http_request_duration_seconds_count')).toBeTrue();
  // The same text from JavaScript.
  const js = proxy.getPrometheusMetrics();
  expect(sample(js, 'smartproxy_requests_total')).toEqual(m.requests.total());
  expect(spawnSync('promtool', ['check', 'metrics'], { input: js, encoding: 'utf8' }).status).toEqual(0);
});

tap.test('/status.json and the status page document', async () => {
  const j = await get(ports.metrics, '/status.json');
  expect(j.type.includes('application/json')).toBeTrue();
  const s = JSON.parse(j.body);
  expect(s.listeners.sort()).toEqual([ports.web, ports.tls, ports.l4].sort());
  expect(s.routes.map((r: any) => r.name)).toEqual(['web', 'dead', 'secure', 'l4']);
  expect(s.certificates[0].route).toEqual('secure');
  expect(s.connections.total).toEqual(proxy.getMetrics().connections.total());
  const page = await get(ports.metrics, '/');
  expect(page.type.includes('text/html')).toBeTrue();
  expect(page.body.includes('/status.json')).toBeTrue();
  expect(page.body.includes('http://')).toBeFalse();
  expect((await get(ports.metrics, '/nope')).status).toEqual(404);
});

/** Chromium, headless, on `url`: the DOM after the page's scripts ran (or a screenshot). */
function chromium(url: string, extra: string[]): string {
  const profile = mkdtempSync(join(tmpdir(), 'spn-chromium-'));
  try {
    const r = spawnSync(
      'chromium',
      ['--headless=new', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--no-first-run', '--disable-background-networking',
        '--disable-component-update', '--disable-sync', `--user-data-dir=${profile}`, '--virtual-time-budget=4000', ...extra, url],
      { encoding: 'utf8', timeout: 60_000 },
    );
    return r.stdout;
  } finally {
    rmSync(profile, { recursive: true, force: true });
  }
}

tap.test('the status page in a real headless browser shows the proxy\'s numbers', async () => {
  ensureInstalled('/usr/bin/chromium', 'chromium');
  const m = proxy.getMetrics();
  const dom = chromium(`http://${h.HOST}:${ports.metrics}/`, ['--dump-dom']);
  const text = (id: string) => new RegExp(`id="${id}">([^<]*)<`).exec(dom)?.[1];
  expect(dom.includes('data-loaded=')).toBeTrue();
  // No traffic since the last test: the totals the page shows are the proxy's.
  expect(text('total')).toEqual(String(m.connections.total()));
  expect(text('requests')).toEqual(String(m.requests.total()));
  expect(text('active')).toEqual('0');
  expect(text('listeners')).toEqual([ports.web, ports.tls, ports.l4].sort((a, b) => a - b).join(', '));
  for (const name of ['web', 'dead', 'secure', 'l4']) expect(dom.includes(`<td>${name}</td>`)).toBeTrue();
  expect(dom.includes('<td>prom.test</td>')).toBeTrue(); // the certificate's domain
  if (process.env.STATUS_SCREENSHOT) {
    chromium(`http://${h.HOST}:${ports.metrics}/`, [`--screenshot=${process.env.STATUS_SCREENSHOT}`, '--window-size=1100,1150']);
  }
});

tap.test('a taken metrics port fails start() with the port named; the other proxy goes on', async () => {
  const other = new SmartProxy({ metrics: { prometheusEnabled: true, prometheusPort: ports.metrics }, routes: [h.forward('x', await h.freePort(), echo.port)] });
  let msg = '';
  try {
    await other.start();
  } catch (e: any) {
    msg = e.message;
  }
  expect(msg.includes(String(ports.metrics))).toBeTrue();
  expect((await get(ports.metrics, '/metrics')).status).toEqual(200);
});

tap.test('teardown: stop() closes the metrics listener', async () => {
  await proxy.stop();
  const refused = await new Promise<boolean>((resolve) => {
    const s = net.connect(ports.metrics, h.HOST);
    s.once('connect', () => (s.destroy(), resolve(false)));
    s.once('error', () => resolve(true));
  });
  expect(refused).toBeTrue();
  echo.close();
  await new Promise<void>((r) => web.close(() => r()));
});

export default tap.start();
