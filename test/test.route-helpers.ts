import { tap, expect } from '@git.zone/tstest/tapbundle';
import * as http from 'node:http';
import * as https from 'node:https';
import * as net from 'node:net';
import * as tls from 'node:tls';
import * as crypto from 'node:crypto';
import WebSocket from 'ws';
import {
  SmartProxy,
  SocketHandlers,
  createHttpRoute,
  createHttpsTerminateRoute,
  createHttpsPassthroughRoute,
  createHttpToHttpsRedirect,
  createCompleteHttpsServer,
  createLoadBalancerRoute,
  createApiRoute,
  createApiGatewayRoute,
  createWebSocketRoute,
  createSocketHandlerRoute,
  createPortMappingRoute,
  createOffsetPortMappingRoute,
  createDynamicRoute,
  createSmartLoadBalancer,
  createNfTablesRoute,
  addRateLimiting,
  addBasicAuth,
  addJwtAuth,
  mergeRouteConfigs,
  routeMatchesDomain,
  routeMatchesPort,
  isValidPort,
  isValidDomain,
  validateRouteMatch,
  validateRouteAction,
  type IRouteConfig,
} from '../index.js';
import * as h from './helpers.js';

let backend: http.Server, backendPort: number;
let cert: h.Cert;

function get(port: number, host: string, path = '/', tls = false): Promise<{ status: number; body: string; headers: http.IncomingHttpHeaders }> {
  const mod: any = tls ? https : http;
  return new Promise((resolve, reject) => {
    mod
      .get({ host: '127.0.0.1', port, path, headers: { host }, servername: host, rejectUnauthorized: false, agent: false }, (res: http.IncomingMessage) => {
        let body = '';
        res.on('data', (d) => (body += d));
        res.on('end', () => resolve({ status: res.statusCode!, body, headers: res.headers }));
      })
      .on('error', reject);
  });
}

async function withProxy(routes: IRouteConfig[], fn: () => Promise<void>) {
  const p = new SmartProxy({ routes, maxConnectionsPerIP: 0, connectionRateLimitPerMinute: 0 });
  await p.start();
  try {
    await fn();
  } finally {
    await p.stop();
  }
}

tap.test('setup', async () => {
  cert = h.makeCert('site.test');
  backend = http.createServer((req, res) => res.end(`backend ${req.url}`));
  await new Promise<void>((r) => backend.listen(0, '127.0.0.1', () => r()));
  backendPort = (backend.address() as net.AddressInfo).port;
});

const target = () => ({ host: '127.0.0.1', port: backendPort });

tap.test('createHttpRoute: shape and a working route', async () => {
  const p = await h.freePort();
  const r = createHttpRoute('site.test', target(), { match: { ports: p } as any });
  expect(r.name).toEqual('HTTP Route for site.test');
  expect(r.match).toEqual({ ports: p, domains: 'site.test' });
  expect(r.action).toEqual({ type: 'forward', targets: [target()] });
  expect(createHttpRoute(['a.test', 'b.test'], target()).match.ports).toEqual(80);
  await withProxy([r], async () => expect((await get(p, 'site.test', '/x')).body).toEqual('backend /x'));
});

tap.test('createHttpsTerminateRoute / createCompleteHttpsServer / createHttpToHttpsRedirect', async () => {
  const [sp, hp] = await h.freePorts(2);
  const certificate = { key: cert.key, cert: cert.cert };
  const t = createHttpsTerminateRoute('site.test', target(), { certificate, httpsPort: sp });
  expect(t.action.tls).toEqual({ mode: 'terminate', certificate });
  expect(createHttpsTerminateRoute('x.test', target()).action.tls).toEqual({ mode: 'terminate', certificate: 'auto' });
  expect(createHttpsTerminateRoute('x.test', target(), { reencrypt: true }).action.tls!.mode).toEqual('terminate-and-reencrypt');
  const both = createCompleteHttpsServer('site.test', target(), { certificate, httpsPort: sp, httpPort: hp });
  expect(both.length).toEqual(2);
  expect(both[1].action.type).toEqual('socket-handler');
  expect(both[1].match.ports).toEqual(hp);
  await withProxy(both, async () => {
    expect((await get(sp, 'site.test', '/secure', true)).body).toEqual('backend /secure');
    const redirect = await get(hp, 'site.test', '/page?a=1');
    expect(redirect.status).toEqual(301);
    expect(redirect.headers.location).toEqual(`https://site.test:${sp}/page?a=1`);
  });
  expect(createHttpToHttpsRedirect('x.test').name).toEqual('HTTP to HTTPS Redirect for x.test');
});

