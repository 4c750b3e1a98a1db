// The PROXY protocol, v1 and v2, in and out: the real client behind a trusted load balancer
// (proxyIPs) in every place that uses the client address; headers in pieces, malformed,
// oversize, missing, and from untrusted sources; sendProxyProtocol on every kind of route (TCP,
// TLS passthrough, plain HTTP and TLS termination with a backend connection per request,
// HTTP/2 clients, WebSocket); a chain of two proxies; HAProxy in front and nginx behind.
import { tap, expect } from '@git.zone/tstest/tapbundle';
import * as http from 'node:http';
import * as net from 'node:net';
import * as tls from 'node:tls';
import { SmartProxy } from '../index.js';
import * as h from './helpers.js';
import { startHaproxy, startNginx } from './peers.js';

const SIG = Buffer.from('\r\n\r\n\0\r\nQUIT\n', 'latin1');

/** A v2 header; `src`/`dst` as `ip:port` (IPv6 in brackets), or LOCAL when `local`. */
function v2(src: string, dst: string, opts: { local?: boolean; tlvs?: [number, Buffer][] } = {}): Buffer {
  const parse = (a: string) => {
    const m = /^\[?([^\]]+)\]?:(\d+)$/.exec(a)!;
    return { ip: m[1], port: Number(m[2]) };
  };
  const [s, d] = [parse(src), parse(dst)];
  const six = net.isIPv6(s.ip);
  const ipBytes = (ip: string) => {
    if (!six) return Buffer.from(ip.split('.').map(Number));
    const full = new net.SocketAddress({ address: ip, family: 'ipv6' }).address;
    const parts = full.split('::');
    const head = parts[0] ? parts[0].split(':') : [];
    const tail = parts.length > 1 && parts[1] ? parts[1].split(':') : [];
    const groups = [...head, ...Array(8 - head.length - tail.length).fill('0'), ...tail];
    return Buffer.from(groups.flatMap((g) => [parseInt(g, 16) >> 8, parseInt(g, 16) & 255]));
  };
  const ports = Buffer.alloc(4);
  ports.writeUInt16BE(s.port, 0);
  ports.writeUInt16BE(d.port, 2);
  const tlvs = Buffer.concat((opts.tlvs ?? []).map(([t, v]) => Buffer.concat([Buffer.from([t, v.length >> 8, v.length & 255]), v])));
  const body = Buffer.concat([ipBytes(s.ip), ipBytes(d.ip), ports, tlvs]);
  const len = Buffer.alloc(2);
  len.writeUInt16BE(body.length);
  return Buffer.concat([SIG, Buffer.from([opts.local ? 0x20 : 0x21, six ? 0x21 : 0x11]), len, body]);
}

const v1 = (src: string, dst: string, sport: number, dport: number) =>
  Buffer.from(`PROXY ${net.isIPv6(src) ? 'TCP6' : 'TCP4'} ${src} ${dst} ${sport} ${dport}\r\n`);

/** Connects, writes `chunks` (with `gapMs` between them), and collects everything until close. */
async function exchange(port: number, chunks: Buffer[], gapMs = 0, ms = 5000): Promise<{ text: string; socket: net.Socket }> {
  const s = await h.connect(port);
  s.on('error', () => {});
  const got: Buffer[] = [];
  s.on('data', (d) => got.push(d));
  for (const c of chunks) {
    s.write(c);
    if (gapMs) await h.sleep(gapMs);
  }
  await h.closed(s, ms);
  return { text: Buffer.concat(got).toString('latin1'), socket: s };
}

/** A socket-handler route that reports what it sees of the client, then closes. */
function reporter(name: string, port: number, extra: Record<string, any> = {}) {
  return {
    name,
    match: { ports: port, ...(extra.match ?? {}) },
    action: {
      type: 'socket-handler' as const,
      socketHandler: (socket: net.Socket, context: any) => {
        socket.end(`${name} ${socket.remoteAddress} ${socket.remotePort} ${socket.remoteFamily} ${context.clientIp} ${context.clientPort} ${context.proxyProtocol?.version ?? '-'}\n`);
      },
    },
    ...(extra.security ? { security: extra.security } : {}),
  };
}

let proxy: SmartProxy;
let port: number;

