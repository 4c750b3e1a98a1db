// certificate: 'auto' against a real ACME CA (Pebble): HTTP-01 issuance through a port 80 that
// a redirect route shares, TLS-ALPN-01 on the route's own port, DNS-01 for a wildcard through
// challtestsrv; the store (restart without an order, a corrupt entry replaced, a writer killed
// with SIGKILL, two proxies sharing one store, HTTP-01 behind a load balancer); renewal on demand
// and when due while an old connection keeps working; certProvisionFunction; status and events;
// a CA that cannot be reached; and the configuration errors.
import { tap, expect } from '@git.zone/tstest/tapbundle';
import * as dns from 'node:dns/promises';
import * as http from 'node:http';
import * as net from 'node:net';
import * as tls from 'node:tls';
import { fork } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SmartProxy, SocketHandlers } from '../index.js';
import * as h from './helpers.js';
import { startPebble, type Pebble } from './pebble.js';

let pebble: Pebble;
let acmePort: number;
let backend: http.Server;
let backendPort: number;
let store: string;

tap.test('setup: Pebble (with its DNS) and an HTTP backend', async () => {
  [acmePort] = await h.freePorts(1);
  pebble = await startPebble({ httpPort: acmePort });
  backend = http.createServer((req, res) => res.end(`backend ${req.headers.host}`));
  await new Promise<void>((r) => backend.listen(0, h.HOST, () => r()));
  backendPort = (backend.address() as net.AddressInfo).port;
  store = mkdtempSync(join(tmpdir(), 'spn-acme-store-'));
});

function acme(extra: Record<string, any> = {}) {
  return {
    email: 'ops@example.com',
    port: acmePort,
    directoryUrl: pebble.directoryUrl,
    directoryCa: pebble.directoryCa,
    certificateStore: store,
    ...extra,
  };
}

function autoRoute(name: string, port: number, domain: string) {
  return {
    name,
    match: { ports: port, domains: domain },
    action: { type: 'forward' as const, target: { host: h.HOST, port: backendPort }, tls: { mode: 'terminate' as const, certificate: 'auto' as const } },
  };
}

/** A TLS handshake naming `servername`: the served certificate (or the error code). */
function handshake(port: number, servername: string, ca?: string): Promise<{ cert?: tls.PeerCertificate; authorized?: boolean; error?: string; socket?: tls.TLSSocket }> {
  return new Promise((resolve) => {
    const s = tls.connect({ host: h.HOST, port, servername, ca, rejectUnauthorized: false });
    s.once('secureConnect', () => resolve({ cert: s.getPeerCertificate(true), authorized: s.authorized, socket: s }));
    s.once('error', (e: any) => resolve({ error: e.code || e.message }));
  });
}

function nextEvent(p: SmartProxy, name: string, ms = 60_000): Promise<any> {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`no ${name} within ${ms} ms`)), ms);
    p.once(name, (ev) => {
      clearTimeout(t);
      resolve(ev);
    });
  });
}

let firstSerial = '';

