'use strict';
// smartproxy-native: the @push.rocks/smartproxy 19-21 API on a Rust engine.
// CommonJS with one `exports.X =` line per export, so ESM consumers can
// `import { SmartProxy } from '...'` (named exports found by Node's cjs-module-lexer).

const { SmartProxy } = require('./lib/smart-proxy.js');
const { notSupported } = require('./lib/errors.js');

function pending(name, why) {
  const fn = function () {
    throw notSupported(`${name}${why ? ` (${why})` : ''}`);
  };
  Object.defineProperty(fn, 'name', { value: name });
  return fn;
}

function pendingClass(name) {
  const C = class {
    constructor() {
      throw notSupported(`${name} (an upstream internal; the engine is in Rust)`);
    }
  };
  Object.defineProperty(C, 'name', { value: name });
  return C;
}

const HELPER = 'route helper';
const SocketHandlers = {
  echo: pending('SocketHandlers.echo', 'socket-handler routes'),
  proxy: pending('SocketHandlers.proxy', 'socket-handler routes'),
  lineProtocol: pending('SocketHandlers.lineProtocol', 'socket-handler routes'),
  httpResponse: pending('SocketHandlers.httpResponse', 'socket-handler routes'),
  block: pending('SocketHandlers.block', 'socket-handler routes'),
  httpBlock: pending('SocketHandlers.httpBlock', 'socket-handler routes'),
  httpRedirect: pending('SocketHandlers.httpRedirect', 'socket-handler routes'),
  httpServer: pending('SocketHandlers.httpServer', 'socket-handler routes'),
};

exports.SmartProxy = SmartProxy;
exports.SocketHandlers = SocketHandlers;

// Route helpers, validators and utilities (spec §5).
exports.createHttpRoute = pending('createHttpRoute', HELPER);
exports.createHttpsTerminateRoute = pending('createHttpsTerminateRoute', HELPER);
exports.createHttpsPassthroughRoute = pending('createHttpsPassthroughRoute', HELPER);
exports.createHttpToHttpsRedirect = pending('createHttpToHttpsRedirect', HELPER);
exports.createCompleteHttpsServer = pending('createCompleteHttpsServer', HELPER);
exports.createLoadBalancerRoute = pending('createLoadBalancerRoute', HELPER);
exports.createApiRoute = pending('createApiRoute', HELPER);
exports.createApiGatewayRoute = pending('createApiGatewayRoute', HELPER);
exports.createWebSocketRoute = pending('createWebSocketRoute', HELPER);
exports.createSocketHandlerRoute = pending('createSocketHandlerRoute', HELPER);
exports.createPortMappingRoute = pending('createPortMappingRoute', HELPER);
exports.createOffsetPortMappingRoute = pending('createOffsetPortMappingRoute', HELPER);
exports.createDynamicRoute = pending('createDynamicRoute', HELPER);
exports.createSmartLoadBalancer = pending('createSmartLoadBalancer', HELPER);
exports.createNfTablesRoute = pending('createNfTablesRoute', HELPER);
exports.createNfTablesTerminateRoute = pending('createNfTablesTerminateRoute', HELPER);
exports.createCompleteNfTablesHttpsServer = pending('createCompleteNfTablesHttpsServer', HELPER);
exports.addRateLimiting = pending('addRateLimiting', HELPER);
exports.addBasicAuth = pending('addBasicAuth', HELPER);
exports.addJwtAuth = pending('addJwtAuth', HELPER);
exports.mergeRouteConfigs = pending('mergeRouteConfigs', 'route utility');
exports.routeMatchesDomain = pending('routeMatchesDomain', 'route utility');
exports.routeMatchesPort = pending('routeMatchesPort', 'route utility');
exports.isValidPort = pending('isValidPort', 'route validator');
exports.isValidDomain = pending('isValidDomain', 'route validator');
exports.validateRouteMatch = pending('validateRouteMatch', 'route validator');
exports.validateRouteAction = pending('validateRouteAction', 'route validator');

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
