import { tap, expect } from '@git.zone/tstest/tapbundle';
import * as http from 'node:http';
import * as https from 'node:https';
import * as http2 from 'node:http2';
import * as tls from 'node:tls';
import * as net from 'node:net';
import * as crypto from 'node:crypto';
import { SmartProxy } from '../index.js';
import * as h from './helpers.js';

// TLS terminated by the proxy with the route's certificate, HTTP/1.1 and HTTP/2 from clients,
// plain HTTP/1.1 (or TLS again) to backends.
let certA: h.Cert, certB: h.Cert, certW: h.Cert;
let backend: http.Server, backendPort: number;
let tlsBackend: https.Server, tlsBackendPort: number;
let port: number;
let proxy: SmartProxy;

function infoServer(name: string) {
  return (req: http.IncomingMessage, res: http.ServerResponse) => {
    res.setHeader('content-type', 'application/json');
    res.setHeader('x-backend', name);
    res.end(JSON.stringify({ name, method: req.method, url: req.url, headers: req.headers, httpVersion: req.httpVersion }));
  };
}

function get(opts: { servername: string; path?: string; agent?: https.Agent; port?: number }): Promise<{ status: number; body: any; cert: tls.PeerCertificate; headers: http.IncomingHttpHeaders }> {
  return new Promise((resolve, reject) => {
    const req = https.request(
      { host: '127.0.0.1', port: opts.port ?? port, path: opts.path ?? '/', servername: opts.servername, headers: { host: opts.servername }, rejectUnauthorized: false, agent: opts.agent ?? false },
      (res) => {
        const cert = (res.socket as tls.TLSSocket).getPeerCertificate();
        let data = '';
        res.on('data', (d) => (data += d));
        res.on('end', () => {
          let body: any = data;
          try {
            body = JSON.parse(data);
          } catch {}
          resolve({ status: res.statusCode!, body, cert, headers: res.headers });
        });
      },
    );
    req.on('error', reject);
    req.end();
  });
}

tap.test('setup: certificates, backends, terminating routes', async () => {
  certA = h.makeCert('a.example.com');
  certB = h.makeCert('b.example.com');
  certW = h.makeCert('wild.example.net', ['*.example.net']);
  backend = http.createServer(infoServer('plain'));
  await new Promise<void>((r) => backend.listen(0, '127.0.0.1', () => r()));
  backendPort = (backend.address() as net.AddressInfo).port;
  const backendCert = h.makeCert('backend.internal');
  tlsBackend = https.createServer({ key: backendCert.key, cert: backendCert.cert }, infoServer('tls-backend'));
  await new Promise<void>((r) => tlsBackend.listen(0, '127.0.0.1', () => r()));
  tlsBackendPort = (tlsBackend.address() as net.AddressInfo).port;
  port = await h.freePort();
  const term = (name: string, domains: string, cert: h.Cert, extra: any = {}) => ({
    name,
    match: { ports: port, domains },
    action: { type: 'forward' as const, target: { host: '127.0.0.1', port: backendPort }, tls: { mode: 'terminate' as const, certificate: { key: cert.key, cert: cert.cert } }, ...extra },
  });
  proxy = new SmartProxy({
    routes: [
      term('a', 'a.example.com', certA),
      term('b', 'b.example.com', certB),
      term('w', '*.example.net', certW),
      {
        name: 'reencrypt',
        match: { ports: port, domains: 're.example.com' },
        action: { type: 'forward', target: { host: '127.0.0.1', port: tlsBackendPort }, tls: { mode: 'terminate-and-reencrypt', certificate: { key: certA.key, cert: certA.cert } } },
      },
    ],
  });
  await proxy.start();
});

tap.test('each domain gets its own certificate and reaches the backend over HTTP/1.1', async () => {
  const a = await get({ servername: 'a.example.com', path: '/x?y=1' });
  expect(a.status).toEqual(200);
  expect(a.cert.subject.CN).toEqual('a.example.com');
  expect(a.body.name).toEqual('plain');
  expect(a.body.url).toEqual('/x?y=1');
  expect(a.body.headers.host).toEqual('a.example.com');
  expect(a.body.headers['x-forwarded-proto']).toEqual('https');
  expect(a.body.headers['x-forwarded-for']).toEqual('127.0.0.1');
  const b = await get({ servername: 'b.example.com' });
  expect(b.cert.subject.CN).toEqual('b.example.com');
});

tap.test('a wildcard certificate serves subdomains', async () => {
  const r = await get({ servername: 'deep.sub.example.net' });
  expect(r.status).toEqual(200);
  expect(r.cert.subject.CN).toEqual('wild.example.net');
});