tap.test('createHttpsPassthroughRoute', async () => {
  const tlsBackend = await h.tlsNameServer('TLS', cert);
  const p = await h.freePort();
  const r = createHttpsPassthroughRoute('site.test', { host: '127.0.0.1', port: tlsBackend.port }, { httpsPort: p });
  expect(r.action.tls).toEqual({ mode: 'passthrough' });
  await withProxy([r], async () => {
    const line = await new Promise<string>((resolve, reject) => {
      const s = tls.connect({ host: '127.0.0.1', port: p, servername: 'site.test', rejectUnauthorized: false }, async () => {
        resolve(await h.readLine(s as unknown as net.Socket));
        s.destroy();
      });
      s.on('error', reject);
    });
    expect(line).toEqual('TLS');
  });
  await tlsBackend.close();
});

tap.test('createLoadBalancerRoute rotates over hosts, and over host/port pairs', async () => {
  const a = await h.namedServer('A');
  const b = await h.namedServer('B');
  const p = await h.freePort();
  const pairs = createLoadBalancerRoute('lb.test', [{ host: '127.0.0.1', port: a.port }, { host: '127.0.0.1', port: b.port }], 0, { match: { ports: p } as any });
  expect(pairs.action.loadBalancing).toEqual({ algorithm: 'round-robin' });
  const hosts = createLoadBalancerRoute('lb.test', ['h1', 'h2'], 8080);
  expect(hosts.action.targets).toEqual([{ host: ['h1', 'h2'], port: 8080 }]);
  delete (pairs.match as any).domains; // plain TCP clients send no domain
  await withProxy([pairs], async () => {
    const seen: string[] = [];
    for (let i = 0; i < 4; i++) {
      const s = await h.connect(p);
      seen.push(await h.readLine(s));
      s.destroy();
    }
    expect(seen).toEqual(['A', 'B', 'A', 'B']);
  });
  await a.close();
  await b.close();
});

tap.test('createApiRoute / createApiGatewayRoute with CORS headers', async () => {
  const p = await h.freePort();
  const api = createApiRoute('site.test', 'v1/', target(), { addCorsHeaders: true, httpPort: p });
  expect(api.match.path).toEqual('/v1/*');
  expect(api.priority).toEqual(100);
  expect(api.headers!.response!['Access-Control-Allow-Origin']).toEqual('*');
  const gw = createApiGatewayRoute('site.test', '/gw', target(), { httpPort: p });
  expect(gw.match.path).toEqual('/gw/*');
  await withProxy([api, gw], async () => {
    const r = await get(p, 'site.test', '/v1/users');
    expect(r.body).toEqual('backend /v1/users');
    expect(r.headers['access-control-allow-origin']).toEqual('*');
    expect((await get(p, 'site.test', '/gw/x')).body).toEqual('backend /gw/x');
    expect((await get(p, 'site.test', '/other')).status).toEqual(404);
  });
});

tap.test('createWebSocketRoute (pings every 30 s by default)', async () => {
  const { WebSocketServer } = await import('ws');
  const server = http.createServer();
  const wss = new WebSocketServer({ server });
  wss.on('connection', (ws) => ws.on('message', (m) => ws.send(m)));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const p = await h.freePort();
  const r = createWebSocketRoute('site.test', '/ws', { host: '127.0.0.1', port: (server.address() as net.AddressInfo).port }, { httpPort: p });
  expect(r.action.websocket).toEqual({ enabled: true, pingInterval: 30000, pingTimeout: 5000 });
  await withProxy([r], async () => {
    const ws = new WebSocket(`ws://127.0.0.1:${p}/ws`, { headers: { host: 'site.test' } });
    await new Promise((res, rej) => (ws.once('open', res), ws.once('error', rej)));
    const back = new Promise<string>((res) => ws.once('message', (m) => res(m.toString())));
    ws.send('hi');
    expect(await back).toEqual('hi');
    ws.close();
  });
  wss.close();
  await new Promise((res) => server.close(res));
});

