#!/usr/bin/env node
// Runs every test/test.*.ts file (upstream tapbundle style) in its own Node process under tsx,
// with a per-file timeout. A file passes when it exits 0, prints a plan `1..N`, and reports
// `ok` for all N tests. Ends with `N passed, N failed` (tests; a file that crashes, times out or
// misses its plan counts its missing tests as failed) and exits non-zero on any failure.
//
// Usage: node test/run.mjs [filter-substring ...]   env: TEST_TIMEOUT_MS (default 180000)
import { spawn } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, '..');
const timeoutMs = Number(process.env.TEST_TIMEOUT_MS || 180_000);
const filters = process.argv.slice(2);
const files = readdirSync(here)
  .filter((f) => /^test\..*\.ts$/.test(f))
  .filter((f) => filters.length === 0 || filters.some((x) => f.includes(x)))
  .sort();

function runFile(file) {
  return new Promise((resolve) => {
    const started = Date.now();
    const child = spawn(process.execPath, ['--expose-gc', '--import', 'tsx', join('test', file)], {
      cwd: root,
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, FORCE_COLOR: '0' },
    });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (out += d));
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, timeoutMs);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ file, code, signal, timedOut, out, ms: Date.now() - started });
    });
  });
}

let passed = 0;
let failed = 0;
const failures = [];
for (const file of files) {
  const r = await runFile(file);
  const plan = /^1\.\.(\d+)\s*$/m.exec(r.out);
  const planned = plan ? Number(plan[1]) : 0;
  const oks = (r.out.match(/^ok \d+/gm) || []).length;
  const notOks = (r.out.match(/^not ok \d+/gm) || []).length;
  const missing = Math.max(0, planned - oks - notOks);
  const fileOk = r.code === 0 && !r.timedOut && plan && notOks === 0 && oks === planned && planned > 0;
  passed += oks;
  failed += notOks + missing + (fileOk || notOks + missing > 0 ? 0 : 1);
  const why = r.timedOut ? ` TIMEOUT after ${timeoutMs} ms` : !plan ? ' (no plan printed)' : r.code !== 0 ? ` (exit ${r.code ?? r.signal})` : '';
  console.log(`${fileOk ? 'PASS' : 'FAIL'} ${file}: ${oks}/${planned} ok${why} [${r.ms} ms]`);
  for (const line of r.out.split('\n')) {
    if (/^(not )?ok \d+/.test(line)) console.log(`    ${line}`);
  }
  if (!fileOk) failures.push(r);
}
for (const r of failures) {
  console.log(`\n===== output of ${r.file} =====\n${r.out.trimEnd()}\n===== end ${r.file} =====`);
}
console.log(`\n${files.length} test files`);
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed === 0 && files.length > 0 ? 0 : 1);
