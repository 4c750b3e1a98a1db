import { tap, expect } from '@git.zone/tstest/tapbundle';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

// The packed tarball, installed in a fresh folder under the original's name, must work there
// with no Rust toolchain involved: ESM and CJS consumers run a small forwarding scenario.
const root = resolve(import.meta.dirname, '..');
const pnpm = process.env.npm_execpath && /pnpm/.test(process.env.npm_execpath) ? process.env.npm_execpath : 'pnpm';
let work: string;
let consumer: string;
let tgz: string;

const body = `
const backend = net.createServer((s) => s.pipe(s));
await new Promise((r) => backend.listen(0, '127.0.0.1', r));
const probe = net.createServer();
await new Promise((r) => probe.listen(0, '127.0.0.1', r));
const port = probe.address().port;
await new Promise((r) => probe.close(r));
const proxy = new SmartProxy({ routes: [{ name: 'dropin', match: { ports: port }, action: { type: 'forward', target: { host: '127.0.0.1', port: backend.address().port } } }] });
await proxy.start();
const c = net.connect(port, '127.0.0.1');
c.write('drop-in works');
const got = await new Promise((r) => c.once('data', (d) => r(d.toString())));
c.destroy();
await proxy.stop();
backend.close();
if (got !== 'drop-in works') throw new Error('unexpected echo: ' + got);
console.log('OK ' + typeof SocketHandlers);
`;

tap.test('pack the package', async () => {
  work = mkdtempSync(join(tmpdir(), 'spn-dropin-'));
  execFileSync(pnpm, ['pack', '--pack-destination', work], { cwd: root, stdio: 'pipe' });
  const files = readdirSync(work).filter((f) => f.endsWith('.tgz'));
  expect(files.length).toEqual(1);
  tgz = join(work, files[0]);
});

tap.test('install it as @push.rocks/smartproxy in a fresh consumer', async () => {
  consumer = join(work, 'consumer');
  execFileSync('mkdir', ['-p', consumer]);
  writeFileSync(join(consumer, 'package.json'), JSON.stringify({ name: 'consumer', private: true, type: 'module' }));
  execFileSync(pnpm, ['add', `@push.rocks/smartproxy@file:${tgz}`], { cwd: consumer, stdio: 'pipe', env: { ...process.env, CI: 'true' } });
  const installed = readdirSync(join(consumer, 'node_modules', '@push.rocks', 'smartproxy'));
  expect(installed).toContain('index.js');
  expect(installed.some((f) => f.endsWith('.node'))).toBeTrue();
});

tap.test('an ESM consumer imports { SmartProxy } and forwards', async () => {
  writeFileSync(join(consumer, 'esm.mjs'), `import * as net from 'node:net';\nimport { SmartProxy, SocketHandlers } from '@push.rocks/smartproxy';\n${body}`);
  const out = execFileSync(process.execPath, ['esm.mjs'], { cwd: consumer, encoding: 'utf8', timeout: 30_000 });
  expect(out.trim()).toEqual('OK object');
});

tap.test('a CJS consumer requires it and forwards', async () => {
  writeFileSync(
    join(consumer, 'cjs.cjs'),
    `const net = require('node:net');\nconst { SmartProxy, SocketHandlers } = require('@push.rocks/smartproxy');\n(async () => {${body}})().catch((e) => { console.error(e); process.exit(1); });`,
  );
  const out = execFileSync(process.execPath, ['cjs.cjs'], { cwd: consumer, encoding: 'utf8', timeout: 30_000 });
  expect(out.trim()).toEqual('OK object');
});

tap.test('cleanup', async () => {
  rmSync(work, { recursive: true, force: true });
});

tap.start();