tap.test('createSocketHandlerRoute', async () => {
  const p = await h.freePort();
  const r = createSocketHandlerRoute('site.test', p, SocketHandlers.echo, { name: 'echo' });
  expect(r).toEqual({ name: 'echo', priority: 50, match: { ports: p, domains: 'site.test' }, action: { type: 'socket-handler', socketHandler: SocketHandlers.echo } });
  delete (r.match as any).domains;
  await withProxy([r], async () => {
    const s = await h.connect(p);
    expect(await h.readLine(s)).toEqual('ECHO SERVER READY');
    s.destroy();
  });
});

tap.test('port mapping, offset mapping, dynamic routes and the smart load balancer', async () => {
  const named = await h.namedServer('mapped');
  const [p1, p2, p3, p4] = await h.freePorts(4);
  const routes = [
    createPortMappingRoute({ sourcePortRange: p1, targetHost: '127.0.0.1', portMapper: () => named.port, name: 'map' }),
    createOffsetPortMappingRoute({ ports: p2, targetHost: '127.0.0.1', offset: named.port - p2, name: 'offset' }),
    createDynamicRoute({ ports: p3, targetHost: () => '127.0.0.1', portMapper: () => named.port, name: 'dyn' }),
    createSmartLoadBalancer({
      ports: p4,
      targets: [{ host: '127.0.0.9', port: 1, condition: (ctx) => ctx.port === 1 }, { host: '127.0.0.1', port: named.port, condition: (ctx) => ctx.port === p4 }],
      name: 'smart',
    }),
  ];
  expect(routes[1].name).toEqual('offset');
  await withProxy(routes, async () => {
    for (const p of [p1, p2, p3, p4]) {
      const s = await h.connect(p);
      expect(await h.readLine(s)).toEqual('mapped');
      s.destroy();
    }
  });
  await named.close();
});

tap.test('nftables builders build routes; the engine refuses them loudly until nftables is built', async () => {
  const r = createNfTablesRoute('fast.test', { host: '10.0.0.1', port: 80 }, { ports: 8080, preserveSourceIP: true });
  expect(r.action.forwardingEngine).toEqual('nftables');
  expect(r.action.nftables).toEqual({ preserveSourceIP: true });
  const err = await new SmartProxy({ routes: [r] }).start().then(() => null, (e) => e);
  expect(err.code).toEqual('ERR_NOT_SUPPORTED');
});

tap.test('security helpers set upstream shapes', async () => {
  const base = createHttpRoute('x.test', { host: 'b', port: 1 });
  expect(addRateLimiting(base, { maxRequests: 10, window: 60 }).security!.rateLimit).toEqual({ enabled: true, maxRequests: 10, window: 60 });
  expect(addBasicAuth(createHttpsTerminateRoute('x.test', { host: 'b', port: 1 }), { users: [{ username: 'u', password: 'p' }] }).security!.basicAuth!.enabled).toBeTrue();
  expect(addJwtAuth(base, { secret: 's' }).security!.jwtAuth).toEqual({ enabled: true, secret: 's' });
  expect(base.security).toBeUndefined(); // helpers return copies
});

