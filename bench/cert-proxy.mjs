// The proxy of bench/certs.ts, in its own process (so that its CPU and memory are its own).
// argv[2]: a JSON file { mode: 'static' | 'stored', certs: [{ domain, cert, key }], port,
// store?, acmePort?, backendPort }. One route per certificate. IPC: sends { startMs, rssBefore,
// rssAfter, status } once started; 'stop' stops it and exits.
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';

const { SmartProxy } = createRequire(import.meta.url)('..');
const cfg = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const target = { host: '127.0.0.1', port: cfg.backendPort };
const routes = cfg.certs.map((c, i) => ({
  name: `r${i}`,
  match: { ports: cfg.port, domains: c.domain },
  action: {
    type: 'forward',
    target,
    tls: { mode: 'terminate', certificate: cfg.mode === 'stored' ? 'auto' : { cert: c.cert, key: c.key } },
  },
}));
delete cfg.certs;
const acme = cfg.mode === 'stored'
  ? { email: 'ops@example.com', certificateStore: cfg.store, port: cfg.acmePort, directoryUrl: 'https://127.0.0.1:1/directory' }
  : undefined;
const proxy = new SmartProxy({ routes, acme, maxConnectionsPerIP: 0, connectionRateLimitPerMinute: 0, tlsSessionResumption: false });
globalThis.gc?.();
const rssBefore = process.memoryUsage().rss;
const t0 = process.hrtime.bigint();
await proxy.start();
const startMs = Number(process.hrtime.bigint() - t0) / 1e6;
const last = `r${routes.length - 1}`;
process.send({ startMs, rssBefore, rssAfter: process.memoryUsage().rss, status: proxy.getCertificateStatus(last)?.status });
process.on('message', async (m) => {
  if (m === 'stop') {
    await proxy.stop();
    process.disconnect();
  }
});
