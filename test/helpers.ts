// Shared helpers for the tapbundle suites: servers on 127.0.0.1 with ephemeral ports,
// certificates generated at test time, and bounded waits. Every server returned has close().
import * as net from 'node:net';
import type * as http2 from 'node:http2';
import * as tls from 'node:tls';
import * as crypto from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export const HOST = '127.0.0.1';

/** Ports free right now (all reserved at once, so they differ from each other). */
export async function freePorts(n: number): Promise<number[]> {
  const servers: net.Server[] = [];
  for (let i = 0; i < n; i++) {
    const s = net.createServer();
    await new Promise<void>((r) => s.listen(0, HOST, () => r()));
    servers.push(s);
  }
  const ports = servers.map((s) => (s.address() as net.AddressInfo).port);
  await Promise.all(servers.map((s) => new Promise((r) => s.close(r))));
  return ports;
}

/**
 * Ports below the kernel's ephemeral range: no outgoing connection takes them, so no client
 * socket lingers there in TIME-WAIT. After many short connections (a benchmark, a long test
 * run) nearly every ephemeral port has such a socket, which keeps a listener off it, and runs
 * of consecutive free ports become rare there.
 */
function belowEphemeral(): [number, number] {
  try {
    const low = Number(readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/)[0]);
    if (low > 2048) return [1024, low];
  } catch {}
  return [0, 0];
}

/** The first of `n` consecutive free ports (for port-range routes): tries bases until a run binds. */
export async function freePortRun(n: number): Promise<number> {
  const [lo, hi] = belowEphemeral();
  for (let attempt = 0; attempt < 100; attempt++) {
    // Half the attempts below the ephemeral range (when there is one), half kernel-picked.
    const base = hi - lo > n && attempt % 2 === 0 ? lo + Math.floor(Math.random() * (hi - lo - n)) : (await freePorts(1))[0];
    if (base + n - 1 > 65535) continue;
    const held: net.Server[] = [];
    for (let p = base; p < base + n; p++) {
      const s = net.createServer();
      const ok = await new Promise<boolean>((r) => {
        s.once('error', () => r(false));
        s.listen(p, HOST, () => r(true));
      });
      if (!ok) break;
      held.push(s);
    }
    await Promise.all(held.map((s) => new Promise((r) => s.close(r))));
    if (held.length === n) return base;
  }
  throw new Error(`no run of ${n} free ports found`);
}

export async function freePort(): Promise<number> {
  return (await freePorts(1))[0];
}

export interface TestServer {
  port: number;
  server: net.Server;
  sockets: Set<net.Socket>;
  /** Connections accepted so far. */
  accepted: () => number;
  close: () => Promise<void>;
}

function track(server: net.Server, port: number): TestServer {
  const sockets = new Set<net.Socket>();
  let accepted = 0;
  server.on(server instanceof tls.Server ? 'secureConnection' : 'connection', (s: net.Socket) => {
    accepted++;
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    s.on('error', () => {});
  });
  return {
    port,
    server,
    sockets,
    accepted: () => accepted,
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise((r) => server.close(r));
    },
  };
}

/** A TCP server on 127.0.0.1 calling `handler` per connection. */
export async function tcpServer(handler: (s: net.Socket) => void, port = 0): Promise<TestServer> {
  const server = net.createServer(handler);
  await new Promise<void>((r) => server.listen(port, HOST, () => r()));
  const t = track(server, (server.address() as net.AddressInfo).port);
  return t;
}

export const echoServer = () => tcpServer((s) => s.pipe(s));

/** A server that writes `name` and then echoes; tells which backend answered. */
export const namedServer = (name: string) =>
  tcpServer((s) => {
    s.write(`${name}\n`);
    s.pipe(s);
  });

