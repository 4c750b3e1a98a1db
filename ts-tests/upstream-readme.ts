// Configurations written the way upstream's readme (19.5+ / 20+ / 21) writes them. They must
// type-check against our public types unchanged.
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
  type IRouteConfig,
  type IRouteContext,
  type ISmartProxyOptions,
  type IMetrics,
  type TSmartProxyCertProvisionObject,
} from '@push.rocks/smartproxy';

const proxy = new SmartProxy({
  acme: { email: 'ssl@example.com', useProduction: false, port: 80, renewThresholdDays: 30, certificateStore: './certs' },
  routes: [
    createHttpRoute('api.example.com', { host: 'localhost', port: 3000 }),
    createHttpsTerminateRoute('secure.example.com', { host: 'localhost', port: 8080 }, { certificate: 'auto' }),
    createHttpsPassthroughRoute('legacy.example.com', { host: '192.168.1.10', port: 443 }),
    createHttpToHttpsRedirect(['example.com', '*.example.com']),
    ...createCompleteHttpsServer('shop.example.com', { host: 'localhost', port: 3001 }, { certificate: 'auto' }),
    createLoadBalancerRoute('lb.example.com', ['10.0.0.1', '10.0.0.2'], 8080, { tls: { mode: 'terminate', certificate: 'auto' } }),
    createApiRoute('api.example.com', '/v1', { host: 'api-server', port: 8081 }, { useTls: true, certificate: 'auto', addCorsHeaders: true }),
    createApiGatewayRoute('gw.example.com', '/api', { host: 'gw', port: 9000 }),
    createWebSocketRoute('ws.example.com', '/socket', { host: 'ws', port: 8082 }, { useTls: true, pingInterval: 30000 }),
    createSocketHandlerRoute('echo.example.com', 7777, SocketHandlers.echo),
    createSocketHandlerRoute('custom.example.com', 9999, async (socket, context) => {
      socket.write(`Hello ${context.clientIp}\n`);
      socket.on('data', (d) => socket.write(d));
    }),
    createPortMappingRoute({ sourcePortRange: [{ from: 8000, to: 8010 }], targetHost: 'backend', portMapper: (ctx) => ctx.port + 1000 }),
    createOffsetPortMappingRoute({ ports: [{ from: 9000, to: 9010 }], targetHost: 'backend', offset: 1000 }),
    createDynamicRoute({ ports: 5000, targetHost: (ctx) => (ctx.domain === 'a' ? 'a-host' : 'b-host'), portMapper: () => 5001 }),
    createSmartLoadBalancer({ ports: 80, domains: 'app.example.com', targets: [{ host: 'a', port: 1, condition: (ctx) => ctx.path?.startsWith('/a') ?? false }], fallbackTarget: { host: 'b', port: 2 } }),
    createNfTablesRoute('fast', { host: 'backend', port: 8080 }, { ports: 80, preserveSourceIP: true }),
    addRateLimiting(createHttpRoute('rl.example.com', { host: 'x', port: 1 }), { maxRequests: 100, window: 60 }),
    addBasicAuth(createHttpRoute('auth.example.com', { host: 'x', port: 1 }), { users: [{ username: 'u', password: 'p' }], realm: 'r' }),
    addJwtAuth(createHttpRoute('jwt.example.com', { host: 'x', port: 1 }), { secret: 's', issuer: 'me' }),
    {
      name: 'redirect-to-https',
      match: { ports: 80, domains: 'old.example.com' },
      action: { type: 'socket-handler', socketHandler: SocketHandlers.httpRedirect('https://{domain}{path}', 301) },
    },
    {
      name: 'block-bad',
      priority: 100,
      match: { ports: [80, 443], clientIp: ['1.2.3.4', '10.0.0.0/8'] },
      action: { type: 'socket-handler', socketHandler: SocketHandlers.block('Access denied') },
    },
  ],
});

// 19.x style: a single `target`, function host/port, TLS passthrough, security.
const v19: IRouteConfig = {
  name: 'v19',
  match: { ports: [443, { from: 8443, to: 8445 }], domains: ['a.example.com', '*.b.example.com'], tlsVersion: ['TLSv1.2', 'TLSv1.3'] },
  action: {
    type: 'forward',
    target: { host: (ctx: IRouteContext) => (ctx.domain?.startsWith('a') ? 'a' : ['b1', 'b2']), port: 'preserve' },
    tls: { mode: 'passthrough' },
  },
  security: { ipAllowList: ['192.168.0.0/16'], ipBlockList: ['192.168.1.1'], maxConnections: 100 },
};

// 20+ style: `targets` with per-target match and priority, plus headers and websocket options.
const v20: IRouteConfig = {
  id: 'multi',
  name: 'multi-target',
  priority: 10,
  enabled: true,
  tags: ['api'],
  match: { ports: 443, domains: 'api.example.com', path: '/v2/*', headers: { 'x-env': /^(prod|staging)$/ } },
  action: {
    type: 'forward',
    targets: [
      { host: 'v2-posts', port: 8001, priority: 10, match: { path: '/v2/posts/*', method: ['GET', 'POST'] } },
      { host: ['v2-a', 'v2-b'], port: async (ctx) => (ctx.port === 443 ? 8000 : 8002) },
    ],
    tls: { mode: 'terminate-and-reencrypt', certificate: { key: '-----BEGIN PRIVATE KEY-----', cert: '-----BEGIN CERTIFICATE-----' } },
    websocket: { enabled: true, pingInterval: 30000, pingTimeout: 5000 },
    loadBalancing: { algorithm: 'round-robin' },
    options: { backendProtocol: 'http2' },
  },
  headers: { request: { 'X-Forwarded-Host': '{domain}' }, response: { 'X-Route': '{routeName}' }, cors: { enabled: true, allowOrigin: '*' } },
};

const options: ISmartProxyOptions = {
  routes: [v19, v20, mergeRouteConfigs(v19, { priority: 5 })],
  defaults: { target: { host: 'localhost', port: 8080 }, security: { ipBlockList: ['1.1.1.1'] } },
  connectionTimeout: 30000,
  initialDataTimeout: 60000,
  inactivityTimeout: 3600000,
  keepAliveTreatment: 'extended',
  keepAliveInactivityMultiplier: 6,
  maxConnectionsPerIP: 100,
  connectionRateLimitPerMinute: 300,
  useHttpProxy: [443],
  httpProxyPort: 8443,
  enableDetailedLogging: true,
  certProvisionFunction: async (domain: string): Promise<TSmartProxyCertProvisionObject> => (domain.endsWith('.internal') ? 'http01' : 'http01'),
  metrics: { enabled: true, sampleIntervalMs: 1000 },
};

async function lifecycle() {
  const p = new SmartProxy(options);
  await p.start();
  await p.updateRoutes([...p.settings.routes, createHttpRoute('late.example.com', { host: 'x', port: 2 })]);
  await p.addListeningPort(9090);
  const ports: number[] = p.getListeningPorts();
  await p.removeListeningPort(ports[0]);
  const stats = p.getStatistics();
  const active: number = stats.activeConnections;
  const m: IMetrics = p.getMetrics();
  const byRoute: Map<string, number> = m.connections.byRoute();
  const top = m.connections.topIPs(5)[0]?.ip;
  const domains: string[] = p.getEligibleDomainsForCertificates();
  p.on('anything', () => {});
  await p.stop();
  await proxy.stop();
  return { active, byRoute, top, domains };
}

void lifecycle;