tap.test('HTTP-01: an auto route gets a Pebble certificate while a redirect route keeps port 80', async () => {
  const tlsPort = await h.freePort();
  const p = new SmartProxy({
    acme: acme(),
    routes: [
      autoRoute('app', tlsPort, 'a.test'),
      { name: 'redirect', match: { ports: acmePort }, action: { type: 'socket-handler', socketHandler: SocketHandlers.httpRedirect('https://{domain}{path}', 301) } },
    ],
  });
  const issued = nextEvent(p, 'certificate-issued');
  await p.start();
  // start() does not wait for the order; until the certificate exists, a.test gets an alert.
  const early = p.getCertificateStatus('app');
  expect(early!.status).toBeOneOf(['pending', 'valid']);
  const ev = await issued;
  expect(ev.routeName).toEqual('app');
  expect(ev.domain).toEqual('a.test');
  expect(ev.source).toEqual('acme');
  expect(ev.expiryDate).toBeInstanceOf(Date);
  const status = p.getCertificateStatus('app')!;
  expect(status.status).toEqual('valid');
  expect(status.source).toEqual('acme');
  expect(status.expiryDate!.getTime()).toBeGreaterThan(Date.now());
  // The served certificate names a.test and chains to Pebble's root.
  const root = await pebble.root();
  const r = await handshake(tlsPort, 'a.test', root);
  expect(r.error).toBeUndefined();
  expect(r.cert!.subjectaltname).toMatch(/DNS:a\.test/);
  expect(r.cert!.issuer.CN).toMatch(/Pebble Intermediate/);
  firstSerial = r.cert!.serialNumber;
  // And it carries requests.
  const body = await new Promise<string>((resolve, reject) => {
    r.socket!.write('GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n');
    let d = '';
    r.socket!.on('data', (x) => (d += x));
    r.socket!.on('end', () => resolve(d));
    r.socket!.on('error', reject);
  });
  expect(body).toMatch(/backend a\.test$/);
  // Port 80 kept redirecting meanwhile.
  const redirect = await new Promise<string>((resolve) => {
    http.get({ host: h.HOST, port: acmePort, path: '/x', headers: { host: 'a.test' } }, (res) => {
      res.resume();
      resolve(`${res.statusCode} ${res.headers.location}`);
    });
  });
  expect(redirect).toEqual('301 https://a.test/x');
  await p.stop();
});

tap.test('a restart with the same store serves the stored certificate at once, without an order', async () => {
  const tlsPort = await h.freePort();
  const p = new SmartProxy({ acme: acme(), routes: [autoRoute('app', tlsPort, 'a.test')] });
  let orders = 0;
  p.on('certificate-issued', () => orders++);
  await p.start();
  expect(p.getCertificateStatus('app')!.status).toEqual('valid');
  const r = await handshake(tlsPort, 'a.test');
  expect(r.cert!.serialNumber).toEqual(firstSerial);
  r.socket!.destroy();
  await h.sleep(300);
  expect(orders).toEqual(0);
  await p.stop();
});

tap.test('renewCertificate(): a new certificate for new handshakes, while an old connection keeps working', async () => {
  const tlsPort = await h.freePort();
  const p = new SmartProxy({ acme: acme(), routes: [autoRoute('app', tlsPort, 'a.test')] });
  await p.start();
  const old = await handshake(tlsPort, 'a.test');
  expect(old.cert!.serialNumber).toEqual(firstSerial);
  const renewed = nextEvent(p, 'certificate-renewed');
  await p.renewCertificate('app');
  expect((await renewed).routeName).toEqual('app');
  const fresh = await handshake(tlsPort, 'a.test');
  expect(fresh.cert!.serialNumber === firstSerial).toBeFalse();
  // The old connection still carries a request.
  const body = await new Promise<string>((resolve) => {
    old.socket!.write('GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n');
    let d = '';
    old.socket!.on('data', (x) => (d += x));
    old.socket!.on('end', () => resolve(d));
  });
  expect(body).toMatch(/backend a\.test$/);
  fresh.socket!.destroy();
  firstSerial = fresh.cert!.serialNumber;
  await p.stop();
});

tap.test('a corrupt store entry is treated as absent and replaced by a new order', async () => {
  writeFileSync(join(store, 'app', 'cert.pem'), 'not a certificate');
  const tlsPort = await h.freePort();
  const p = new SmartProxy({ acme: acme(), routes: [autoRoute('app', tlsPort, 'a.test')] });
  const issued = nextEvent(p, 'certificate-issued');
  await p.start();
  await issued;
  const r = await handshake(tlsPort, 'a.test');
  expect(r.cert!.serialNumber === firstSerial).toBeFalse();
  r.socket!.destroy();
  await p.stop();
});

