import { tap, expect } from '@git.zone/tstest/tapbundle';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as h from './helpers.js';

function runCli(args: string[], env: Record<string, string> = {}) {
  const child = spawn(process.execPath, ['bin/smartproxy.js', ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.on('data', (d) => (out += d));
  child.stderr.on('data', (d) => (out += d));
  const exited = new Promise<number | null>((resolve) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      resolve(null);
    }, 20_000);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve(code);
    });
  });
  return { child, output: () => out, exited };
}

tap.test('the bundled default config serves the demo backend and stops on SIGTERM', async () => {
  const port = await h.freePort();
  const cli = runCli(['--config', 'config/default.mjs'], { SMARTPROXY_PORT: String(port) });
  await h.waitFor(() => cli.output().includes('listening on port(s)'), 10_000, 'the CLI to listen');
  expect(cli.output()).toMatch(new RegExp(`listening on port\\(s\\) ${port}`));
  const body = await h.httpGet(port, '127.0.0.1', '/hello');
  expect(body).toMatch(/reached \/hello through smartproxy-native/);
  cli.child.kill('SIGTERM');
  expect(await cli.exited).toEqual(0);
  expect(cli.output()).toMatch(/stopped/);
});

tap.test('a JSON config with a bad route fails with the route and field named', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'spn-cli-'));
  const file = join(dir, 'bad.json');
  writeFileSync(file, JSON.stringify({ routes: [{ name: 'oops', match: { ports: 0 }, action: { type: 'forward', target: { host: 'x', port: 1 } } }] }));
  const cli = runCli(['--config', file]);
  expect(await cli.exited).toEqual(1);
  expect(cli.output()).toMatch(/cannot start: route "oops" \(index 0\): match\.ports: port must be an integer 1-65535, got 0 \(ERR_INVALID_CONFIG\)/);
  rmSync(dir, { recursive: true, force: true });
});

tap.test('usage errors', async () => {
  const cli = runCli([]);
  expect(await cli.exited).toEqual(2);
  expect(cli.output()).toMatch(/usage: smartproxy-native --config/);
});

tap.start();