tap.test('large bodies stream both ways over TLS on one keep-alive connection; pipelined requests over TLS answered in order', async () => {
  const big = http.createServer((req, res) => {
    if (req.url === '/upload') {
      h.digestBody(req).then((d) => res.end(JSON.stringify(d)));
      return;
    }
    if (req.url === '/download') {
      const block = Buffer.alloc(65536, 7);
      let i = 0;
      const pump = () => {
        while (i < 128) {
          i++;
          if (!res.write(block)) return res.once('drain', pump);
        }
        res.end();
      };
      pump();
      return;
    }
    res.end(req.url);
  });
  await new Promise<void>((r) => big.listen(0, '127.0.0.1', () => r()));
  const p2 = await h.freePort();
  const px = new SmartProxy({
    routes: [{ name: 'big', match: { ports: p2, domains: 'a.example.com' }, action: { type: 'forward', target: { host: '127.0.0.1', port: (big.address() as net.AddressInfo).port }, tls: { mode: 'terminate', certificate: { key: certA.key, cert: certA.cert } } } }],
  });
  await px.start();
  const agent = new https.Agent({ keepAlive: true, maxSockets: 1 });
  const base = { host: '127.0.0.1', port: p2, servername: 'a.example.com', headers: { host: 'a.example.com' }, rejectUnauthorized: false, agent };
  // 8 MiB up, chunked (no Content-Length), hashed on both ends.
  const sent = crypto.createHash('sha256');
  const up = await new Promise<any>((resolve, reject) => {
    const req = https.request({ ...base, method: 'POST', path: '/upload' }, (res) => {
      let t = '';
      res.on('data', (d) => (t += d));
      res.on('end', () => resolve(JSON.parse(t)));
    });
    req.on('error', reject);
    for (let i = 0; i < 128; i++) {
      const b = crypto.randomBytes(65536);
      sent.update(b);
      req.write(b);
    }
    req.end();
  });
  expect(up.bytes).toEqual(8 * 1024 * 1024);
  expect(up.sha).toEqual(sent.digest('hex'));
  // 8 MiB down on the same connection.
  const down = await new Promise<Buffer>((resolve, reject) => {
    https
      .get({ ...base, path: '/download' }, (res) => {
        const parts: Buffer[] = [];
        res.on('data', (d) => parts.push(d));
        res.on('end', () => resolve(Buffer.concat(parts)));
      })
      .on('error', reject);
  });
  expect(down.equals(Buffer.alloc(8 * 1024 * 1024, 7))).toEqual(true);
  // Two requests in one TLS write.
  const s = tls.connect({ host: '127.0.0.1', port: p2, servername: 'a.example.com', rejectUnauthorized: false });
  s.on('error', () => {});
  await new Promise((r) => s.once('secureConnect', r));
  let text = '';
  s.on('data', (d) => (text += d));
  s.write('GET /one HTTP/1.1\r\nHost: a.example.com\r\n\r\nGET /two HTTP/1.1\r\nHost: a.example.com\r\n\r\n');
  await h.waitFor(() => text.includes('/two'), 5000, 'both responses');
  expect(text.indexOf('/one')).toBeLessThan(text.indexOf('/two'));
  expect(text.match(/HTTP\/1\.1 200/g)?.length).toEqual(2);
  s.destroy();
  agent.destroy();
  await px.stop();
  await new Promise((r) => big.close(r));
});

tap.test('unknown SNI and missing SNI get a TLS alert, never a wrong certificate', async () => {
  const attempt = (servername?: string) =>
    new Promise<string>((resolve) => {
      const s = tls.connect({ host: '127.0.0.1', port, servername, rejectUnauthorized: false }, () => {
        resolve(`connected:${s.getPeerCertificate().subject?.CN}`);
        s.destroy();
      });
      s.on('error', (e: any) => resolve(`error:${e.code}`));
    });
  expect(await attempt('nobody.example.org')).toEqual('error:ERR_SSL_TLSV1_UNRECOGNIZED_NAME');
  expect(await attempt(undefined)).toEqual('error:ERR_SSL_SSLV3_ALERT_HANDSHAKE_FAILURE');
});

tap.test('HTTP/2 clients are served (ALPN h2) and backends still get HTTP/1.1', async () => {
  const client = http2.connect(`https://127.0.0.1:${port}`, { servername: 'a.example.com', rejectUnauthorized: false });
  const ask = (path: string) =>
    new Promise<any>((resolve, reject) => {
      const req = client.request({ ':path': path, ':authority': 'a.example.com' });
      let data = '';
      req.on('data', (d) => (data += d));
      req.on('end', () => resolve(JSON.parse(data)));
      req.on('error', reject);
      req.end();
    });
  const [one, two] = await Promise.all([ask('/h2/one'), ask('/h2/two')]);
  expect(one.url).toEqual('/h2/one');
  expect(two.url).toEqual('/h2/two');
  expect(one.httpVersion).toEqual('1.1');
  expect(one.headers.host).toEqual('a.example.com');
  expect((client.socket as tls.TLSSocket).alpnProtocol).toEqual('h2');
  client.close();
});

tap.test('terminate-and-reencrypt reaches an HTTPS backend', async () => {
  const r = await get({ servername: 're.example.com', path: '/secure' });
  expect(r.status).toEqual(200);
  expect(r.body.name).toEqual('tls-backend');
  expect(r.body.url).toEqual('/secure');
});