tap.test('a process killed with SIGKILL while it writes the store leaves a loadable entry', async () => {
  const [port, writerAcme] = await h.freePorts(2);
  const certs = [h.makeCert('kill.test'), h.makeCert('kill.test'), h.makeCert('kill.test')];
  const serials = certs.map((c) => new X509Certificate(c.cert).serialNumber.toUpperCase());
  const dir = mkdtempSync(join(tmpdir(), 'spn-acme-kill-'));
  try {
    for (let round = 0; round < 10; round++) {
      const child = fork('test/fixtures/store-writer.ts', [JSON.stringify({ store: dir, port, acmePort: writerAcme, certs })], {
        execArgv: ['--import', 'tsx'],
        stdio: ['ignore', 'ignore', 'inherit', 'ipc'],
      });
      const exited = new Promise((r) => child.once('exit', r));
      // Killed after a few writes, at a moment that varies from round to round.
      const target = 2 + ((round * 7) % 11);
      await new Promise<void>((resolve, reject) => {
        const t = setTimeout(() => reject(new Error('the writer did not write')), 30_000);
        child.on('message', (m: any) => {
          if (m.writes >= target) {
            clearTimeout(t);
            setTimeout(() => resolve(), round % 5);
          }
        });
        child.once('exit', () => reject(new Error('the writer exited')));
      });
      child.kill('SIGKILL');
      await exited;
      // The store loads: the entry is served at start, with no new certificate asked for.
      const asked: string[] = [];
      const p = new SmartProxy({
        acme: acme({ certificateStore: dir }),
        certProvisionFunction: async (d: string) => {
          asked.push(d);
          throw new Error('the store should have had it');
        },
        certProvisionFallbackToAcme: false,
        routes: [autoRoute('killed', port, 'kill.test')],
      });
      await p.start();
      try {
        const status = p.getCertificateStatus('killed')!;
        expect(status.status).toEqual('valid');
        expect(status.source).toEqual('custom');
        const r = await handshake(port, 'kill.test');
        expect(serials).toContain(String(r.cert!.serialNumber).toUpperCase());
        r.socket!.destroy();
        expect(asked).toEqual([]);
      } finally {
        await p.stop();
      }
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

tap.test('two proxies sharing one store end up with the same certificate from one order', async () => {
  const [portA, portB, otherAcme] = await h.freePorts(3);
  const a = new SmartProxy({ acme: acme(), routes: [autoRoute('shared', portA, 'shared.test')] });
  const b = new SmartProxy({ acme: acme({ port: otherAcme }), routes: [autoRoute('shared', portB, 'shared.test')] });
  let orders = 0;
  a.on('certificate-issued', () => orders++);
  b.on('certificate-issued', () => orders++);
  const issued = nextEvent(a, 'certificate-issued');
  await a.start();
  await issued;
  await b.start();
  expect(b.getCertificateStatus('shared')!.status).toEqual('valid');
  const [ra, rb] = [await handshake(portA, 'shared.test'), await handshake(portB, 'shared.test')];
  expect(rb.cert!.serialNumber).toEqual(ra.cert!.serialNumber);
  ra.socket!.destroy();
  rb.socket!.destroy();
  expect(orders).toEqual(1);
  await a.stop();
  await b.stop();
});

tap.test('HTTP-01 behind a load balancer: the instance the CA reaches answers for the one that orders', async () => {
  // Pebble validates on acmePort, where a layer-4 balancer sends every connection to b; a takes
  // the store's lock and orders, so the CA's request reaches the instance that did not order.
  // (The balancer retries until b listens, as b starts after a.)
  const [portA, portB, acmeA, acmeB] = await h.freePorts(4);
  const lbSockets = new Set<net.Socket>();
  const lb = net.createServer((c) => {
    lbSockets.add(c);
    c.pause();
    const tryConnect = (left: number) => {
      const up = net.connect(acmeB, h.HOST);
      up.once('connect', () => {
        c.pipe(up).pipe(c);
        c.resume();
      });
      up.once('error', () => (left > 0 ? setTimeout(() => tryConnect(left - 1), 50) : c.destroy()));
    };
    tryConnect(200);
    c.on('error', () => {});
  });
  await new Promise<void>((r) => lb.listen(acmePort, h.HOST, () => r()));
  const a = new SmartProxy({ acme: acme({ port: acmeA }), routes: [autoRoute('behind-lb', portA, 'lb.test')] });
  const b = new SmartProxy({ acme: acme({ port: acmeB }), routes: [autoRoute('behind-lb', portB, 'lb.test')] });
  let orders = 0;
  a.on('certificate-issued', () => orders++);
  b.on('certificate-issued', () => orders++);
  try {
    const issued = nextEvent(a, 'certificate-issued');
    await a.start();
    const lock = join(store, '.acme', 'locks', 'behind-lb.lock');
    for (let i = 0; i < 200 && !existsSync(lock); i++) await h.sleep(25);
    expect(existsSync(lock)).toBeTrue();
    await b.start();
    const ev = await issued;
    expect(ev.routeName).toEqual('behind-lb');
    for (let i = 0; i < 200 && b.getCertificateStatus('behind-lb')?.status !== 'valid'; i++) await h.sleep(50);
    expect(b.getCertificateStatus('behind-lb')!.status).toEqual('valid');
    const [ra, rb] = [await handshake(portA, 'lb.test'), await handshake(portB, 'lb.test')];
    expect(rb.cert!.serialNumber).toEqual(ra.cert!.serialNumber);
    ra.socket!.destroy();
    rb.socket!.destroy();
    expect(orders).toEqual(1);
    // The published answer is gone once the order is done.
    expect(readdirSync(join(store, '.acme', 'challenges')).filter((f) => !f.startsWith('.'))).toEqual([]);
  } finally {
    await a.stop();
    await b.stop();
    lbSockets.forEach((c) => c.destroy());
    await new Promise((r) => lb.close(r));
  }
});

tap.test('updateRoutes: an added auto route is ordered, a removed one is no longer served, unchanged ones are not ordered again', async () => {
  const port = await h.freePort();
  const dir = mkdtempSync(join(tmpdir(), 'spn-acme-live-'));
  const p = new SmartProxy({ acme: acme({ certificateStore: dir }), routes: [autoRoute('live-a', port, 'live-a.test')] });
  const issued: string[] = [];
  p.on('certificate-issued', (ev) => issued.push(ev.routeName));
  try {
    let next = nextEvent(p, 'certificate-issued');
    await p.start();
    await next;
    const before = await handshake(port, 'live-a.test');
    before.socket!.destroy();
    next = nextEvent(p, 'certificate-issued');
    await p.updateRoutes([autoRoute('live-a', port, 'live-a.test'), autoRoute('live-b', port, 'live-b.test')]);
    expect((await next).routeName).toEqual('live-b');
    const [a, b] = [await handshake(port, 'live-a.test'), await handshake(port, 'live-b.test')];
    expect(a.cert!.serialNumber).toEqual(before.cert!.serialNumber);
    expect(b.cert!.subjectaltname).toEqual('DNS:live-b.test');
    a.socket!.destroy();
    b.socket!.destroy();
    await p.updateRoutes([autoRoute('live-b', port, 'live-b.test')]);
    const gone = await handshake(port, 'live-a.test');
    expect(gone.error).toBeTruthy();
    expect(p.getCertificateStatus('live-a')).toBeUndefined();
    const still = await handshake(port, 'live-b.test');
    expect(still.cert!.subjectaltname).toEqual('DNS:live-b.test');
    still.socket!.destroy();
    expect(issued).toEqual(['live-a', 'live-b']);
  } finally {
    await p.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});

tap.test('stop() while an order waits on a DNS-01 function that never settles: stops at once, and the proxy can start again', async () => {
  const port = await h.freePort();
  const dir = mkdtempSync(join(tmpdir(), 'spn-acme-stop-'));
  let called!: () => void;
  const setCalled = new Promise<void>((r) => (called = r));
  const p = new SmartProxy({
    acme: acme({
      certificateStore: dir,
      challenge: 'dns-01',
      dns01: { setRecord: () => (called(), new Promise(() => {})), removeRecord: async () => {} },
    }),
    routes: [autoRoute('hanging', port, 'hanging.test')],
  });
  const failed: any[] = [];
  p.on('certificate-failed', (ev) => failed.push(ev));
  try {
    await p.start();
    await setCalled;
    const t0 = Date.now();
    await p.stop();
    expect(Date.now() - t0).toBeLessThan(5000);
    // Stopped, not failed: no event after the stop, and a new start works.
    await h.sleep(200);
    expect(failed).toEqual([]);
    await p.start();
    expect(p.getListeningPorts()).toContain(port);
  } finally {
    await p.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});

tap.test('a CA that cannot be reached: status error with the reason, other routes served, provisionCertificate rejects', async () => {
  const [tlsPort, dead] = await h.freePorts(2);
  const cert = h.makeCert('static.test');
  const p = new SmartProxy({
    acme: acme({ directoryUrl: `https://127.0.0.1:${dead}/dir`, certificateStore: mkdtempSync(join(tmpdir(), 'spn-acme-dead-')) }),
    routes: [
      autoRoute('unlucky', tlsPort, 'b.test'),
      { name: 'static', match: { ports: tlsPort, domains: 'static.test' }, action: { type: 'forward', target: { host: h.HOST, port: backendPort }, tls: { mode: 'terminate', certificate: { key: cert.key, cert: cert.cert } } } },
    ],
  });
  const failed = nextEvent(p, 'certificate-failed', 30_000);
  await p.start();
  const ev = await failed;
  expect(ev.routeName).toEqual('unlucky');
  expect(typeof ev.error).toEqual('string');
  const s = p.getCertificateStatus('unlucky')!;
  expect(s.status).toEqual('error');
  expect(s.error!.length).toBeGreaterThan(0);
  // No certificate for b.test: an alert, never the static route's certificate.
  expect((await handshake(tlsPort, 'b.test')).error).toEqual('ERR_SSL_TLSV1_UNRECOGNIZED_NAME');
  const ok = await handshake(tlsPort, 'static.test');
  expect(ok.cert!.subject.CN).toEqual('static.test');
  ok.socket!.destroy();
  const st = p.getCertificateStatus('static')!;
  expect(st.source).toEqual('static');
  expect(st.status).toEqual('valid');
  const err: any = await p.provisionCertificate('unlucky').catch((e) => e);
  expect(err.code).toEqual('ERR_CERTIFICATE');
  const err2: any = await p.provisionCertificate('static').catch((e) => e);
  expect(err2.code).toEqual('ERR_INVALID_ARG');
  await p.stop();
});

tap.test('configuration errors name the route: no e-mail, a wildcard without DNS-01, unknown and unbuilt challenges', async () => {
  const port = await h.freePort();
  const refuse = async (opts: any, routes: any[]) => {
    const p = new SmartProxy({ ...opts, routes });
    return p.start().then(
      async () => {
        await p.stop();
        return { code: 'started', message: '' };
      },
      (e: any) => ({ code: e.code, message: e.message }),
    );
  };
  const noMail = await refuse({ acme: { port: acmePort } }, [autoRoute('nomail', port, 'x.test')]);
  expect(noMail.code).toEqual('ERR_INVALID_CONFIG');
  expect(noMail.message).toMatch(/route "nomail" \(index 0\).*e-mail/);
  const wild = await refuse({ acme: acme() }, [autoRoute('wild', port, '*.x.test')]);
  expect(wild.code).toEqual('ERR_INVALID_CONFIG');
  expect(wild.message).toMatch(/route "wild" \(index 0\).*DNS-01/);
  const unknown = await refuse({ acme: acme({ challenge: 'dns-99' }) }, [autoRoute('u', port, 'x.test')]);
  expect(unknown.code).toEqual('ERR_INVALID_CONFIG');
  expect(unknown.message).toMatch(/acme\.challenge: unknown challenge type "dns-99"/);
  const dns = await refuse({ acme: acme({ challenge: 'dns-01' }) }, [autoRoute('d', port, 'x.test')]);
  expect(dns.code).toEqual('ERR_INVALID_CONFIG');
  expect(dns.message).toMatch(/route "d" \(index 0\).*acme\.dns01/);
  // The route's own e-mail is enough.
  const own = new SmartProxy({ acme: { port: acmePort }, routes: [] });
  const withMail = { ...autoRoute('own', port, 'x.test') };
  (withMail.action.tls as any).acme = { email: 'me@example.com' };
  await own.updateRoutes([withMail]); // validated before start, against the proxy's options
  const bad: any = await own.updateRoutes([autoRoute('nomail', port, 'x.test')]).catch((e) => e);
  expect(bad.code).toEqual('ERR_INVALID_CONFIG');
});

tap.test('TLS-ALPN-01 with no HTTP port at all: validated on the route\'s own TLS port', async () => {
  const [tlsPort, unusedHttp] = await h.freePorts(2);
  const alpnPebble = await startPebble({ httpPort: unusedHttp, tlsPort });
  const alpnStore = mkdtempSync(join(tmpdir(), 'spn-acme-alpn-'));
  try {
    const p = new SmartProxy({
      acme: { email: 'ops@example.com', challenge: 'tls-alpn-01', port: unusedHttp, directoryUrl: alpnPebble.directoryUrl, directoryCa: alpnPebble.directoryCa, certificateStore: alpnStore },
      routes: [autoRoute('alpn', tlsPort, 'alpn.test')],
    });
    const issued = nextEvent(p, 'certificate-issued');
    await p.start();
    expect(p.getListeningPorts()).toEqual([tlsPort]); // no HTTP challenge port
    await issued;
    const r = await handshake(tlsPort, 'alpn.test', await alpnPebble.root());
    expect(r.cert!.subjectaltname).toMatch(/DNS:alpn\.test/);
    expect(r.cert!.issuer.CN).toMatch(/Pebble Intermediate/);
    r.socket!.destroy();
    await p.stop();
  } finally {
    await alpnPebble.close();
    rmSync(alpnStore, { recursive: true, force: true });
  }
});

tap.test('certProvisionFunction: a certificate object, \'http01\', and a throw with and without the ACME fallback', async () => {
  const port = await h.freePort();
  const custom = h.makeCert('custom.test');
  const run = async (fn: (domain: string) => Promise<any>, fallback?: boolean) => {
    const dir = mkdtempSync(join(tmpdir(), 'spn-acme-custom-'));
    const asked: string[] = [];
    const p = new SmartProxy({
      acme: acme({ certificateStore: dir }),
      certProvisionFunction: async (d: string) => (asked.push(d), fn(d)),
      ...(fallback === undefined ? {} : { certProvisionFallbackToAcme: fallback }),
      routes: [autoRoute('custom', port, 'custom.test')],
    });
    const outcome = Promise.race([nextEvent(p, 'certificate-issued', 30_000), nextEvent(p, 'certificate-failed', 30_000).then((e) => ({ failed: e }))]);
    await p.start();
    const ev: any = await outcome;
    const status = p.getCertificateStatus('custom')!;
    const served = ev.failed ? undefined : await handshake(port, 'custom.test');
    served?.socket?.destroy();
    await p.stop();
    rmSync(dir, { recursive: true, force: true });
    return { ev, status, served, asked };
  };
  // A certificate object: served as it is, source 'custom', no ACME order.
  const obj = await run(async (d) => ({ id: '1', domainName: d, created: Date.now(), privateKey: custom.key, publicKey: custom.cert, csr: '', validUntil: 0 }));
  expect(obj.asked).toEqual(['custom.test']);
  expect(obj.ev.source).toEqual('custom');
  expect(obj.status.source).toEqual('custom');
  expect(obj.served!.cert!.subject.CN).toEqual('custom.test');
  expect(obj.served!.cert!.issuer.CN).toEqual('custom.test'); // the self-signed one given, not Pebble's
  // 'http01': ACME.
  const viaAcme = await run(async () => 'http01');
  expect(viaAcme.ev.source).toEqual('acme');
  expect(viaAcme.served!.cert!.issuer.CN).toMatch(/Pebble Intermediate/);
  // A throw: ACME by default, an error without the fallback.
  const thrown = await run(async () => {
    throw new Error('no certificate here');
  });
  expect(thrown.ev.source).toEqual('acme');
  const strict = await run(async () => {
    throw new Error('no certificate here');
  }, false);
  expect(strict.ev.failed.error).toMatch(/certProvisionFunction failed: .*no certificate here/);
  expect(strict.status.status).toEqual('error');
});

tap.test('DNS-01 for a wildcard through acme.dns01: records really set in challtestsrv, removed after', async () => {
  const port = await h.freePort();
  const dir = mkdtempSync(join(tmpdir(), 'spn-acme-dns-'));
  const post = (path: string, body: object) =>
    new Promise<number>((resolve, reject) => {
      const req = http.request(`${pebble.dnsManagement}${path}`, { method: 'POST' }, (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode!));
      });
      req.on('error', reject);
      req.end(JSON.stringify(body));
    });
  const calls: string[] = [];
  const resolver = new dns.Resolver();
  resolver.setServers([pebble.dnsServer]);
  const txt = (name: string) => resolver.resolveTxt(name).then((r) => r.flat(), () => [] as string[]);
  let seenWhileSet: string[] = [];
  const p = new SmartProxy({
    acme: acme({
      certificateStore: dir,
      challenge: 'dns-01',
      dns01: {
        setRecord: async (name: string, value: string) => {
          calls.push(`set ${name}`);
          expect(await post('/set-txt', { host: `${name}.`, value })).toEqual(200);
          seenWhileSet = await txt(name);
        },
        removeRecord: async (name: string, value: string) => {
          calls.push(`remove ${name}`);
          await post('/clear-txt', { host: `${name}.`, value });
        },
      },
    }),
    routes: [autoRoute('wild', port, '*.wild.test')],
  });
  const issued = nextEvent(p, 'certificate-issued');
  await p.start();
  await issued;
  expect(calls).toEqual(['set _acme-challenge.wild.test', 'remove _acme-challenge.wild.test']);
  expect(seenWhileSet.length).toEqual(1);
  expect(await txt('_acme-challenge.wild.test')).toEqual([]);
  const r = await handshake(port, 'deep.wild.test');
  expect(r.cert!.subjectaltname).toMatch(/DNS:\*\.wild\.test/);
  expect(r.cert!.issuer.CN).toMatch(/Pebble Intermediate/);
  r.socket!.destroy();
  await p.stop();
  rmSync(dir, { recursive: true, force: true });
});

tap.test('renewal when due: a short-lived certificate is renewed by the scheduler, an old connection keeps working', async () => {
  const [tlsPort, httpPort] = await h.freePorts(2);
  const shortPebble = await startPebble({ httpPort, validitySeconds: 15 });
  const dir = mkdtempSync(join(tmpdir(), 'spn-acme-renew-'));
  try {
    const p = new SmartProxy({
      acme: { email: 'ops@example.com', port: httpPort, directoryUrl: shortPebble.directoryUrl, directoryCa: shortPebble.directoryCa, certificateStore: dir, renewCheckIntervalHours: 0.0005 },
      routes: [autoRoute('short', tlsPort, 'short.test')],
    });
    const issued = nextEvent(p, 'certificate-issued');
    await p.start();
    await issued;
    const old = await handshake(tlsPort, 'short.test');
    // 15 s of life is less than the 30-day threshold: renewed with a third of it left (~5 s).
    const renewed = await nextEvent(p, 'certificate-renewed', 20_000);
    expect(renewed.routeName).toEqual('short');
    const fresh = await handshake(tlsPort, 'short.test');
    expect(fresh.cert!.serialNumber === old.cert!.serialNumber).toBeFalse();
    fresh.socket!.destroy();
    const body = await new Promise<string>((resolve) => {
      old.socket!.write('GET / HTTP/1.1\r\nHost: short.test\r\nConnection: close\r\n\r\n');
      let d = '';
      old.socket!.on('data', (x) => (d += x));
      old.socket!.on('end', () => resolve(d));
    });
    expect(body).toMatch(/backend short\.test$/);
    await p.stop();
  } finally {
    await shortPebble.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

tap.test('teardown', async () => {
  await pebble.close();
  await new Promise((r) => backend.close(r));
  rmSync(store, { recursive: true, force: true });
});

export default tap.start();
