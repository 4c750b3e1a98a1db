'use strict';
// The public SmartProxy class: the upstream API over the native engine. It keeps `settings`
// (upstream's defaults filled in), serialises configuration for the engine, and maps errors.
// No connection ever passes through JavaScript here.

const { EventEmitter } = require('node:events');
const net = require('node:net');
const native = require('../binding.js');
const { callNative, notSupported } = require('./errors.js');
const { routesToJson, optionsToJson, defined, FunctionRegistry } = require('./normalize.js');

const METRICS_DEFAULTS = { enabled: true, sampleIntervalMs: 1000, retentionSeconds: 3600 };

function isIpLike(d) {
  return /^[0-9.]+$/.test(d) || d.includes(':');
}

class SmartProxy extends EventEmitter {
  constructor(settingsArg) {
    super();
    if (!settingsArg || typeof settingsArg !== 'object') {
      throw new TypeError('SmartProxy: an options object ({ routes, ... }) is required');
    }
    const settings = { ...native.engineDefaults(), ...defined(settingsArg) };
    settings.routes = settingsArg.routes ?? [];
    if (settings.acme) {
      const acme = { ...native.acmeDefaults(), ...defined(settings.acme) };
      if (!acme.email && acme.accountEmail) acme.email = acme.accountEmail;
      settings.acme = acme;
    }
    settings.metrics = { ...METRICS_DEFAULTS, ...defined(settings.metrics) };
    /** Options with upstream's defaults filled in. */
    this.settings = settings;
    this._native = new native.NativeProxy();
    this._functions = new FunctionRegistry();
    // Route updates are serialised, as upstream serialises them with a mutex.
    this._queue = Promise.resolve();
  }

  _enqueue(task) {
    const run = this._queue.then(task, task);
    this._queue = run.catch(() => {});
    return run;
  }

  _onEvent(ev) {
    if (ev && ev.kind && ev.kind.startsWith('certificate-') && ev.data) {
      // certificate-issued / -renewed / -failed: { routeName, domain, expiryDate, source, error? }
      const d = JSON.parse(ev.data);
      const payload = { routeName: d.routeName, domain: d.domain, expiryDate: d.expiryDate == null ? undefined : new Date(d.expiryDate), source: d.source };
      if (d.error) payload.error = d.error;
      this.emit(ev.kind, payload);
      return;
    }
    if (!ev || ev.kind !== 'log') return;
    if (ev.level === 'debug' && !this.settings.enableDetailedLogging) return;
    // Structured, for embedders' own loggers (with the route and client when the line is about
    // one connection); the console line stays unless turned off.
    const about = ev.data ? JSON.parse(ev.data) : {};
    this.emit('log', { level: ev.level, message: ev.message, time: new Date(), route: about.route ?? undefined, client: about.client ?? undefined });
    if (this.settings.consoleLog === false) return;
    const line = `[smartproxy] ${ev.message}`;
    if (ev.level === 'error') console.error(line);
    else if (ev.level === 'warn') console.warn(line);
    else console.log(line);
  }

  /**
   * A connection for a socket-handler route: claim the socket (ownership passes to JS), wrap
   * it, and run the handler. A throwing or rejecting handler closes that connection only.
   */
  _onSocket(ev) {
    const context = JSON.parse(ev.context);
    const handler = this._functions.get(ev.handlerId);
    const fd = this._native.claimSocket(ev.connId);
    if (fd < 0) return; // expired before we got to it
    let socket;
    try {
      socket = new net.Socket({ fd, readable: true, writable: true, allowHalfOpen: false });
    } catch (err) {
      console.error(`[smartproxy] cannot wrap the socket of connection ${ev.connId}: ${err.message}`);
      this._native.socketClosed(ev.connId, true);
      return;
    }
    if (context.proxyProtocol) {
      // Behind a load balancer's PROXY protocol header: the socket reports the real client,
      // as upstream's WrappedSocket did.
      Object.defineProperties(socket, {
        remoteAddress: { value: context.clientIp, configurable: true },
        remotePort: { value: context.clientPort, configurable: true },
        remoteFamily: { value: net.isIPv6(context.clientIp) ? 'IPv6' : 'IPv4', configurable: true },
      });
    }
    let failed = false;
    socket.once('close', () => this._native.socketClosed(ev.connId, failed));
    socket.on('error', () => {});
    const routeName = context.routeName || '(unnamed)';
    const fail = (err) => {
      failed = true;
      console.error(`[smartproxy] socket handler of route "${routeName}" failed: ${err && err.stack ? err.stack : err}`);
      socket.destroy();
    };
    if (typeof handler !== 'function') return fail(new Error('socket handler is gone'));
    try {
      const r = handler(socket, context);
      if (r && typeof r.then === 'function') r.then(undefined, fail);
    } catch (err) {
      fail(err);
    }
  }