tap.test('addBasicAuth / addJwtAuth / addRateLimiting routes are enforced per request', async () => {
  const p = await h.freePort();
  const b64url = (b: Buffer | string) => Buffer.from(b).toString('base64url');
  const sign = (claims: object, secret = 'jwt-secret') => {
    const head = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
    const body = b64url(JSON.stringify(claims));
    return `${head}.${body}.${crypto.createHmac('sha256', secret).update(`${head}.${body}`).digest('base64url')}`;
  };
  const routes = [
    addBasicAuth(createHttpRoute('basic.test', target(), { match: { ports: p } as any }), { users: [{ username: 'u', password: 'p' }], realm: 'Zone', excludePaths: ['/open/*'] }),
    addJwtAuth(createHttpRoute('jwt.test', target(), { match: { ports: p } as any }), { secret: 'jwt-secret', issuer: 'me' }),
    addRateLimiting(createHttpRoute('rl.test', target(), { match: { ports: p } as any }), { maxRequests: 2, window: 60, errorMessage: 'slow down' }),
  ];
  const req = (host: string, path = '/', headers: Record<string, string> = {}) =>
    new Promise<{ status: number; body: string; auth?: string }>((resolve, reject) => {
      http
        .get({ host: '127.0.0.1', port: p, path, headers: { host, ...headers }, agent: false }, (res) => {
          let body = '';
          res.on('data', (d) => (body += d));
          res.on('end', () => resolve({ status: res.statusCode!, body, auth: res.headers['www-authenticate'] as string }));
        })
        .on('error', reject);
    });
  await withProxy(routes, async () => {
    const denied = await req('basic.test');
    expect(denied.status).toEqual(401);
    expect(denied.auth).toEqual('Basic realm="Zone"');
    expect((await req('basic.test', '/', { authorization: `Basic ${Buffer.from('u:p').toString('base64')}` })).body).toEqual('backend /');
    expect((await req('basic.test', '/', { authorization: `Basic ${Buffer.from('u:x').toString('base64')}` })).status).toEqual(401);
    expect((await req('basic.test', '/open/x')).status).toEqual(200);
    expect((await req('jwt.test')).status).toEqual(401);
    expect((await req('jwt.test', '/', { authorization: `Bearer ${sign({ iss: 'me', exp: Math.floor(Date.now() / 1000) + 60 })}` })).status).toEqual(200);
    expect((await req('jwt.test', '/', { authorization: `Bearer ${sign({ iss: 'me', exp: Math.floor(Date.now() / 1000) - 1 })}` })).status).toEqual(401);
    expect((await req('jwt.test', '/', { authorization: `Bearer ${sign({ iss: 'me' }, 'wrong')}` })).status).toEqual(401);
    expect((await req('rl.test')).status).toEqual(200);
    expect((await req('rl.test')).status).toEqual(200);
    const limited = await req('rl.test');
    expect(limited.status).toEqual(429);
    expect(limited.body).toEqual('slow down');
    // Not HTTP: an authenticated route is never relayed at layer 4 (the backend sees nothing).
    let reached = 0;
    const count = () => reached++;
    backend.on('connection', count);
    const s = await h.connect(p);
    s.write('\x00\x01 binary');
    await h.closed(s);
    await h.sleep(100);
    backend.off('connection', count);
    expect(reached).toEqual(0);
  });
});

tap.test('utilities and validators', async () => {
  const base = createHttpRoute('*.example.com', { host: 'b', port: 1 });
  const merged = mergeRouteConfigs(base, { priority: 7, match: { ports: [80, { from: 8000, to: 8010 }] } as any });
  expect(merged.priority).toEqual(7);
  expect(merged.match.domains).toEqual('*.example.com');
  expect(base.priority).toBeUndefined();
  expect(routeMatchesDomain(base, 'a.example.com')).toBeTrue();
  expect(routeMatchesDomain(base, 'example.com')).toBeFalse();
  expect(routeMatchesPort(merged, 8005)).toBeTrue();
  expect(routeMatchesPort(merged, 8011)).toBeFalse();
  expect(isValidPort(443)).toBeTrue();
  expect(isValidPort(0)).toBeFalse();
  expect(isValidDomain('*.example.com')).toBeTrue();
  expect(isValidDomain('bad domain')).toBeFalse();
  expect(validateRouteMatch({ ports: 70000 } as any).valid).toBeFalse();
  expect(validateRouteAction({ type: 'forward' } as any).errors).toContain('forward action requires target or targets');
});

tap.test('teardown', async () => {
  await new Promise((r) => backend.close(r));
});

tap.start();