tap.test('setup: a proxy that trusts 127.0.0.1 to send PROXY headers', async () => {
  port = await h.freePort();
  proxy = new SmartProxy({ proxyIPs: ['127.0.0.1'], initialDataTimeout: 500, maxConnectionsPerIP: 0, connectionRateLimitPerMinute: 0, routes: [reporter('r', port)] });
  await proxy.start();
});

tap.test('v1 in: TCP4, TCP6 and UNKNOWN; the socket handler sees the real client', async () => {
  let r = await exchange(port, [v1('203.0.113.7', '198.51.100.1', 4242, 443)]);
  expect(r.text).toEqual('r 203.0.113.7 4242 IPv4 203.0.113.7 4242 v1\n');
  r = await exchange(port, [v1('2001:db8::5', '2001:db8::1', 5555, 443)]);
  expect(r.text).toEqual('r 2001:db8::5 5555 IPv6 2001:db8::5 5555 v1\n');
  r = await exchange(port, [Buffer.from('PROXY UNKNOWN\r\n')]);
  expect(r.text).toMatch(/^r 127\.0\.0\.1 \d+ IPv4 127\.0\.0\.1 \d+ v1\n$/);
});

tap.test('v2 in: TCP4 with TLVs, TCP6, LOCAL (the balancer\'s own connection)', async () => {
  const tlvs: [number, Buffer][] = [[0x01, Buffer.from('h2')], [0x02, Buffer.from('a.test')], [0x05, Buffer.from([1, 2, 3])], [0xe1, Buffer.from('custom')]];
  let r = await exchange(port, [v2('203.0.113.8:1000', '198.51.100.1:443', { tlvs })]);
  expect(r.text).toEqual('r 203.0.113.8 1000 IPv4 203.0.113.8 1000 v2\n');
  // The TLVs reach the route context: the meaningful ones decoded, all of them kept.
  const seen: any[] = [];
  const p2port = await h.freePort();
  const p2 = new SmartProxy({ proxyIPs: ['127.0.0.1'], routes: [{ name: 'tlv', match: { ports: p2port }, action: { type: 'socket-handler', socketHandler: (s: net.Socket, c: any) => (seen.push(c.proxyProtocol), s.end()) } }] });
  await p2.start();
  await exchange(p2port, [v2('203.0.113.8:1000', '198.51.100.1:443', { tlvs })]);
  await p2.stop();
  expect(seen).toEqual([{ version: 'v2', alpn: 'h2', authority: 'a.test', uniqueId: '010203', tlvs: [{ type: 1, value: '6832' }, { type: 2, value: '612e74657374' }, { type: 5, value: '010203' }, { type: 0xe1, value: Buffer.from('custom').toString('hex') }] }]);
  r = await exchange(port, [v2('[2001:db8::9]:2000', '[2001:db8::1]:443')]);
  expect(r.text).toEqual('r 2001:db8::9 2000 IPv6 2001:db8::9 2000 v2\n');
  r = await exchange(port, [v2('203.0.113.8:1000', '198.51.100.1:443', { local: true })]);
  expect(r.text).toMatch(/^r 127\.0\.0\.1 \d+ IPv4 127\.0\.0\.1 \d+ v2\n$/);
});

tap.test('a header that arrives byte by byte, followed by the client\'s bytes', async () => {
  const seen: string[] = [];
  const p2port = await h.freePort();
  const p2 = new SmartProxy({
    proxyIPs: ['127.0.0.1'],
    routes: [{ name: 'echo', match: { ports: p2port }, action: { type: 'socket-handler', socketHandler: (s: net.Socket, c: any) => s.once('data', (d) => (seen.push(`${c.clientIp} ${d}`), s.end('ok'))) } }],
  });
  await p2.start();
  try {
    for (const header of [v1('203.0.113.9', '198.51.100.1', 1, 2), v2('203.0.113.10:3', '198.51.100.1:4')]) {
      const bytes = [...header].map((b) => Buffer.from([b]));
      const r = await exchange(p2port, [...bytes, Buffer.from('hello')], 2);
      expect(r.text).toEqual('ok');
    }
    expect(seen).toEqual(['203.0.113.9 hello', '203.0.113.10 hello']);
  } finally {
    await p2.stop();
  }
});

