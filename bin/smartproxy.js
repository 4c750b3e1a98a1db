#!/usr/bin/env node
'use strict';
// smartproxy-native CLI: runs a SmartProxy from a JSON or JavaScript config file.
//
//   smartproxy-native --config <file.json | file.js | file.mjs | file.cjs>
//
// A JSON file holds ISmartProxyOptions. A JS module's default export is the options object or a
// (possibly async) function returning it; an optional `close` export runs after the proxy stops.
// SIGINT / SIGTERM stop the proxy cleanly.
const path = require('node:path');
const { pathToFileURL } = require('node:url');
const fs = require('node:fs');
const { SmartProxy } = require('../index.js');

function usage(code) {
  const out = code === 0 ? console.log : console.error;
  out('usage: smartproxy-native --config <file.json|file.js|file.mjs|file.cjs>');
  process.exit(code);
}

function parseArgs(argv) {
  let config;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--help' || a === '-h') usage(0);
    else if (a === '--config' || a === '-c') config = argv[++i];
    else if (a.startsWith('--config=')) config = a.slice('--config='.length);
    else {
      console.error(`unknown argument: ${a}`);
      usage(2);
    }
  }
  if (!config) usage(2);
  return { config: path.resolve(config) };
}

async function loadConfig(file) {
  if (!fs.existsSync(file)) throw new Error(`config file not found: ${file}`);
  if (file.endsWith('.json')) return { options: JSON.parse(fs.readFileSync(file, 'utf8')), close: null };
  const mod = await import(pathToFileURL(file).href);
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
  const { config } = parseArgs(process.argv.slice(2));
  const { options, close } = await loadConfig(config);
  const proxy = new SmartProxy(options);
  try {
    await proxy.start();
  } catch (err) {
    console.error(`smartproxy-native: cannot start: ${err.message}${err.code ? ` (${err.code})` : ''}`);
    if (close) await close();
    process.exit(1);
  }
  console.log(`smartproxy-native listening on port(s) ${proxy.getListeningPorts().join(', ')}`);
  for (const r of proxy.settings.routes) console.log(describe(r));
  let stopping = false;
  const shutdown = async (signal) => {
    if (stopping) return;
    stopping = true;
    console.log(`${signal}: stopping`);
    // A proxy that cannot stop within its graceful timeout plus a margin is exited hard.
    const guard = setTimeout(() => process.exit(1), proxy.settings.gracefulShutdownTimeout + 5000);
    guard.unref();
    await proxy.stop();
    if (close) await close();
    console.log('stopped');
  };
  process.on('SIGINT', () => shutdown('SIGINT'));
  process.on('SIGTERM', () => shutdown('SIGTERM'));
}

main().catch((err) => {
  console.error(`smartproxy-native: ${err.stack || err.message}`);
  process.exit(1);
});
