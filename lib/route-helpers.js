'use strict';
// Route builders, validators and utilities (spec §5): each returns a plain IRouteConfig that
// SmartProxy accepts. Conventions (spec §5): `domains` is string | string[]; the name defaults to
// a description built from the domains; targets are emitted as `targets: [target]` (20+);
// option keys a helper does not consume are spread into the route; `options.match` and
// `options.action` are merged over the computed ones.
const { SocketHandlers } = require('./socket-handlers.js');

function label(domains) {
  if (domains === undefined || domains === null) return 'all domains';
  return Array.isArray(domains) ? domains.join(', ') : String(domains);
}

function omit(obj, keys) {
  const out = {};
  for (const [k, v] of Object.entries(obj || {})) if (!keys.includes(k) && v !== undefined) out[k] = v;
  return out;
}

function build(match, action, name, options, consumed) {
  const rest = omit(options, [...consumed, 'match', 'action', 'name']);
  return {
    match: { ...match, ...(options.match || {}) },
    action: { ...action, ...(options.action || {}) },
    name: options.name || name,
    ...rest,
  };
}

function tlsTerminate(options) {
  return { mode: options.reencrypt ? 'terminate-and-reencrypt' : 'terminate', certificate: options.certificate || 'auto' };
}

function createHttpRoute(domains, target, options = {}) {
  return build({ ports: 80, domains }, { type: 'forward', targets: [target] }, `HTTP Route for ${label(domains)}`, options, []);
}

function createHttpsTerminateRoute(domains, target, options = {}) {
  return build(
    { ports: options.httpsPort ?? 443, domains },
    { type: 'forward', targets: [target], tls: tlsTerminate(options) },
    `HTTPS Route for ${label(domains)}`,
    options,
    ['certificate', 'httpPort', 'httpsPort', 'reencrypt'],
  );
}

function createHttpsPassthroughRoute(domains, target, options = {}) {
  return build(
    { ports: options.httpsPort ?? 443, domains },
    { type: 'forward', targets: [target], tls: { mode: 'passthrough' } },
    `HTTPS Passthrough for ${label(domains)}`,
    options,
    ['httpsPort'],
  );
}

function createHttpToHttpsRedirect(domains, httpsPort = 443, options = {}) {
  const portPart = httpsPort === 443 ? '' : `:${httpsPort}`;
  return build(
    { ports: options.httpPort ?? 80, domains },
    { type: 'socket-handler', socketHandler: SocketHandlers.httpRedirect(`https://{domain}${portPart}{path}`, 301) },
    `HTTP to HTTPS Redirect for ${label(domains)}`,
    options,
    ['httpPort'],
  );
}

function createCompleteHttpsServer(domains, target, options = {}) {
  const httpsPort = options.httpsPort ?? 443;
  return [
    createHttpsTerminateRoute(domains, target, options),
    createHttpToHttpsRedirect(domains, httpsPort, { httpPort: options.httpPort ?? 80 }),
  ];
}

function createLoadBalancerRoute(domains, backends, port, options = {}) {
  const list = backends || [];
  const plain = list.every((b) => typeof b === 'string');
  const targets = plain ? [{ host: list, port }] : list.map((b) => ({ host: b.host, port: b.port ?? port }));
  const action = { type: 'forward', targets };
  if (options.tls) action.tls = { ...options.tls, ...(options.tls.mode !== 'passthrough' ? { certificate: options.tls.certificate || 'auto' } : {}) };
  if (!plain || options.algorithm || options.healthCheck) {
    action.loadBalancing = { algorithm: options.algorithm || 'round-robin', ...(options.healthCheck ? { healthCheck: options.healthCheck } : {}) };
  }
  return build({ ports: options.tls ? 443 : 80, domains }, action, `Load Balancer for ${label(domains)}`, options, ['tls', 'algorithm', 'healthCheck']);
}

function apiPattern(path) {
  let p = String(path || '/').trim();
  if (!p.startsWith('/')) p = `/${p}`;
  p = p.replace(/\/+$/, '');
  return `${p}/*`;
}

const CORS_HEADERS = {
  'Access-Control-Allow-Origin': '*',
  'Access-Control-Allow-Methods': 'GET, POST, PUT, DELETE, OPTIONS',
  'Access-Control-Allow-Headers': 'Content-Type, Authorization',
  'Access-Control-Max-Age': '86400',
};