tap.test('malformed, oversize and missing headers close the connection; nothing reaches a route', async () => {
  const before = proxy.getStatistics().terminationStats?.incoming ?? {};
  const bad = [
    Buffer.from('PROXY TCP4 203.0.113.7 198.51.100.1 99999 443\r\n'),
    Buffer.from('PROXY TCP4 1.2.3.4\r\n'),
    Buffer.concat([Buffer.from('PROXY UNKNOWN '), Buffer.alloc(120, 'x')]),
    Buffer.concat([SIG, Buffer.from([0x21, 0x11, 0xff, 0xff])]),
    Buffer.concat([SIG, Buffer.from([0x31, 0x11, 0, 0])]),
    Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'),
  ];
  for (const b of bad) {
    const r = await exchange(port, [b]);
    expect(r.text).toEqual('');
  }
  // Missing: a trusted source that sends nothing is closed after initialDataTimeout (500 ms).
  const t0 = Date.now();
  const r = await exchange(port, [], 0, 5000);
  expect(r.text).toEqual('');
  expect(Date.now() - t0).toBeGreaterThanOrEqual(400);
  const counted = () => {
    const after = proxy.getStatistics().terminationStats?.incoming ?? {};
    return [(after.proxy_protocol_invalid ?? 0) - (before.proxy_protocol_invalid ?? 0), (after.proxy_protocol_timeout ?? 0) - (before.proxy_protocol_timeout ?? 0)];
  };
  await h.waitFor(() => counted()[0] === bad.length && counted()[1] === 1, 2000, 'the refusals to be counted').catch(() => {
    throw new Error(`counted ${JSON.stringify(counted())}, stats ${JSON.stringify(proxy.getStatistics().terminationStats)}`);
  });
});

tap.test('deferAccept: on with acceptProxyProtocol, a connection is taken when its first bytes arrive', async () => {
  // A server-first socket handler, and a client (untrusted here) that waits for it to speak:
  // with the deferral the kernel hands the connection over after about a second (one SYN-ACK
  // retransmission), without it at once. Both ports answer a client that speaks first at once.
  const speaksFirst = (p: number) => [{ name: 'banner', match: { ports: p }, action: { type: 'socket-handler' as const, socketHandler: (s: net.Socket) => s.end('220 hi\n') } }];
  const firstByte = async (p: number, send?: Buffer) => {
    const t0 = Date.now();
    const r = await exchange(p, send ? [send] : []);
    expect(r.text).toEqual('220 hi\n');
    return Date.now() - t0;
  };
  const [dPort, nPort] = await h.freePorts(2);
  const deferred = new SmartProxy({ proxyIPs: ['127.0.0.2'], routes: speaksFirst(dPort) });
  const prompt = new SmartProxy({ proxyIPs: ['127.0.0.2'], deferAccept: false, routes: speaksFirst(nPort) });
  await deferred.start();
  await prompt.start();
  try {
    await firstByte(nPort); // warms the socket-handler bridge
    expect(await firstByte(nPort)).toBeLessThan(900);
    expect(await firstByte(dPort, Buffer.from('EHLO x\r\n'))).toBeLessThan(900);
    expect(await firstByte(dPort)).toBeGreaterThanOrEqual(900);
  } finally {
    await deferred.stop();
    await prompt.stop();
  }
});

tap.test('an untrusted source that sends a header: its bytes are the client\'s data', async () => {
  const p2port = await h.freePort();
  const p2 = new SmartProxy({
    proxyIPs: ['127.0.0.2'],
    routes: [{ name: 'echo', match: { ports: p2port }, action: { type: 'socket-handler', socketHandler: (s: net.Socket, c: any) => s.once('data', (d) => s.end(`${c.clientIp} ${s.remoteAddress} ${d}`)) } }],
  });
  await p2.start();
  try {
    const r = await exchange(p2port, [v1('203.0.113.7', '198.51.100.1', 4242, 443)]);
    // (Node reports the dual-stack listener's peer as ::ffff:127.0.0.1, as it does for upstream.)
    expect(r.text).toMatch(/^127\.0\.0\.1 (::ffff:)?127\.0\.0\.1 PROXY TCP4 203\.0\.113\.7 198\.51\.100\.1 4242 443\r\n$/);
  } finally {
    await p2.stop();
  }
});

