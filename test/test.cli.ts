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

tap.test('--check: a good config prints its routes and exits 0; a bad one names the route and field, exit 1', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'spn-cli-'));
  const good = join(dir, 'good.json');
  writeFileSync(good, JSON.stringify({ routes: [{ name: 'web', match: { ports: 1 }, action: { type: 'forward', target: { host: '127.0.0.1', port: 3000 } } }] }));
  const ok = runCli(['--config', good, '--check']);
  expect(await ok.exited).toEqual(0);
  expect(ok.output()).toMatch(/is valid: 1 route\(s\)/);
  expect(ok.output()).toMatch(/web: ports 1 -> forward 127\.0\.0\.1:3000/);
  const bad = join(dir, 'bad.json');
  writeFileSync(bad, JSON.stringify({ routes: [{ name: 'web', match: { ports: 1 }, action: { type: 'forward', target: { host: '127.0.0.1', port: 70000 } } }] }));
  const no = runCli(['--config', bad, '--check', '--log-format', 'json']);
  expect(await no.exited).toEqual(1);
  const line = JSON.parse(no.output().trim().split('\n').pop()!);
  expect(line.level).toEqual('error');
  expect(line.code).toEqual('ERR_INVALID_CONFIG');
  expect(line.message).toMatch(/route "web" \(index 0\): action\.target\.port/);
  rmSync(dir, { recursive: true, force: true });
});

tap.test('SIGHUP reloads the config: new routes apply, a long-lived connection survives, a bad config is refused', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'spn-cli-'));
  const file = join(dir, 'live.json');
  const echo = await h.echoServer();
  const [p1, p2, metrics] = [await h.freePort(), await h.freePort(), await h.freePort()];
  const route = (name: string, port: number) => ({ name, match: { ports: port }, action: { type: 'forward', target: { host: '127.0.0.1', port: echo.port } } });
  writeFileSync(file, JSON.stringify({ routes: [route('first', p1)] }));
  const cli = runCli(['--config', file, '--log-format', 'json', '--metrics-port', String(metrics)]);
  await h.waitFor(() => cli.output().includes('listening on port(s)'), 10_000, 'the CLI to listen');
  // JSON log lines, and the metrics listener from --metrics-port.
  for (const l of cli.output().trim().split('\n')) expect(typeof JSON.parse(l).message).toEqual('string');
  expect(await h.httpGet(metrics, '127.0.0.1', '/metrics')).toMatch(/smartproxy_listener_up\{port="\d+"\} 1/);
  const s = await h.connect(p1);
  s.write('before\n');
  expect(await h.readLine(s)).toEqual('before');
  writeFileSync(file, JSON.stringify({ routes: [route('first', p1), route('second', p2)] }));
  cli.child.kill('SIGHUP');
  await h.waitFor(() => cli.output().includes('reloaded'), 10_000, 'the reload');
  const s2 = await h.connect(p2);
  s2.write('new\n');
  expect(await h.readLine(s2)).toEqual('new');
  s.write('after\n');
  expect(await h.readLine(s)).toEqual('after'); // the connection from before the reload lives on
  writeFileSync(file, '{ "routes": [ { "name": "broken", "match": { "ports": 0 } } ] }');
  cli.child.kill('SIGHUP');
  await h.waitFor(() => cli.output().includes('was not applied'), 10_000, 'the refusal');
  s.write('still\n');
  expect(await h.readLine(s)).toEqual('still');
  s.destroy();
  s2.destroy();
  cli.child.kill('SIGTERM');
  expect(await cli.exited).toEqual(0);
  echo.close();
  rmSync(dir, { recursive: true, force: true });
});

tap.start();