function apiRoute(domains, apiPath, target, options, name) {
  const action = { type: 'forward', targets: [target] };
  if (options.useTls) action.tls = tlsTerminate(options);
  const route = build(
    { ports: options.useTls ? options.httpsPort ?? 443 : options.httpPort ?? 80, domains, path: apiPattern(apiPath) },
    action,
    name,
    options,
    ['useTls', 'certificate', 'addCorsHeaders', 'httpPort', 'httpsPort', 'reencrypt'],
  );
  route.priority = options.priority ?? 100;
  if (options.addCorsHeaders) route.headers = { ...(route.headers || {}), response: { ...CORS_HEADERS, ...((route.headers || {}).response || {}) } };
  return route;
}

function createApiRoute(domains, apiPath, target, options = {}) {
  return apiRoute(domains, apiPath, target, options, `API Route: ${apiPath} for ${label(domains)}`);
}

function createApiGatewayRoute(domains, apiBasePath, target, options = {}) {
  return apiRoute(domains, apiBasePath, target, options, `API Gateway: ${apiBasePath} for ${label(domains)}`);
}

function createWebSocketRoute(domains, wsPath, target, options = {}) {
  const action = {
    type: 'forward',
    targets: [target],
    websocket: { enabled: true, pingInterval: options.pingInterval ?? 30000, pingTimeout: options.pingTimeout ?? 5000 },
  };
  if (options.useTls) action.tls = tlsTerminate(options);
  let path = String(wsPath || '/').trim();
  if (!path.startsWith('/')) path = `/${path}`;
  const route = build(
    { ports: options.useTls ? options.httpsPort ?? 443 : options.httpPort ?? 80, domains, path },
    action,
    `WebSocket Route: ${path} for ${label(domains)}`,
    options,
    ['useTls', 'certificate', 'httpPort', 'httpsPort', 'pingInterval', 'pingTimeout', 'reencrypt'],
  );
  route.priority = options.priority ?? 100;
  return route;
}

function createSocketHandlerRoute(domains, ports, handler, options = {}) {
  return {
    name: options.name || `SocketHandler route for ${label(domains)}`,
    priority: options.priority ?? 50,
    match: { ports, domains, ...(options.path ? { path: options.path } : {}) },
    action: { type: 'socket-handler', socketHandler: handler },
  };
}

function createPortMappingRoute(options) {
  const { sourcePortRange, targetHost, portMapper, name, domains, priority, ...rest } = options;
  const match = { ports: sourcePortRange };
  if (domains) match.domains = domains;
  return {
    name: name || `Port Mapping Route for ${label(domains)}`,
    match,
    action: { type: 'forward', targets: [{ host: targetHost, port: portMapper }] },
    ...(priority !== undefined ? { priority } : {}),
    ...rest,
  };
}

function createOffsetPortMappingRoute(options) {
  const { ports, targetHost, offset, name, ...rest } = options;
  return createPortMappingRoute({
    sourcePortRange: ports,
    targetHost,
    portMapper: (context) => context.port + offset,
    name: name || `Offset Mapping (${offset >= 0 ? '+' : ''}${offset}) for ${label(options.domains)}`,
    ...rest,
  });
}

function createDynamicRoute(options) {
  const { ports, targetHost, portMapper, name, domains, path, clientIp, priority, ...rest } = options;
  const match = { ports };
  if (domains) match.domains = domains;
  if (path) match.path = path;
  if (clientIp) match.clientIp = clientIp;
  return {
    name: name || `Dynamic Route for ${label(domains)}`,
    match,
    action: { type: 'forward', targets: [{ host: targetHost, port: portMapper }] },
    ...(priority !== undefined ? { priority } : {}),
    ...rest,
  };
}

function createSmartLoadBalancer(options) {
  const { ports, domains, targets, fallbackTarget, name, priority, ...rest } = options;
  const pick = (context) => {
    for (const t of targets) if (!t.condition || t.condition(context)) return t;
    return fallbackTarget || targets[0];
  };
  const match = { ports };
  if (domains) match.domains = domains;
  return {
    name: name || `Smart Load Balancer for ${label(domains)}`,
    match,
    action: { type: 'forward', targets: [{ host: (context) => pick(context).host, port: (context) => pick(context).port }] },
    ...(priority !== undefined ? { priority } : {}),
    ...rest,
  };
}

function looksLikeDomains(x) {
  return Array.isArray(x) || /[.*]/.test(String(x));
}

