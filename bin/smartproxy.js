#!/usr/bin/env node
'use strict';
// smartproxy-native CLI: runs a SmartProxy from a JSON or JavaScript config file.
//
//   smartproxy-native --config <file.json | file.js | file.mjs | file.cjs> [options]
//     --check              validate the config, print the routes it compiles to, exit 0 or 1
//     --log-format json    log lines as JSON objects (one per line) instead of text
//     --metrics-port <n>   serve /metrics (Prometheus), /status.json and the status page on
//                          127.0.0.1:<n> (metrics.prometheusEnabled with that port)
//
// A JSON file holds ISmartProxyOptions. A JS module's default export is the options object or a
// (possibly async) function returning it; an optional `close` export runs after the proxy stops.
// SIGINT / SIGTERM stop the proxy cleanly. SIGHUP reloads the config file and applies its routes
// with updateRoutes (live connections stay); an invalid new config is reported and the running
// one kept. Options other than routes take effect at the next start.
const path = require('node:path');
const { pathToFileURL } = require('node:url');
const fs = require('node:fs');
const { SmartProxy } = require('../index.js');

function usage(code) {
  const out = code === 0 ? console.log : console.error;
  out('usage: smartproxy-native --config <file.json|file.js|file.mjs|file.cjs> [--check] [--log-format text|json] [--metrics-port <port>]');
  process.exit(code);
}

function parseArgs(argv) {
  const args = { config: undefined, check: false, json: false, metricsPort: undefined };
  const value = (a, i) => (a.includes('=') ? a.slice(a.indexOf('=') + 1) : argv[++i.n]);
  for (const i = { n: 0 }; i.n < argv.length; i.n++) {
    const a = argv[i.n];
    const name = a.split('=')[0];
    if (a === '--') continue; // the end-of-options marker some runners pass along
    else if (a === '--help' || a === '-h') usage(0);
    else if (name === '--config' || name === '-c') args.config = value(a, i);
    else if (a === '--check') args.check = true;
    else if (name === '--log-format') {
      const f = value(a, i);
      if (f !== 'json' && f !== 'text') {
        console.error(`--log-format: 'text' or 'json', got ${f}`);
        usage(2);
      }
      args.json = f === 'json';
    } else if (name === '--metrics-port') {
      const p = Number(value(a, i));
      if (!Number.isInteger(p) || p < 1 || p > 65535) {
        console.error('--metrics-port: a port number 1-65535');
        usage(2);
      }
      args.metricsPort = p;
    } else {
      console.error(`unknown argument: ${a}`);
      usage(2);
    }
  }
  if (!args.config) usage(2);
  args.config = path.resolve(args.config);
  return args;
}

/** Log output: text lines as before, or one JSON object per line. */
function makeLog(json) {
  const write = (level, message, extra = {}) => {
    if (json) {
      const line = JSON.stringify({ time: new Date().toISOString(), level, message, ...extra });
      (level === 'error' || level === 'warn' ? process.stderr : process.stdout).write(line + '\n');
    } else if (level === 'error') console.error(message);
    else if (level === 'warn') console.warn(message);
    else console.log(message);
  };
  return { info: (m, x) => write('info', m, x), warn: (m, x) => write('warn', m, x), error: (m, x) => write('error', m, x), write };
}

async function loadConfig(file, fresh = false) {
  if (!fs.existsSync(file)) throw new Error(`config file not found: ${file}`);
  if (file.endsWith('.json')) return { options: JSON.parse(fs.readFileSync(file, 'utf8')), close: null };
  // A reload imports the module anew (a query string makes it a new module for the loader).
  const mod = await import(pathToFileURL(file).href + (fresh ? `?reload=${Date.now()}` : ''));
  let options = mod.default ?? mod;
  if (typeof options === 'function') options = await options();
  return { options, close: typeof mod.close === 'function' ? mod.close : null };
}

function describe(route) {
  const ports = JSON.stringify(route.match && route.match.ports);
  const domains = route.match && route.match.domains ? ` ${[].concat(route.match.domains).join(',')}` : '';
  const targets = [].concat((route.action && (route.action.targets || route.action.target)) || []);
  const to = targets.map((t) => `${[].concat(t.host).join('|')}:${t.port}`).join(', ');
  return `  ${route.name || '(unnamed)'}: ports ${ports}${domains} -> ${route.action.type}${to ? ` ${to}` : ''}`;
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const log = makeLog(args.json);
  const { options, close } = await loadConfig(args.config);
  if (args.metricsPort) options.metrics = { ...(options.metrics || {}), prometheusEnabled: true, prometheusPort: args.metricsPort };
  if (args.json) options.consoleLog = false;
  const proxy = new SmartProxy(options);
  if (args.json) proxy.on('log', (e) => log.write(e.level, `[smartproxy] ${e.message}`));
  if (args.check) {
    // Validation only: the routes against the options, nothing bound.
    try {
      await proxy.updateRoutes(options.routes || []);
    } catch (err) {
      log.error(`invalid config ${args.config}: ${err.message}`, { code: err.code });
      if (close) await close();
      process.exit(1);
    }
    log.info(`config ${args.config} is valid: ${proxy.settings.routes.length} route(s)`);
    for (const r of proxy.settings.routes) log.info(describe(r));
    if (close) await close();
    process.exit(0);
  }
  try {
    await proxy.start();
  } catch (err) {
    log.error(`smartproxy-native: cannot start: ${err.message}${err.code ? ` (${err.code})` : ''}`, { code: err.code });
    if (close) await close();
    process.exit(1);
  }
  log.info(`smartproxy-native listening on port(s) ${proxy.getListeningPorts().join(', ')}`, { ports: proxy.getListeningPorts() });
  for (const r of proxy.settings.routes) log.info(describe(r));
  const m = proxy.settings.metrics;
  if (m && m.prometheusEnabled) {
    const host = m.prometheusHost || '127.0.0.1';
    log.info(`status page http://${host}:${m.prometheusPort}/ and Prometheus metrics http://${host}:${m.prometheusPort}${m.prometheusPath || '/metrics'}`);
  }
  let reloading = Promise.resolve();
  const reload = () =>
    (reloading = reloading.then(async () => {
      try {
        const next = await loadConfig(args.config, true);
        await proxy.updateRoutes(next.options.routes || []);
        log.info(`SIGHUP: reloaded ${args.config}: ${proxy.settings.routes.length} route(s), listening on ${proxy.getListeningPorts().join(', ')}`);
        if (next.close) await next.close();
      } catch (err) {
        log.error(`SIGHUP: the new config was not applied (the running one stays): ${err.message}`, { code: err.code });
      }
    }));
  let stopping = false;
  const shutdown = async (signal) => {
    if (stopping) return;
    stopping = true;
    log.info(`${signal}: stopping`);
    // A proxy that cannot stop within its graceful timeout plus a margin is exited hard.
    const guard = setTimeout(() => process.exit(1), proxy.settings.gracefulShutdownTimeout + 5000);
    guard.unref();
    await proxy.stop();
    if (close) await close();
    log.info('stopped');
  };
  process.on('SIGINT', () => shutdown('SIGINT'));
  process.on('SIGTERM', () => shutdown('SIGTERM'));
  process.on('SIGHUP', () => reload());
}

main().catch((err) => {
  console.error(`smartproxy-native: ${err.stack || err.message}`);
  process.exit(1);
});