/** A minimal HTTP/1.1 server answering every request with `name` as body (routing tests). */
export const httpNameServer = (name: string) =>
  tcpServer((s) => {
    let buf = '';
    s.on('data', (d) => {
      buf += d.toString('latin1');
      while (buf.includes('\r\n\r\n')) {
        const i = buf.indexOf('\r\n\r\n');
        const head = buf.slice(0, i);
        buf = buf.slice(i + 4);
        const path = head.split(' ')[1];
        const body = `${name} ${path}`;
        s.write(`HTTP/1.1 200 OK\r\nContent-Length: ${Buffer.byteLength(body)}\r\nX-Backend: ${name}\r\n\r\n${body}`);
        if (/\r\nconnection:\s*close/i.test(head)) s.end();
      }
    });
  });

export interface Cert {
  key: string;
  cert: string;
}

/** A self-signed ECDSA certificate for `cn` (plus SANs), made with openssl now. */
export function makeCert(cn: string, altNames: string[] = [cn]): Cert {
  const dir = mkdtempSync(join(tmpdir(), 'spn-cert-'));
  try {
    const keyPath = join(dir, 'key.pem');
    const certPath = join(dir, 'cert.pem');
    execFileSync('openssl', [
      'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
      '-keyout', keyPath, '-out', certPath, '-days', '2', '-subj', `/CN=${cn}`,
      '-addext', `subjectAltName=${altNames.map((n) => `DNS:${n}`).join(',')}`,
    ], { stdio: 'ignore' });
    return { key: readFileSync(keyPath, 'utf8'), cert: readFileSync(certPath, 'utf8') };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** A TLS server that answers each connection with `name` and then echoes. */
export async function tlsNameServer(name: string, cert: Cert): Promise<TestServer> {
  const server = tls.createServer({ key: cert.key, cert: cert.cert }, (s) => {
    s.write(`${name}\n`);
    s.pipe(s);
  });
  server.on('tlsClientError', () => {});
  await new Promise<void>((r) => server.listen(0, HOST, () => r()));
  return track(server, (server.address() as net.AddressInfo).port);
}

/** Connects to 127.0.0.1:port; resolves once connected. */
export function connect(port: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, HOST);
    s.once('connect', () => resolve(s));
    s.once('error', reject);
  });
}

/** Collects `n` bytes from a socket (or rejects when it closes first / after `ms`). */
export function readBytes(s: net.Socket, n: number, ms = 10_000): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let have = 0;
    const timer = setTimeout(() => done(new Error(`timed out after ${ms} ms with ${have}/${n} bytes`)), ms);
    const onData = (d: Buffer) => {
      chunks.push(d);
      have += d.length;
      if (have >= n) done();
    };
    const onClose = () => done(new Error(`closed after ${have}/${n} bytes`));
    function done(err?: Error) {
      clearTimeout(timer);
      s.off('data', onData);
      s.off('close', onClose);
      if (err) reject(err);
      else resolve(Buffer.concat(chunks));
    }
    s.on('data', onData);
    s.on('close', onClose);
  });
}

/** Reads one `\n`-terminated line. */
export async function readLine(s: net.Socket, ms = 5000): Promise<string> {
  return new Promise((resolve, reject) => {
    let buf = '';
    const timer = setTimeout(() => finish(new Error(`no line within ${ms} ms (got ${JSON.stringify(buf)})`)), ms);
    const onData = (d: Buffer) => {
      buf += d.toString();
      if (buf.includes('\n')) finish();
    };
    const onClose = () => finish(new Error(`closed before a line (got ${JSON.stringify(buf)})`));
    function finish(err?: Error) {
      clearTimeout(timer);
      s.off('data', onData);
      s.off('close', onClose);
      if (err) reject(err);
      else {
        const i = buf.indexOf('\n');
        const rest = buf.slice(i + 1);
        if (rest) s.unshift(Buffer.from(rest));
        resolve(buf.slice(0, i));
      }
    }
    s.on('data', onData);
    s.on('close', onClose);
  });
}