tap.test('the real client in ipBlockList, maxConnectionsPerIP, match.clientIp, X-Forwarded-For and metrics', async () => {
  const [p2port, httpPort] = await h.freePorts(2);
  const echoXff = http.createServer((req, res) => res.end(`xff=${req.headers['x-forwarded-for']}`));
  await new Promise<void>((r) => echoXff.listen(0, h.HOST, () => r()));
  const backendPort = (echoXff.address() as net.AddressInfo).port;
  const hold = await h.tcpServer(() => {});
  const p2 = new SmartProxy({
    proxyIPs: ['127.0.0.0/8'],
    maxConnectionsPerIP: 1,
    connectionRateLimitPerMinute: 0,
    routes: [
      reporter('vip', p2port, { match: { clientIp: ['198.51.100.0/24'] } }),
      { ...reporter('blocked', p2port, { security: { ipBlockList: ['203.0.113.66'] } }), priority: 5, match: { ports: p2port, clientIp: ['203.0.113.66'] } },
      { name: 'hold', match: { ports: p2port, clientIp: ['192.0.2.0/24'] }, action: { type: 'forward', target: { host: h.HOST, port: hold.port } } },
      reporter('rest', p2port),
      { name: 'web', match: { ports: httpPort, domains: 'web.test' }, action: { type: 'forward', target: { host: h.HOST, port: backendPort } } },
    ],
  });
  await p2.start();
  try {
    expect((await exchange(p2port, [v1('198.51.100.20', '127.0.0.1', 1, 2)])).text).toMatch(/^vip 198\.51\.100\.20 /);
    expect((await exchange(p2port, [v1('203.0.113.5', '127.0.0.1', 1, 2)])).text).toMatch(/^rest 203\.0\.113\.5 /);
    expect((await exchange(p2port, [v1('203.0.113.66', '127.0.0.1', 1, 2)])).text).toEqual('');
    // Per-IP limit by the real client: a second connection of 192.0.2.1 is refused, one of
    // 192.0.2.2 (through the same balancer address) is not.
    const first = await h.connect(p2port);
    first.write(v1('192.0.2.1', '127.0.0.1', 1, 2));
    await h.waitFor(() => hold.accepted() === 1, 3000, 'the first connection to reach its backend');
    expect((await exchange(p2port, [v1('192.0.2.1', '127.0.0.1', 3, 2)])).text).toEqual('');
    const other = await h.connect(p2port);
    other.write(v1('192.0.2.2', '127.0.0.1', 1, 2));
    await h.waitFor(() => hold.accepted() === 2, 3000, 'another client to reach its backend');
    const byIP: Map<string, number> = p2.getMetrics().connections.byIP();
    expect(byIP.get('192.0.2.1')).toEqual(1);
    expect(byIP.get('192.0.2.2')).toEqual(1);
    expect(byIP.has('127.0.0.1')).toBeFalse();
    first.destroy();
    other.destroy();
    // X-Forwarded-For names the real client.
    const r = await exchange(httpPort, [v2('203.0.113.44:9', '127.0.0.1:80'), Buffer.from('GET / HTTP/1.1\r\nHost: web.test\r\nConnection: close\r\n\r\n')]);
    expect(r.text).toMatch(/xff=203\.0\.113\.44$/);
  } finally {
    await p2.stop();
    await hold.close();
    echoXff.close();
  }
});

