// A real ACME CA for the tests: Debian's Pebble (and pebble-challtestsrv as its DNS, so that
// every name resolves to 127.0.0.1), installed when missing, started on free ports with a
// generated HTTPS certificate, stopped by close(). No mock of the CA.
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import * as https from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as h from './helpers.js';

export interface Pebble {
  /** The ACME directory URL. */
  directoryUrl: string;
  /** PEM of the CA of the directory's HTTPS certificate (give it as `acme.directoryCa`). */
  directoryCa: string;
  /** Where Pebble validates HTTP-01 (the proxy's `acme.port`). */
  httpPort: number;
  /** PEM of the root that signs issued certificates (fetched from Pebble). */
  root: () => Promise<string>;
  /** pebble-challtestsrv's management API (DNS-01 TXT records: POST /set-txt, /clear-txt). */
  dnsManagement: string;
  /** The DNS server Pebble resolves names with (127.0.0.1:port). */
  dnsServer: string;
  close: () => Promise<void>;
}

function ensureInstalled(): void {
  if (existsSync('/usr/bin/pebble') && existsSync('/usr/bin/pebble-challtestsrv')) return;
  try {
    execFileSync('apt-get', ['install', '-y', '-qq', 'pebble'], { stdio: 'ignore', timeout: 300_000 });
  } catch {
    execFileSync('apt-get', ['update', '-qq'], { stdio: 'ignore', timeout: 300_000 });
    execFileSync('apt-get', ['install', '-y', '-qq', 'pebble'], { stdio: 'ignore', timeout: 300_000 });
  }
}

function get(url: string, ca: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    https
      .get(url, { ca, timeout: 3000 }, (res) => {
        let body = '';
        res.on('data', (d) => (body += d));
        res.on('end', () => resolve({ status: res.statusCode!, body }));
      })
      .on('error', reject)
      .on('timeout', function (this: any) {
        this.destroy(new Error('timeout'));
      });
  });
}

function stop(p: ChildProcess): Promise<void> {
  return new Promise((resolve) => {
    if (p.exitCode !== null || p.signalCode !== null) return resolve();
    p.once('exit', () => resolve());
    p.kill('SIGTERM');
    setTimeout(() => p.kill('SIGKILL'), 2000).unref();
  });
}

/**
 * Starts Pebble validating HTTP-01 on `httpPort` (and TLS-ALPN-01 on `tlsPort`).
 * `validitySeconds` shortens issued certificates (renewal tests).
 */
export async function startPebble(opts: { httpPort: number; tlsPort?: number; validitySeconds?: number }): Promise<Pebble> {
  ensureInstalled();
  const dir = mkdtempSync(join(tmpdir(), 'spn-pebble-'));
  // A CA (given to the proxy as `directoryCa`) and Pebble's HTTPS certificate issued by it: a
  // self-signed leaf cannot be its own trust anchor for rustls.
  const ossl = (args: string[]) => execFileSync('openssl', args, { stdio: 'ignore' });
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  ossl(['req', '-x509', ...ec, '-days', '2', '-subj', '/CN=test ACME directory CA', '-keyout', join(dir, 'ca.key'), '-out', join(dir, 'ca.pem')]);
  ossl(['req', ...ec, '-subj', '/CN=pebble', '-keyout', join(dir, 'key.pem'), '-out', join(dir, 'req.csr')]);
  writeFileSync(join(dir, 'ext.cnf'), 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n');
  ossl(['x509', '-req', '-in', join(dir, 'req.csr'), '-CA', join(dir, 'ca.pem'), '-CAkey', join(dir, 'ca.key'), '-CAcreateserial', '-days', '2', '-extfile', join(dir, 'ext.cnf'), '-out', join(dir, 'cert.pem')]);
  const [acmePort, mgmtPort, dnsPort, chalMgmtPort] = await h.freePorts(4);
  const config: any = {
    pebble: {
      listenAddress: `127.0.0.1:${acmePort}`,
      managementListenAddress: `127.0.0.1:${mgmtPort}`,
      certificate: join(dir, 'cert.pem'),
      privateKey: join(dir, 'key.pem'),
      httpPort: opts.httpPort,
      tlsPort: opts.tlsPort ?? 5001,
      ocspResponderURL: '',
      externalAccountBindingRequired: false,
    },
  };
  if (opts.validitySeconds) config.pebble.certificateValidityPeriod = opts.validitySeconds;
  writeFileSync(join(dir, 'pebble.json'), JSON.stringify(config));
  const log = (name: string, p: ChildProcess) => {
    let out = '';
    p.stdout?.on('data', (d) => (out = (out + d).slice(-8000)));
    p.stderr?.on('data', (d) => (out = (out + d).slice(-8000)));
    return () => `${name}: ${out}`;
  };
  const dns = spawn('pebble-challtestsrv', [
    '-management', `127.0.0.1:${chalMgmtPort}`, '-dns01', `127.0.0.1:${dnsPort}`,
    '-http01', '', '-https01', '', '-tlsalpn01', '', '-defaultIPv4', '127.0.0.1', '-defaultIPv6', '',
  ]);
  const dnsLog = log('challtestsrv', dns);
  const pebble = spawn('pebble', ['-config', join(dir, 'pebble.json'), '-dnsserver', `127.0.0.1:${dnsPort}`], {
    env: { ...process.env, PEBBLE_VA_NOSLEEP: '1', PEBBLE_WFE_NONCEREJECT: '0', PEBBLE_AUTHZREUSE: '0' },
  });
  const pebbleLog = log('pebble', pebble);
  const ca = readFileSync(join(dir, 'ca.pem'), 'utf8');
  const directoryUrl = `https://127.0.0.1:${acmePort}/dir`;
  const close = async () => {
    await Promise.all([stop(pebble), stop(dns)]);
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    await h.waitFor(async () => (await get(directoryUrl, ca).catch(() => ({ status: 0 }))).status === 200, 20_000, 'Pebble to answer');
  } catch (e) {
    await close();
    throw new Error(`${(e as Error).message}\n${pebbleLog()}\n${dnsLog()}`);
  }
  return {
    directoryUrl,
    directoryCa: ca,
    httpPort: opts.httpPort,
    root: async () => (await get(`https://127.0.0.1:${mgmtPort}/roots/0`, ca)).body,
    dnsManagement: `http://127.0.0.1:${chalMgmtPort}`,
    dnsServer: `127.0.0.1:${dnsPort}`,
    close,
  };
}