  /**
   * A target host/port function: called with the route context. A plain result goes back as
   * is (no Promise round trip); a Promise is awaited by the engine; a throw becomes a rejection.
   */
  _onCall(fnId, context) {
    const fn = this._functions.get(fnId);
    if (typeof fn !== 'function') return Promise.reject(new Error(`function ${fnId} is gone`));
    let result;
    try {
      const arg = JSON.parse(context);
      // Several arguments travel as { $args: [...] } (acme.dns01's setRecord(name, value)).
      result = arg && Array.isArray(arg.$args) ? fn(...arg.$args) : fn(arg);
    } catch (err) {
      return Promise.reject(err);
    }
    // Results travel as JSON text; `undefined` becomes null (the engine reports the wrong type).
    const encode = (v) => (v === undefined ? 'null' : JSON.stringify(v));
    return result && typeof result.then === 'function' ? Promise.resolve(result).then(encode) : encode(result);
  }

  /** Validates the routes and listens on every port they use. */
  start() {
    return this._enqueue(async () => {
      this._functions.begin();
      const opts = optionsToJson(this.settings, this._functions);
      const routes = routesToJson(this.settings.routes, this._functions);
      const warnings = await callNative(() =>
        this._native.start(
          opts,
          routes,
          (ev) => this._onEvent(ev),
          (ev) => this._onSocket(ev),
          (fnId, context) => this._onCall(fnId, context),
        ),
      );
      this._functions.commit();
      for (const w of warnings) console.warn(`[smartproxy] ${w}`);
    });
  }

  /** Closes listeners and connections; resolves once the engine's threads are gone. */
  stop() {
    return this._enqueue(() => callNative(() => this._native.stop()));
  }

  /** Replaces all routes atomically: new ports are bound, unused ones released, live connections kept. */
  updateRoutes(newRoutes) {
    return this._enqueue(async () => {
      this._functions.begin();
      // Functions of the options (certProvisionFunction) stay callable for the proxy's life.
      if (typeof this.settings.certProvisionFunction === 'function') this._functions.register(this.settings.certProvisionFunction);
      const routes = routesToJson(newRoutes, this._functions);
      // Before start(), the routes are only validated: against the options start() will use.
      const options = this._native.isRunning() ? undefined : optionsToJson(this.settings, this._functions);
      await callNative(() => this._native.updateRoutes(routes, options));
      this._functions.commit();
      this.settings.routes = newRoutes;
    });
  }

  addListeningPort(port) {
    return this._enqueue(() => callNative(() => this._native.addListeningPort(port)));
  }

  removeListeningPort(port) {
    return this._enqueue(() => callNative(() => this._native.removeListeningPort(port)));
  }

  getListeningPorts() {
    return this._native.getListeningPorts();
  }

  /** Connection counts and termination reasons (upstream's legacy statistics shape). */
  getStatistics() {
    const s = this._native.getStatistics();
    return {
      activeConnections: s.activeConnections,
      totalConnections: s.totalConnections,
      tlsConnections: s.tlsConnections,
      nonTlsConnections: s.nonTlsConnections,
      keepAliveConnections: s.keepAliveConnections,
      httpProxyConnections: 0,
      terminationStats: s.terminationStats,
      acmeEnabled: Boolean(this.settings.acme && this.settings.acme.enabled),
      port80HandlerPort: null,
      routes: s.routes,
      listeningPorts: s.listeningPorts,
      activePorts: s.listeningPorts.length,
      bytesIn: s.bytesIn,
      bytesOut: s.bytesOut,
    };
  }