tap.test('TLS passthrough and termination behind a PROXY header', async () => {
  const [p2port] = await h.freePorts(1);
  const cert = h.makeCert('pass.test');
  const termCert = h.makeCert('term.test');
  const tlsBackend = await h.tlsNameServer('passed', cert);
  const web = http.createServer((req, res) => res.end(`xff=${req.headers['x-forwarded-for']}`));
  await new Promise<void>((r) => web.listen(0, h.HOST, () => r()));
  const p2 = new SmartProxy({
    proxyIPs: ['127.0.0.1'],
    routes: [
      { name: 'pass', match: { ports: p2port, domains: 'pass.test' }, action: { type: 'forward', target: { host: h.HOST, port: tlsBackend.port }, tls: { mode: 'passthrough' } } },
      { name: 'term', match: { ports: p2port, domains: 'term.test' }, action: { type: 'forward', target: { host: h.HOST, port: (web.address() as net.AddressInfo).port }, tls: { mode: 'terminate', certificate: termCert } } },
    ],
  });
  await p2.start();
  const overTls = (servername: string, header: Buffer, then: (s: tls.TLSSocket) => void) =>
    new Promise<string>((resolve, reject) => {
      const raw = net.connect(p2port, h.HOST, () => {
        raw.write(header);
        const s = tls.connect({ socket: raw, servername, rejectUnauthorized: false }, () => then(s));
        let got = '';
        s.on('data', (d) => (got += d));
        s.on('end', () => resolve(got));
        s.on('error', reject);
      });
    });
  try {
    const passed = await overTls('pass.test', v2('203.0.113.1:1', '127.0.0.1:443'), (s) => setTimeout(() => s.end(), 100));
    expect(passed.startsWith('passed\n')).toBeTrue();
    const term = await overTls('term.test', v1('203.0.113.2', '127.0.0.1', 1, 443), (s) => s.write('GET / HTTP/1.1\r\nHost: term.test\r\nConnection: close\r\n\r\n'));
    expect(term).toMatch(/xff=203\.0\.113\.2$/);
  } finally {
    await p2.stop();
    await tlsBackend.close();
    web.close();
  }
});

/** A backend that reads a PROXY header (any version) and answers what it named, then echoes. */
function headerCapture() {
  const heads: Buffer[] = [];
  /** The first byte after each header. */
  const firstAfter: number[] = [];
  const server = h.tcpServer((s) => {
    let buf = Buffer.alloc(0);
    const onData = (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      let len = 0;
      if (buf.subarray(0, 12).equals(SIG) && buf.length >= 16) len = 16 + buf.readUInt16BE(14);
      else if (buf.indexOf('\r\n') > 0) len = buf.indexOf('\r\n') + 2;
      if (!len || buf.length < len) return;
      s.off('data', onData);
      const i = heads.push(buf.subarray(0, len)) - 1;
      s.write(`head ${heads.length}\n`);
      if (buf.length > len) {
        firstAfter[i] = buf[len];
        s.write(buf.subarray(len));
      } else s.once('data', (d: Buffer) => (firstAfter[i] = d[0]));
      s.pipe(s);
    };
    s.on('data', onData);
  });
  return { heads, firstAfter, server };
}

/** An HTTP/1.1 backend behind a PROXY header: answers each request with its path and the
 * header its connection started with. */
function proxiedHttpBackend() {
  return h.tcpServer((s) => {
    let buf = Buffer.alloc(0);
    let head: string | undefined;
    s.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      if (head === undefined) {
        let len = 0;
        if (buf.subarray(0, 12).equals(SIG) && buf.length >= 16) len = 16 + buf.readUInt16BE(14);
        else if (buf.indexOf('\r\n') > 0) len = buf.indexOf('\r\n') + 2;
        if (!len || buf.length < len) return;
        head = describe(buf.subarray(0, len));
        buf = buf.subarray(len);
      }
      for (let end = buf.indexOf('\r\n\r\n'); end >= 0; end = buf.indexOf('\r\n\r\n')) {
        const request = buf.subarray(0, end).toString('latin1');
        const path = request.split(' ')[1];
        buf = buf.subarray(end + 4);
        if (/\r\nupgrade: websocket/i.test(request)) {
          s.write(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n${path} ${head}\n`);
          return;
        }
        const body = `${path} ${head}`;
        s.write(`HTTP/1.1 200 OK\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
      }
    });
  });
}

/** Reads `n` HTTP/1.1 responses (Content-Length bodies) from a socket; their bodies. */
async function readBodies(s: net.Socket, n: number): Promise<string[]> {
  let buf = '';
  const bodies: string[] = [];
  s.on('data', (d) => (buf += d.toString('latin1')));
  await h.waitFor(() => {
    for (;;) {
      const end = buf.indexOf('\r\n\r\n');
      const m = /content-length: (\d+)/i.exec(buf.slice(0, end));
      if (end < 0 || !m || buf.length < end + 4 + Number(m[1])) break;
      bodies.push(buf.slice(end + 4, end + 4 + Number(m[1])));
      buf = buf.slice(end + 4 + Number(m[1]));
    }
    return bodies.length >= n;
  }, 5000, `${n} responses`).finally(() => s.removeAllListeners('data'));
  return bodies;
}

