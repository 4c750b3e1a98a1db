'use strict';
// The public SmartProxy class: the upstream API over the native engine. It keeps `settings`
// (upstream's defaults filled in), serialises configuration for the engine, and maps errors.
// No connection ever passes through JavaScript here.

const { EventEmitter } = require('node:events');
const native = require('../binding.js');
const { callNative, notSupported } = require('./errors.js');
const { routesToJson, optionsToJson, defined } = require('./normalize.js');

const ACME_DEFAULTS = {
  enabled: true,
  port: 80,
  useProduction: false,
  renewThresholdDays: 30,
  autoRenew: true,
  certificateStore: './certs',
  skipConfiguredCerts: false,
  renewCheckIntervalHours: 24,
};

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
      const acme = { ...ACME_DEFAULTS, ...defined(settings.acme) };
      if (!acme.email && acme.accountEmail) acme.email = acme.accountEmail;
      settings.acme = acme;
    }
    settings.metrics = { ...METRICS_DEFAULTS, ...defined(settings.metrics) };
    /** Options with upstream's defaults filled in. */
    this.settings = settings;
    this._native = new native.NativeProxy();
    // Route updates are serialised, as upstream serialises them with a mutex.
    this._queue = Promise.resolve();
  }

  _enqueue(task) {
    const run = this._queue.then(task, task);
    this._queue = run.catch(() => {});
    return run;
  }

  _onEvent(ev) {
    if (!ev || ev.kind !== 'log') return;
    if (ev.level === 'debug' && !this.settings.enableDetailedLogging) return;
    const line = `[smartproxy] ${ev.message}`;
    if (ev.level === 'error') console.error(line);
    else if (ev.level === 'warn') console.warn(line);
    else console.log(line);
  }

  /** Validates the routes and listens on every port they use. */
  start() {
    return this._enqueue(async () => {
      const opts = optionsToJson(this.settings);
      const routes = routesToJson(this.settings.routes);
      const warnings = await callNative(() => this._native.start(opts.json, routes.json, (ev) => this._onEvent(ev)));
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
      const routes = routesToJson(newRoutes);
      await callNative(() => this._native.updateRoutes(routes.json));
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

  /** The grouped metrics API (connections and totals; throughput sampling is not built yet). */
  getMetrics() {
    const stats = () => this._native.getStatistics();
    const unsupported = (name) => () => {
      throw notSupported(`metrics.${name}`);
    };
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
        instant: unsupported('throughput.instant'),
        recent: unsupported('throughput.recent'),
        average: unsupported('throughput.average'),
        custom: unsupported('throughput.custom'),
        history: unsupported('throughput.history'),
        byRoute: unsupported('throughput.byRoute'),
        byIP: unsupported('throughput.byIP'),
      },
      requests: {
        perSecond: unsupported('requests.perSecond'),
        perMinute: unsupported('requests.perMinute'),
        total: unsupported('requests.total'),
      },
      totals: {
        bytesIn: () => stats().bytesIn,
        bytesOut: () => stats().bytesOut,
        connections: () => stats().totalConnections,
      },
      percentiles: {
        connectionDuration: unsupported('percentiles.connectionDuration'),
        bytesTransferred: unsupported('percentiles.bytesTransferred'),
      },
    };
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

  /** No certificate manager exists yet (no route can use ACME), so there is no status. */
  getCertificateStatus(_routeName) {
    return undefined;
  }

  async provisionCertificate(_routeName) {
    throw notSupported('provisionCertificate (ACME)');
  }

  async renewCertificate(_routeName) {
    throw notSupported('renewCertificate (ACME)');
  }

  /** No route can use nftables yet (the engine refuses them), so no rule set exists. */
  async getNfTablesStatus() {
    return {};
  }
}

module.exports = { SmartProxy };