function createNfTablesRoute(nameOrDomains, target, options = {}) {
  const domains = looksLikeDomains(nameOrDomains) ? nameOrDomains : undefined;
  const name = domains ? `NFTables route for ${label(domains)}` : String(nameOrDomains);
  const nftables = {};
  for (const k of ['protocol', 'preserveSourceIP', 'maxRate', 'priority', 'tableName', 'useIPSets', 'useAdvancedNAT']) {
    if (options[k] !== undefined) nftables[k] = options[k];
  }
  const action = { type: 'forward', targets: [target], forwardingEngine: 'nftables', nftables };
  if (options.useTls) action.tls = { mode: 'passthrough' };
  const route = { name, match: { ports: options.ports ?? 80, ...(domains ? { domains } : {}) }, action };
  if (options.ipAllowList || options.ipBlockList) {
    route.security = { ...(options.ipAllowList ? { ipAllowList: options.ipAllowList } : {}), ...(options.ipBlockList ? { ipBlockList: options.ipBlockList } : {}) };
  }
  if (options.priority !== undefined) route.priority = options.priority;
  return route;
}

function createNfTablesTerminateRoute(nameOrDomains, target, options = {}) {
  const route = createNfTablesRoute(nameOrDomains, target, { ...options, ports: options.ports ?? 443 });
  route.action.tls = { mode: 'terminate', certificate: options.certificate || 'auto' };
  return route;
}

function createCompleteNfTablesHttpsServer(nameOrDomains, target, options = {}) {
  const httpsPort = options.httpsPort ?? 443;
  const domains = looksLikeDomains(nameOrDomains) ? nameOrDomains : undefined;
  return [
    createNfTablesTerminateRoute(nameOrDomains, target, { ...options, ports: httpsPort }),
    createHttpToHttpsRedirect(domains, httpsPort, { httpPort: options.httpPort ?? 80 }),
  ];
}

function withSecurity(route, key, value) {
  return { ...route, security: { ...(route.security || {}), [key]: value } };
}

function addRateLimiting(route, rateLimit) {
  return withSecurity(route, 'rateLimit', { enabled: true, ...rateLimit });
}

function addBasicAuth(route, auth) {
  const tls = route.action && route.action.tls;
  if (!tls || tls.mode === 'passthrough') {
    console.warn(`[smartproxy] basic auth on route "${route.name || ''}" without TLS termination sends credentials in clear text`);
  }
  return withSecurity(route, 'basicAuth', { enabled: true, ...auth });
}

function addJwtAuth(route, jwt) {
  return withSecurity(route, 'jwtAuth', { enabled: true, ...jwt });
}

// ---------------------------------------------------------------------------------------------
// Utilities and validators
// ---------------------------------------------------------------------------------------------

function isPlainObject(v) {
  return v !== null && typeof v === 'object' && !Array.isArray(v) && !(v instanceof RegExp) && typeof v !== 'function';
}

function deepMerge(base, override) {
  const out = { ...base };
  for (const [k, v] of Object.entries(override || {})) {
    out[k] = isPlainObject(v) && isPlainObject(base[k]) ? deepMerge(base[k], v) : v;
  }
  return out;
}

/** Deep copy of `baseRoute` with `overrideRoute` merged in (override wins; arrays are replaced). */
function mergeRouteConfigs(baseRoute, overrideRoute) {
  return deepMerge(cloneRoute(baseRoute), overrideRoute || {});
}

function cloneRoute(route) {
  const copy = (v) => (Array.isArray(v) ? v.map(copy) : isPlainObject(v) ? Object.fromEntries(Object.entries(v).map(([k, x]) => [k, copy(x)])) : v);
  return copy(route);
}

let routeCounter = 0;
function generateRouteId(route) {
  routeCounter += 1;
  const base = (route && route.name ? String(route.name) : 'route').toLowerCase().replace(/[^a-z0-9]+/g, '-').replace(/^-|-$/g, '');
  return `${base || 'route'}-${Date.now().toString(36)}-${routeCounter}`;
}

function domainMatches(pattern, domain) {
  const norm = (s) => String(s).trim().replace(/\.+$/, '').toLowerCase();
  const p = norm(pattern);
  const d = norm(domain);
  if (!p.includes('*')) return p === d;
  const re = new RegExp(`^${p.split('*').map((x) => x.replace(/[.+?^${}()|[\]\\]/g, '\\$&')).join('.*')}$`);
  return re.test(d);
}