function describe(head: Buffer): string {
  if (head.subarray(0, 12).equals(SIG)) {
    const fam = head[13];
    const a = head.subarray(16);
    if (fam === 0x11) return `v2 ${a.subarray(0, 4).join('.')}:${a.readUInt16BE(8)} -> ${a.subarray(4, 8).join('.')}:${a.readUInt16BE(10)}`;
    return `v2 family ${fam}`;
  }
  return head.toString('latin1').trim();
}

tap.test('out: v1 and v2 on a TCP route, TLS passthrough and a plain HTTP route (one backend connection per client)', async () => {
  const { heads, firstAfter, server } = headerCapture();
  const backend = await server;
  const web = await proxiedHttpBackend();
  const [tcpPort, passPort, httpPort] = await h.freePorts(3);
  const p2 = new SmartProxy({
    sendProxyProtocol: 'v2',
    routes: [
      { name: 'tcp', match: { ports: tcpPort }, action: { type: 'forward', target: { host: h.HOST, port: backend.port }, sendProxyProtocol: true } },
      { name: 'pass', match: { ports: passPort, domains: 'p.test' }, action: { type: 'forward', target: { host: h.HOST, port: backend.port }, tls: { mode: 'passthrough' } } },
      { name: 'web', match: { ports: httpPort, domains: 'web.test' }, action: { type: 'forward', targets: [{ host: h.HOST, port: web.port, sendProxyProtocol: 'v1' }] } },
    ],
  });
  await p2.start();
  try {
    // TCP, v1 (the route's `true`): names the client and the address it connected to.
    const c = await h.connect(tcpPort);
    expect(await h.readLine(c)).toEqual('head 1');
    c.write('ping\n');
    expect(await h.readLine(c)).toEqual('ping');
    expect(describe(heads[0])).toEqual(`PROXY TCP4 127.0.0.1 127.0.0.1 ${c.localPort} ${tcpPort}`);
    c.destroy();
    // TLS passthrough, v2 (the global option): the header, then the ClientHello untouched.
    const t = await h.connect(passPort);
    const tPort = t.localPort;
    const hello = tls.connect({ socket: t, servername: 'p.test', rejectUnauthorized: false });
    hello.on('error', () => {});
    await h.waitFor(() => heads.length === 2, 3000, 'the passthrough backend connection');
    expect(describe(heads[1])).toEqual(`v2 127.0.0.1:${tPort} -> 127.0.0.1:${passPort}`);
    await h.waitFor(() => firstAfter[1] !== undefined, 3000, 'the ClientHello after the header');
    expect(firstAfter[1]).toEqual(0x16);
    hello.destroy();
    // HTTP, v1 on the target: each client's requests go on backend connections of their own,
    // each starting with a header that names that client.
    const [a, b] = [await h.connect(httpPort), await h.connect(httpPort)];
    const clientPorts = [a.localPort, b.localPort];
    for (const s of [a, b]) s.write('GET /one HTTP/1.1\r\nHost: web.test\r\n\r\nGET /two HTTP/1.1\r\nHost: web.test\r\n\r\n');
    const bodies = await Promise.all([a, b].map((s) => readBodies(s, 2)));
    for (const [i, got] of bodies.entries()) {
      expect(got).toEqual([`/one PROXY TCP4 127.0.0.1 127.0.0.1 ${clientPorts[i]} ${httpPort}`, `/two PROXY TCP4 127.0.0.1 127.0.0.1 ${clientPorts[i]} ${httpPort}`]);
    }
    a.destroy();
    b.destroy();
  } finally {
    await p2.stop();
    await backend.close();
    await web.close();
  }
});