/** Resolves when the socket closes (draining unread data, as 'end' waits for it); rejects after `ms`. */
export function closed(s: net.Socket, ms = 5000): Promise<void> {
  if (s.destroyed && s.closed) return Promise.resolve();
  if (s.listenerCount('data') === 0) s.resume();
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`socket still open after ${ms} ms`)), ms);
    s.once('close', () => {
      clearTimeout(timer);
      resolve();
    });
    s.on('error', () => {});
  });
}

/** Polls `cond` every 10 ms until true; rejects after `ms` with `what`. */
export async function waitFor(cond: () => boolean | Promise<boolean>, ms = 5000, what = 'condition'): Promise<void> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (await cond()) return;
    await new Promise((r) => setTimeout(r, 10));
  }
  throw new Error(`timed out after ${ms} ms waiting for ${what}`);
}

/** Sends one HTTP/1.1 request over a fresh TCP connection; returns the response body. */
export async function httpGet(port: number, host: string, path = '/', headers: Record<string, string> = {}): Promise<string> {
  const s = await connect(port);
  const extra = Object.entries(headers).map(([k, v]) => `${k}: ${v}\r\n`).join('');
  s.write(`GET ${path} HTTP/1.1\r\nHost: ${host}\r\n${extra}Connection: close\r\n\r\n`);
  const chunks: Buffer[] = [];
  s.on('data', (d) => chunks.push(d));
  await closed(s);
  const text = Buffer.concat(chunks).toString();
  const i = text.indexOf('\r\n\r\n');
  if (i < 0) throw new Error(`no HTTP response (got ${JSON.stringify(text)})`);
  return text.slice(i + 4);
}

export function sha256(b: Buffer): string {
  return crypto.createHash('sha256').update(b).digest('hex');
}

/** Reads a request (or any stream) to its end: its length and SHA-256, without keeping it. */
export function digestBody(stream: NodeJS.ReadableStream): Promise<{ bytes: number; sha: string }> {
  return new Promise((resolve, reject) => {
    const hash = crypto.createHash('sha256');
    let bytes = 0;
    stream.on('data', (d: Buffer) => {
      hash.update(d);
      bytes += d.length;
    });
    stream.on('end', () => resolve({ bytes, sha: hash.digest('hex') }));
    stream.on('error', reject);
  });
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Route shorthand: forward `ports` to 127.0.0.1:`port`. */
export function forward(name: string, ports: any, port: number | 'preserve', extra: Record<string, any> = {}) {
  const { match, action, ...rest } = extra;
  return {
    name,
    match: { ports, ...(match || {}) },
    action: { type: 'forward' as const, target: { host: HOST, port }, ...(action || {}) },
    ...rest,
  };
}

/** A backend (`httpNameServer('b')`), a free port, a certificate for `domain`, and a route
 * `name` that terminates TLS for `domain` on that port and forwards to the backend. */
export async function terminatingSetup(domain: string, name: string) {
  const cert = makeCert(domain);
  const backend = await httpNameServer('b');
  const port = await freePort();
  const route = forward(name, port, backend.port, { match: { domains: domain }, action: { tls: { mode: 'terminate', certificate: cert } } });
  return { cert, backend, port, route };
}

export interface H2Answer {
  head: http2.IncomingHttpHeaders;
  body: Buffer;
  trailers: http2.IncomingHttpHeaders;
}

/** One HTTP/2 request on `session`, with its response head, whole body and trailers. */
export function h2Ask(session: http2.ClientHttp2Session, headers: http2.OutgoingHttpHeaders, body?: string | Buffer): Promise<H2Answer> {
  return new Promise((resolve, reject) => {
    const st = session.request(headers);
    const parts: Buffer[] = [];
    let head: http2.IncomingHttpHeaders = {};
    let trailers: http2.IncomingHttpHeaders = {};
    st.on('response', (hd) => (head = hd));
    st.on('trailers', (t) => (trailers = t));
    st.on('data', (d) => parts.push(d));
    st.on('end', () => resolve({ head, body: Buffer.concat(parts), trailers }));
    st.on('error', reject);
    st.end(body);
  });
}
