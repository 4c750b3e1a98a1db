'use strict';
// smartproxy-native: the @push.rocks/smartproxy 19-21 API on a Rust engine.
// CommonJS with one `exports.X =` line per export, so ESM consumers can
// `import { SmartProxy } from '...'` (named exports found by Node's cjs-module-lexer).

const { SmartProxy } = require('./lib/smart-proxy.js');
const { notSupported } = require('./lib/errors.js');

function pendingClass(name) {
  const C = class {
    constructor() {
      throw notSupported(`${name} (an upstream internal; the engine is in Rust)`);
    }
  };
  Object.defineProperty(C, 'name', { value: name });
  return C;
}

const { SocketHandlers } = require('./lib/socket-handlers.js');
const helpers = require('./lib/route-helpers.js');

exports.SmartProxy = SmartProxy;
exports.SocketHandlers = SocketHandlers;

// Route helpers, validators and utilities (spec §5).
exports.createHttpRoute = helpers.createHttpRoute;
exports.createHttpsTerminateRoute = helpers.createHttpsTerminateRoute;
exports.createHttpsPassthroughRoute = helpers.createHttpsPassthroughRoute;
exports.createHttpToHttpsRedirect = helpers.createHttpToHttpsRedirect;
exports.createCompleteHttpsServer = helpers.createCompleteHttpsServer;
exports.createLoadBalancerRoute = helpers.createLoadBalancerRoute;
exports.createApiRoute = helpers.createApiRoute;
exports.createApiGatewayRoute = helpers.createApiGatewayRoute;
exports.createWebSocketRoute = helpers.createWebSocketRoute;
exports.createSocketHandlerRoute = helpers.createSocketHandlerRoute;
exports.createPortMappingRoute = helpers.createPortMappingRoute;
exports.createOffsetPortMappingRoute = helpers.createOffsetPortMappingRoute;
exports.createDynamicRoute = helpers.createDynamicRoute;
exports.createSmartLoadBalancer = helpers.createSmartLoadBalancer;
exports.createNfTablesRoute = helpers.createNfTablesRoute;
exports.createNfTablesTerminateRoute = helpers.createNfTablesTerminateRoute;
exports.createCompleteNfTablesHttpsServer = helpers.createCompleteNfTablesHttpsServer;
exports.addRateLimiting = helpers.addRateLimiting;
exports.addBasicAuth = helpers.addBasicAuth;
exports.addJwtAuth = helpers.addJwtAuth;
exports.mergeRouteConfigs = helpers.mergeRouteConfigs;
exports.cloneRoute = helpers.cloneRoute;
exports.generateRouteId = helpers.generateRouteId;
exports.routeMatchesDomain = helpers.routeMatchesDomain;
exports.routeMatchesPort = helpers.routeMatchesPort;
exports.isValidPort = helpers.isValidPort;
exports.isValidDomain = helpers.isValidDomain;
exports.validateRouteMatch = helpers.validateRouteMatch;
exports.validateRouteAction = helpers.validateRouteAction;
exports.validateRouteConfig = helpers.validateRouteConfig;
exports.validateRoutes = helpers.validateRoutes;
exports.assertValidRoute = helpers.assertValidRoute;

// Upstream's internal components are exported there; here the engine is Rust.
exports.ConnectionManager = pendingClass('ConnectionManager');
exports.SecurityManager = pendingClass('SecurityManager');
exports.TimeoutManager = pendingClass('TimeoutManager');
exports.TlsManager = pendingClass('TlsManager');
exports.HttpProxyBridge = pendingClass('HttpProxyBridge');
exports.RouteConnectionHandler = pendingClass('RouteConnectionHandler');
exports.SmartCertManager = pendingClass('SmartCertManager');
exports.RouteManager = pendingClass('RouteManager');
exports.HttpProxyRouteManager = pendingClass('HttpProxyRouteManager');
exports.HttpProxy = pendingClass('HttpProxy');
exports.CertificateManager = pendingClass('CertificateManager');
exports.ConnectionPool = pendingClass('ConnectionPool');
exports.RequestHandler = pendingClass('RequestHandler');
exports.WebSocketHandler = pendingClass('WebSocketHandler');
exports.SniHandler = pendingClass('SniHandler');
exports.NfTablesProxy = pendingClass('NfTablesProxy');