tap.test('out through the HTTP layer: a TLS-terminating route (v2, HTTP/1.1 and HTTP/2 clients) and a WebSocket upgrade', async () => {
  const p = await h.freePort();
  const cert = h.makeCert('t.test');
  const web = await proxiedHttpBackend();
  const term = new SmartProxy({ sendProxyProtocol: 'v2', routes: [{ name: 't', match: { ports: p, domains: 't.test' }, action: { type: 'forward', target: { host: h.HOST, port: web.port }, tls: { mode: 'terminate', certificate: cert } } }] });
  await term.start();
  try {
    const s = tls.connect({ host: h.HOST, port: p, servername: 't.test', rejectUnauthorized: false, ALPNProtocols: ['http/1.1'] });
    await new Promise((r) => s.once('secureConnect', r));
    const localPort = s.localPort;
    s.write('GET /a HTTP/1.1\r\nHost: t.test\r\n\r\n');
    const [body] = await readBodies(s as unknown as net.Socket, 1);
    expect(body).toEqual(`/a v2 127.0.0.1:${localPort} -> 127.0.0.1:${p}`);
    s.destroy();
    const http2 = await import('node:http2');
    const session = http2.connect(`https://127.0.0.1:${p}`, { servername: 't.test', rejectUnauthorized: false });
    await new Promise((r) => session.once('connect', r));
    const h2Port = (session.socket as net.Socket).localPort;
    const answer = await h.h2Ask(session, { ':path': '/b', ':authority': 't.test' });
    expect(answer.body.toString()).toEqual(`/b v2 127.0.0.1:${h2Port} -> 127.0.0.1:${p}`);
    session.close();
    // A WebSocket upgrade: its backend connection starts with the header too.
    const ws = tls.connect({ host: h.HOST, port: p, servername: 't.test', rejectUnauthorized: false, ALPNProtocols: ['http/1.1'] });
    await new Promise((r) => ws.once('secureConnect', r));
    const wsPort = ws.localPort;
    ws.write('GET /ws HTTP/1.1\r\nHost: t.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n');
    let got = '';
    ws.on('data', (d) => (got += d));
    await h.waitFor(() => got.includes('\n/ws '), 5000, 'the upgraded stream');
    expect(got.startsWith('HTTP/1.1 101')).toBeTrue();
    expect(got.endsWith(`/ws v2 127.0.0.1:${wsPort} -> 127.0.0.1:${p}\n`)).toBeTrue();
    ws.destroy();
  } finally {
    await term.stop();
    await web.close();
  }
});

tap.test('refusals: sendProxyProtocol on a socket handler, acceptProxyProtocol without proxyIPs', async () => {
  const p = await h.freePort();
  const sh = new SmartProxy({ routes: [{ name: 's', match: { ports: p }, action: { type: 'socket-handler', socketHandler: () => {}, sendProxyProtocol: true } as any }] });
  const e1: any = await sh.start().catch((e) => e);
  expect(e1.code).toEqual('ERR_INVALID_CONFIG');
  expect(e1.message).toMatch(/route "s".*sendProxyProtocol/);
  const unknown = new SmartProxy({ acceptProxyProtocol: true, routes: [reporter('x', p)] });
  const e2: any = await unknown.start().catch((e) => e);
  expect(e2.code).toEqual('ERR_INVALID_CONFIG');
  expect(e2.message).toMatch(/proxyIPs/);
});

tap.test('a layer-4 port: the client\'s bytes that came with the header reach the backend, in order, once', async () => {
  // Port-only forward routes decide without the client's bytes, so they are read with the header
  // (one read); what they carry must reach the backend first, with or without a header out.
  const echo = await h.echoServer();
  const [plainPort, outPort] = await h.freePorts(2);
  const p = new SmartProxy({
    proxyIPs: ['127.0.0.1'],
    routes: [
      { name: 'plain', match: { ports: plainPort }, action: { type: 'forward', target: { host: h.HOST, port: echo.port } } },
      { name: 'out', match: { ports: outPort }, action: { type: 'forward', target: { host: h.HOST, port: echo.port }, sendProxyProtocol: 'v1' } },
    ],
  });
  await p.start();
  try {
    const header = v2('203.0.113.9:7000', '198.51.100.1:443');
    for (const [port, expectHead] of [
      [plainPort, ''],
      [outPort, 'PROXY TCP4 203.0.113.9 198.51.100.1 7000 443\r\n'],
    ] as const) {
      // Header and first bytes in one segment, more bytes later; then the header dripped.
      for (const chunks of [[Buffer.concat([header, Buffer.from('first;')]), Buffer.from('second;')], [...header].map((b) => Buffer.from([b])).concat([Buffer.from('first;second;')])]) {
        const s = await h.connect(port);
        s.setNoDelay(true);
        for (const c of chunks) {
          s.write(c);
          await h.sleep(chunks.length > 2 ? 1 : 20);
        }
        const want = `${expectHead}first;second;`;
        const got = await h.readBytes(s, want.length);
        expect(got.toString('latin1')).toEqual(want);
        s.destroy();
      }
    }
    await h.waitFor(() => p.getMetrics().connections.active() === 0, 5000, 'connections closed');
  } finally {
    await p.stop();
    await echo.close();
  }
});