  /**
   * The grouped metrics API (upstream's IMetrics). Reads are synchronous and current: the
   * engine samples traffic once a second in the same process.
   */
  getMetrics() {
    const stats = () => this._native.getStatistics();
    const q = (query, seconds = 1) => this._native.metrics(query, Math.max(1, Math.floor(Number(seconds) || 1)));
    const rates = (query, seconds) => new Map(q(query, seconds));
    return {
      connections: {
        active: () => stats().activeConnections,
        total: () => stats().totalConnections,
        byRoute: () => new Map(stats().byRoute),
        byIP: () => new Map(stats().byIP),
        topIPs: (limit = 10) =>
          stats()
            .byIP.map(([ip, count]) => ({ ip, count }))
            .sort((a, b) => b.count - a.count)
            .slice(0, limit),
      },
      throughput: {
        instant: () => q('throughput', 1),
        recent: () => q('throughput', 10),
        average: () => q('throughput', 60),
        custom: (seconds) => q('throughput', seconds),
        history: (seconds) => q('history', seconds),
        byRoute: (windowSeconds = 1) => rates('byRoute', windowSeconds),
        byIP: (windowSeconds = 1) => rates('byIP', windowSeconds),
      },
      requests: {
        perSecond: () => q('requests').perSecond,
        perMinute: () => q('requests').perMinute,
        total: () => q('requests').total,
      },
      totals: {
        bytesIn: () => stats().bytesIn,
        bytesOut: () => stats().bytesOut,
        connections: () => stats().totalConnections,
      },
      percentiles: {
        connectionDuration: () => q('percentiles').connectionDuration,
        bytesTransferred: () => q('percentiles').bytesTransferred,
      },
    };
  }

  /** The access log reopens its file (call after a log rotation moved it away). */
  reopenLogs() {
    this._native.reopenLogs();
  }

  /** The Prometheus text exposition (what the metrics listener serves at `prometheusPath`). */
  getPrometheusMetrics() {
    return this._native.prometheusMetrics(this.settings.metrics.prometheusPrefix ?? 'smartproxy_');
  }

  /** Domains of `certificate: 'auto'` routes that ACME HTTP-01 can serve (no wildcards, IPs or localhost). */
  getEligibleDomainsForCertificates() {
    const out = new Set();
    for (const r of this.settings.routes) {
      const tls = r && r.action && r.action.tls;
      if (!tls || tls.certificate !== 'auto' || !r.match || !r.match.domains) continue;
      const list = Array.isArray(r.match.domains) ? r.match.domains : [r.match.domains];
      for (const d of list) {
        if (typeof d === 'string' && !d.includes('*') && !isIpLike(d) && d !== 'localhost') out.add(d);
      }
    }
    return [...out];
  }

  /**
   * The certificate status of a route that terminates TLS: `'auto'` routes report their ACME
   * state, routes with a configured certificate its X.509 validity (`source: 'static'`).
   * `undefined` for other routes and while the proxy is stopped.
   */
  getCertificateStatus(routeName) {
    const s = this._native.certificateStatus(routeName);
    if (!s) return undefined;
    const out = { domain: s.domain, status: s.status, source: s.source };
    if (s.expiryDate != null) out.expiryDate = new Date(s.expiryDate);
    if (s.issueDate != null) out.issueDate = new Date(s.issueDate);
    if (s.error) out.error = s.error;
    return out;
  }

  /** Orders the certificate of a `certificate: 'auto'` route now; resolves once it is served. */
  async provisionCertificate(routeName) {
    await callNative(() => this._native.provisionCertificate(routeName));
  }

  /** Renews the certificate of a `certificate: 'auto'` route now (a new order). */
  async renewCertificate(routeName) {
    await callNative(() => this._native.provisionCertificate(routeName));
  }

  /** No route can use nftables yet (the engine refuses them), so no rule set exists. */
  async getNfTablesStatus() {
    return {};
  }
}

module.exports = { SmartProxy };
