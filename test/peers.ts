// The proxies users run next to ours, for interop tests: HAProxy and nginx from Debian,
// installed when missing, started in the foreground with a generated config in a temporary
// folder, waited for on their port, and stopped (by PID) with close().
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import * as net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as h from './helpers.js';

export interface Peer {
  close: () => Promise<void>;
}

export function ensureInstalled(binary: string, pkg: string): void {
  if (existsSync(binary)) return;
  try {
    execFileSync('apt-get', ['install', '-y', '-qq', pkg], { stdio: 'ignore', timeout: 300_000 });
  } catch {
    execFileSync('apt-get', ['update', '-qq'], { stdio: 'ignore', timeout: 300_000 });
    execFileSync('apt-get', ['install', '-y', '-qq', pkg], { stdio: 'ignore', timeout: 300_000 });
  }
}

function listening(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(port, h.HOST);
    s.once('connect', () => (s.destroy(), resolve(true)));
    s.once('error', () => resolve(false));
  });
}

async function run(name: string, cmd: string, args: string[], port: number, dir: string): Promise<Peer> {
  const p: ChildProcess = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  p.stdout?.on('data', (d) => (out = (out + d).slice(-4000)));
  p.stderr?.on('data', (d) => (out = (out + d).slice(-4000)));
  const close = () =>
    new Promise<void>((resolve) => {
      const done = () => (rmSync(dir, { recursive: true, force: true }), resolve());
      if (p.exitCode !== null || p.signalCode !== null) return done();
      p.once('exit', done);
      p.kill('SIGTERM');
      setTimeout(() => p.kill('SIGKILL'), 2000).unref();
    });
  try {
    await h.waitFor(async () => p.exitCode === null && (await listening(port)), 10_000, `${name} to listen`);
  } catch (e) {
    await close();
    throw new Error(`${(e as Error).message}: ${out}`);
  }
  return { close };
}

/** HAProxy with `config` (a `global` section without `daemon` is added), listening on `port`. */
export async function startHaproxy(config: string, port: number): Promise<Peer> {
  ensureInstalled('/usr/sbin/haproxy', 'haproxy');
  const dir = mkdtempSync(join(tmpdir(), 'spn-haproxy-'));
  const cfg = join(dir, 'haproxy.cfg');
  writeFileSync(cfg, `global\n  maxconn 256\ndefaults\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n${config}\n`);
  return run('haproxy', '/usr/sbin/haproxy', ['-db', '-f', cfg], port, dir);
}

/** nginx with `servers` inside its `http` block, listening on `port`. */
export async function startNginx(servers: string, port: number): Promise<Peer> {
  ensureInstalled('/usr/sbin/nginx', 'nginx');
  const dir = mkdtempSync(join(tmpdir(), 'spn-nginx-'));
  for (const d of ['body', 'proxy', 'fastcgi', 'uwsgi', 'scgi', 'logs']) mkdirSync(join(dir, d));
  const conf = `events {}
http {
  access_log off;
  client_body_temp_path ${dir}/body; proxy_temp_path ${dir}/proxy; fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi; scgi_temp_path ${dir}/scgi;
  ${servers}
}
`;
  writeFileSync(join(dir, 'nginx.conf'), conf);
  return run('nginx', '/usr/sbin/nginx', ['-p', dir, '-c', join(dir, 'nginx.conf'), '-g', `daemon off; pid ${dir}/nginx.pid; error_log stderr;`], port, dir);
}