tap.test('a chain: client → proxy A (sends v2) → proxy B (trusts A) keeps the original client', async () => {
  const [aPort, a2Port, bPort] = await h.freePorts(3);
  const b = new SmartProxy({ proxyIPs: ['127.0.0.1'], routes: [reporter('b', bPort)] });
  const a = new SmartProxy({ proxyIPs: ['127.0.0.1'], routes: [{ name: 'a', match: { ports: aPort }, action: { type: 'forward', target: { host: h.HOST, port: bPort }, sendProxyProtocol: 'v2' } }] });
  await b.start();
  await a.start();
  try {
    // The client itself comes through a balancer that names it 203.0.113.77.
    const r = await exchange(aPort, [v1('203.0.113.77', '198.51.100.1', 6000, 443)]);
    expect(r.text).toEqual('b 203.0.113.77 6000 IPv4 203.0.113.77 6000 v2\n');
    // Without a balancer in front of A: the client's own address and port, end to end.
    const direct = new SmartProxy({ routes: [{ name: 'a2', match: { ports: a2Port }, action: { type: 'forward', target: { host: h.HOST, port: bPort }, sendProxyProtocol: 'v2' } }] });
    await direct.start();
    try {
      const s = await h.connect(a2Port);
      const line = await h.readLine(s);
      expect(line).toEqual(`b 127.0.0.1 ${s.localPort} IPv4 127.0.0.1 ${s.localPort} v2`);
      s.destroy();
    } finally {
      await direct.stop();
    }
  } finally {
    await a.stop();
    await b.stop();
  }
});

tap.test('HAProxy in front with send-proxy and send-proxy-v2', async () => {
  for (const mode of ['send-proxy', 'send-proxy-v2']) {
    const [front, ours] = await h.freePorts(2);
    const p = new SmartProxy({ proxyIPs: ['127.0.0.1'], routes: [reporter('behind-haproxy', ours)] });
    await p.start();
    const haproxy = await startHaproxy(`frontend f\n  mode tcp\n  bind 127.0.0.1:${front}\n  default_backend b\nbackend b\n  mode tcp\n  server s1 127.0.0.1:${ours} ${mode}\n`, front);
    try {
      const s = await h.connect(front);
      const line = await h.readLine(s);
      const version = mode === 'send-proxy' ? 'v1' : 'v2';
      expect(line).toEqual(`behind-haproxy 127.0.0.1 ${s.localPort} IPv4 127.0.0.1 ${s.localPort} ${version}`);
      s.destroy();
    } finally {
      await haproxy.close();
      await p.stop();
    }
  }
});

tap.test('nginx behind: sendProxyProtocol v1 and v2 to a listen … proxy_protocol server', async () => {
  const [nginxPort, ours] = await h.freePorts(2);
  const nginx = await startNginx(`server { listen 127.0.0.1:${nginxPort} proxy_protocol; location / { return 200 "$proxy_protocol_addr:$proxy_protocol_port"; } }`, nginxPort);
  try {
    for (const version of ['v1', 'v2'] as const) {
      const p = new SmartProxy({ routes: [{ name: 'to-nginx', match: { ports: ours }, action: { type: 'forward', target: { host: h.HOST, port: nginxPort }, sendProxyProtocol: version } }] });
      await p.start();
      try {
        const s = await h.connect(ours);
        const localPort = s.localPort;
        s.write('GET / HTTP/1.1\r\nHost: n.test\r\nConnection: close\r\n\r\n');
        const got: Buffer[] = [];
        s.on('data', (d) => got.push(d));
        await h.closed(s);
        expect(Buffer.concat(got).toString()).toMatch(new RegExp(`\\r\\n\\r\\n127\\.0\\.0\\.1:${localPort}$`));
      } finally {
        await p.stop();
      }
    }
  } finally {
    await nginx.close();
  }
});

tap.test('teardown', async () => {
  await proxy.stop();
});

export default tap.start();