tap.test('with rejectUnauthorized the backend certificate is verified (502 when untrusted)', async () => {
  const vport = await h.freePort();
  const vproxy = new SmartProxy({
    routes: [
      {
        name: 'verify',
        match: { ports: vport, domains: 'v.example.com' },
        action: {
          type: 'forward',
          target: { host: '127.0.0.1', port: tlsBackendPort },
          tls: { mode: 'terminate-and-reencrypt', certificate: { key: certA.key, cert: certA.cert } },
          options: { rejectUnauthorized: true },
        },
      },
    ],
  });
  await vproxy.start();
  const { status } = await get({ servername: 'v.example.com', port: vport });
  expect(status).toEqual(502);
  await vproxy.stop();
});

tap.test('TLS session resumption works', async () => {
  let session: Buffer | undefined;
  const first = await new Promise<boolean>((resolve, reject) => {
    const s = tls.connect({ host: '127.0.0.1', port, servername: 'a.example.com', rejectUnauthorized: false, maxVersion: 'TLSv1.2' }, () => {
      resolve(s.isSessionReused());
    });
    s.on('session', (sess) => {
      session = sess;
      s.end();
    });
    s.on('error', reject);
  });
  expect(first).toBeFalse();
  await h.waitFor(() => session !== undefined, 3000, 'a session');
  const resumed = await new Promise<boolean>((resolve, reject) => {
    const s = tls.connect({ host: '127.0.0.1', port, servername: 'a.example.com', rejectUnauthorized: false, session, maxVersion: 'TLSv1.2' }, () => {
      resolve(s.isSessionReused());
      s.end();
    });
    s.on('error', reject);
  });
  expect(resumed).toBeTrue();
});

tap.test('invalid certificates are rejected at start() with the route named', async () => {
  const bad = new SmartProxy({
    routes: [
      { name: 'mismatch', match: { ports: 1 }, action: { type: 'forward', target: { host: 'x', port: 1 }, tls: { mode: 'terminate', certificate: { key: certB.key, cert: certA.cert } } } },
    ],
  });
  const err = await bad.start().then(() => null, (e) => e);
  expect(err.code).toEqual('ERR_INVALID_CONFIG');
  expect(err.message).toMatch(/^route "mismatch" \(index 0\): action\.tls\.certificate: the key does not match the certificate/);
  const garbage = new SmartProxy({
    routes: [{ name: 'garbage', match: { ports: 1 }, action: { type: 'forward', target: { host: 'x', port: 1 }, tls: { mode: 'terminate', certificate: { key: 'junk', cert: 'junk' } } } }],
  });
  const err2 = await garbage.start().then(() => null, (e) => e);
  expect(err2.message).toMatch(/^route "garbage" \(index 0\): action\.tls\.certificate: /);
});

tap.test('updateRoutes swaps certificates for new connections; an open keep-alive connection keeps working', async () => {
  const agent = new https.Agent({ keepAlive: true, maxSockets: 1 });
  const before = await get({ servername: 'a.example.com', agent });
  expect(before.cert.subject.CN).toEqual('a.example.com');
  const certA2 = h.makeCert('a.example.com', ['a.example.com']);
  const routes = proxy.settings.routes.map((r) =>
    r.name === 'a' ? { ...r, action: { ...r.action, tls: { mode: 'terminate' as const, certificate: { key: certA2.key, cert: certA2.cert } } } } : r,
  );
  await proxy.updateRoutes(routes);
  // The kept-alive connection still answers (same TLS session, same certificate).
  const same = await get({ servername: 'a.example.com', agent });
  expect(same.status).toEqual(200);
  expect(same.cert.fingerprint256).toEqual(before.cert.fingerprint256);
  // A new connection sees the new certificate.
  const fresh = await get({ servername: 'a.example.com' });
  expect(fresh.cert.fingerprint256).not.toEqual(before.cert.fingerprint256);
  agent.destroy();
});


tap.test('useHttpProxy / httpProxyPort are accepted; termination stays in-process', async () => {
  const p = await h.freePort();
  const compat = new SmartProxy({
    useHttpProxy: [p],
    httpProxyPort: 8443,
    routes: [
      { name: 'compat', match: { ports: p, domains: 'a.example.com' }, action: { type: 'forward', target: { host: '127.0.0.1', port: backendPort }, tls: { mode: 'terminate', certificate: { key: certA.key, cert: certA.cert } } } },
    ],
  });
  await compat.start();
  expect(compat.getListeningPorts()).toEqual([p]);
  const { status } = await get({ servername: 'a.example.com', port: p });
  expect(status).toEqual(200);
  await compat.stop();
});

tap.test('teardown', async () => {
  await proxy.stop();
  await new Promise((r) => backend.close(r));
  await new Promise((r) => tlsBackend.close(r));
});

tap.start();