/** Whether the route's `match.domains` (absent = all) accepts `domain` (spec §6.2 globs). */
function routeMatchesDomain(route, domain) {
  const domains = route && route.match && route.match.domains;
  if (domains === undefined || domains === null) return true;
  return [].concat(domains).some((p) => domainMatches(p, domain));
}

function portSpecContains(spec, port) {
  if (typeof spec === 'number') return spec === port;
  if (Array.isArray(spec)) return spec.some((s) => portSpecContains(s, port));
  if (spec && typeof spec === 'object') return spec.from <= port && port <= spec.to;
  return false;
}

function routeMatchesPort(route, port) {
  return portSpecContains(route && route.match && route.match.ports, port);
}

function isValidPort(port) {
  return Number.isInteger(port) && port >= 1 && port <= 65535;
}

function isValidDomain(domain) {
  if (typeof domain !== 'string' || domain.length === 0 || domain.length > 253) return false;
  if (domain === '*') return true;
  return /^(\*\.)?([a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?)(\.[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?)*\.?$/i.test(domain) || /^[a-z0-9.-]*\*[a-z0-9.*-]*$/i.test(domain);
}

function validateRouteMatch(match) {
  const errors = [];
  if (!match || typeof match !== 'object') return { valid: false, errors: ['match is required'] };
  const ports = match.ports;
  if (ports === undefined) errors.push('ports is required');
  else {
    const list = Array.isArray(ports) ? ports : [ports];
    if (list.length === 0) errors.push('ports must not be empty');
    for (const p of list) {
      if (typeof p === 'number') {
        if (!isValidPort(p)) errors.push(`invalid port: ${p}`);
      } else if (p && typeof p === 'object') {
        if (!isValidPort(p.from) || !isValidPort(p.to) || p.from > p.to) errors.push(`invalid port range: ${JSON.stringify(p)}`);
      } else if (typeof p !== 'function') {
        errors.push(`invalid port: ${JSON.stringify(p)}`);
      }
    }
  }
  if (match.domains !== undefined) {
    for (const d of [].concat(match.domains)) if (!isValidDomain(d)) errors.push(`invalid domain: ${d}`);
  }
  return { valid: errors.length === 0, errors };
}

function validateRouteAction(action) {
  const errors = [];
  if (!action || typeof action !== 'object') return { valid: false, errors: ['action is required'] };
  if (action.type === 'forward') {
    const targets = action.targets || (action.target ? [action.target] : []);
    if (targets.length === 0) errors.push('forward action requires target or targets');
    for (const t of targets) {
      if (!t || t.host === undefined) errors.push('target host is required');
      if (!t || t.port === undefined) errors.push('target port is required');
      else if (typeof t.port === 'number' && !isValidPort(t.port)) errors.push(`invalid target port: ${t.port}`);
    }
  } else if (action.type === 'socket-handler') {
    if (typeof action.socketHandler !== 'function') errors.push('socket-handler action requires a socketHandler function');
  } else {
    errors.push(`invalid action type: ${action.type}`);
  }
  if (action.tls && !['passthrough', 'terminate', 'terminate-and-reencrypt'].includes(action.tls.mode)) {
    errors.push(`invalid tls mode: ${action.tls.mode}`);
  }
  return { valid: errors.length === 0, errors };
}

function validateRouteConfig(route) {
  const m = validateRouteMatch(route && route.match);
  const a = validateRouteAction(route && route.action);
  const errors = [...m.errors, ...a.errors];
  return { valid: errors.length === 0, errors };
}

function validateRoutes(routes) {
  const errors = [];
  (routes || []).forEach((r, i) => {
    const v = validateRouteConfig(r);
    if (!v.valid) errors.push({ index: i, route: r, errors: v.errors });
  });
  return { valid: errors.length === 0, errors };
}

function assertValidRoute(route) {
  const v = validateRouteConfig(route);
  if (!v.valid) throw new Error(`Invalid route "${(route && route.name) || ''}": ${v.errors.join(', ')}`);
  return route;
}

module.exports = {
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
  createNfTablesTerminateRoute,
  createCompleteNfTablesHttpsServer,
  addRateLimiting,
  addBasicAuth,
  addJwtAuth,
  mergeRouteConfigs,
  cloneRoute,
  generateRouteId,
  routeMatchesDomain,
  routeMatchesPort,
  isValidPort,
  isValidDomain,
  validateRouteMatch,
  validateRouteAction,
  validateRouteConfig,
  validateRoutes,
  assertValidRoute,
};
