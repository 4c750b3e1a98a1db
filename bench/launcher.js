#!/usr/bin/env node
'use strict';
// Runs smartproxy-native under the shared harness's proxy contract (../shared/bench/README.md):
// PERF_MODE (tcp | http | https | h2), PERF_LISTEN_PORT, PERF_BACKEND_HOST/PORT, PERF_CERT/KEY,
// PERF_THREADS; exits on SIGTERM.
const fs = require('node:fs');
const { SmartProxy } = require('..');

const mode = process.env.PERF_MODE || 'tcp';
const listen = Number(process.env.PERF_LISTEN_PORT || 9000);
const target = { host: process.env.PERF_BACKEND_HOST || '127.0.0.1', port: Number(process.env.PERF_BACKEND_PORT) };

let route;
switch (mode) {
  case 'tcp':
    // Layer 4: nothing inspected. PERF_PROXY_PROTOCOL=v1|v2 (bench/proxy-protocol.ts): read
    // that header from 127.0.0.1 and send it to the backend.
    route = { name: 'bench', match: { ports: listen }, action: { type: 'forward', target } };
    // PERF_PROXY_SEND=0: read the header, send none (to tell the two costs apart).
    if (process.env.PERF_PROXY_PROTOCOL && process.env.PERF_PROXY_SEND !== '0') route.action.sendProxyProtocol = process.env.PERF_PROXY_PROTOCOL;
    break;
  case 'http':
    // The HTTP layer (per-request routing by Host), keep-alive to the backend.
    route = { name: 'bench', match: { ports: listen, domains: '*' }, action: { type: 'forward', target } };
    break;
  case 'https':
  case 'h2': {
    const certificate = { cert: fs.readFileSync(process.env.PERF_CERT, 'utf8'), key: fs.readFileSync(process.env.PERF_KEY, 'utf8') };
    // No domains: the certificate serves any name (wrk connects by IP, without SNI).
    route = { name: 'bench', match: { ports: listen }, action: { type: 'forward', target, tls: { mode: 'terminate', certificate } } };
    break;
  }
  default:
    console.error(`launcher: unknown PERF_MODE ${mode}`);
    process.exit(2);
}

const proxy = new SmartProxy({
  routes: [route],
  ...(process.env.PERF_PROXY_PROTOCOL ? { proxyIPs: ['127.0.0.1'] } : {}),
  // The load generator is one client IP: upstream's per-IP defaults (100 concurrent, 300/min)
  // would cap the benchmark, and the peers have no such limits.
  maxConnectionsPerIP: 0,
  connectionRateLimitPerMinute: 0,
  // The harness counts full handshakes: no session resumption.
  tlsSessionResumption: false,
  workerThreads: Number(process.env.PERF_THREADS || 0) || undefined,
});

proxy.start().then(
  () => console.log(`smartproxy-native (bench, ${mode}) listening on ${proxy.getListeningPorts().join(',')}`),
  (err) => {
    console.error(err);
    process.exit(1);
  },
);
for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => proxy.stop().then(() => process.exit(0)));
}
