#!/usr/bin/env node
'use strict';
// Runs smartproxy-native under the shared harness's proxy contract (../shared/bench/README.md):
// PERF_MODE, PERF_LISTEN_PORT, PERF_BACKEND_HOST/PORT, PERF_THREADS; exits on SIGTERM.
// Only `tcp` is built so far (the HTTP/TLS modes come with the HTTP reverse proxy).
const { SmartProxy } = require('..');

const mode = process.env.PERF_MODE || 'tcp';
if (mode !== 'tcp') {
  console.error(`launcher: mode ${mode} not supported yet`);
  process.exit(2);
}
const proxy = new SmartProxy({
  routes: [
    {
      name: 'bench',
      match: { ports: Number(process.env.PERF_LISTEN_PORT || 9000) },
      action: { type: 'forward', target: { host: process.env.PERF_BACKEND_HOST || '127.0.0.1', port: Number(process.env.PERF_BACKEND_PORT) } },
    },
  ],
  // The load generator is one client IP: upstream's per-IP defaults (100 concurrent, 300/min)
  // would cap the benchmark, and the peers have no such limits.
  maxConnectionsPerIP: 0,
  connectionRateLimitPerMinute: 0,
  workerThreads: Number(process.env.PERF_THREADS || 0) || undefined,
});

proxy.start().then(
  () => console.log(`smartproxy-native (bench) listening on ${proxy.getListeningPorts().join(',')}`),
  (err) => {
    console.error(err);
    process.exit(1);
  },
);
for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => proxy.stop().then(() => process.exit(0)));
}
