// Public types of smartproxy-native: the @push.rocks/smartproxy 19.x-21.x surface, written by
// hand to match upstream (see ../shared/spec/upstream-api.md and docs/compatibility.md).
// The generated binding.d.ts describes only the internal native boundary.
/// <reference types="node" />
import type * as net from 'node:net';
import { EventEmitter } from 'node:events';

// ---------------------------------------------------------------------------------------------
// Route model (spec §3)
// ---------------------------------------------------------------------------------------------

export type TRouteActionType = 'forward' | 'socket-handler';
export type TTlsMode = 'passthrough' | 'terminate' | 'terminate-and-reencrypt';
/** A port, ports, ranges, or a mixed array of ports and ranges (1-65535). */
export type TPortRange = number | Array<number | { from: number; to: number }>;

/** Passed to target functions and socket handlers. */
export interface IRouteContext {
  port: number;
  domain?: string;
  /** The client: behind a trusted load balancer, the one its PROXY protocol header names. */
  clientIp: string;
  /** smartproxy-native: the client's port (likewise). */
  clientPort?: number;
  /** smartproxy-native: the PROXY protocol header the connection came with (v2 TLVs: ALPN,
   * authority and unique id decoded; every TLV's value in hex). */
  proxyProtocol?: { version: 'v1' | 'v2'; alpn?: string; authority?: string; uniqueId?: string; tlvs: { type: number; value: string }[] };
  serverIp: string;
  path?: string;
  query?: string;
  headers?: Record<string, string>;
  isTls: boolean;
  tlsVersion?: string;
  routeName?: string;
  routeId?: string;
  targetHost?: string | string[];
  targetPort?: number;
  timestamp: number;
  connectionId: string;
}

export interface IHttpRouteContext extends IRouteContext {
  req?: any;
  res?: any;
  method?: string;
}

export interface IHttp2RouteContext extends IRouteContext {
  stream?: any;
  headers?: Record<string, string>;
}

export type TSocketHandler = (socket: net.Socket, context: IRouteContext) => void | Promise<void>;

export interface ITargetMatch {
  ports?: number[];
  path?: string;
  headers?: Record<string, string | RegExp>;
  method?: string[];
}

export interface IRouteTarget {
  host: string | string[] | ((context: IRouteContext) => string | string[] | Promise<string | string[]>);
  port: number | 'preserve' | ((context: IRouteContext) => number | Promise<number>);
  /** 20+: sub-match inside the route; the first matching target (by priority) wins. */
  match?: ITargetMatch;
  priority?: number;
  tls?: IRouteTls;
  websocket?: IRouteWebSocket;
  loadBalancing?: IRouteLoadBalancing;
  /** PROXY protocol header to this target's backend connections (overrides the route's). */
  sendProxyProtocol?: TSendProxyProtocol;
  headers?: IRouteHeaders;
  advanced?: IRouteAdvanced;
}

export interface IRouteMatch {
  ports: TPortRange;
  domains?: string | string[];
  path?: string;
  clientIp?: string[];
  tlsVersion?: string[];
  headers?: Record<string, string | RegExp>;
}

export interface IRouteAcme {
  email: string;
  useProduction?: boolean;
  challengePort?: number;
  renewBeforeDays?: number;
  /** smartproxy-native: the challenge for this route (default: `acme.challenge`). `'dns-01'` needs `acme.dns01`. */
  challenge?: TAcmeChallenge;
}

/** How the CA validates a name: `'http-01'` and `'tls-alpn-01'` are answered by the proxy, `'dns-01'` through `acme.dns01`. */
export type TAcmeChallenge = 'http-01' | 'tls-alpn-01' | 'dns-01';

export interface IRouteTls {
  mode: TTlsMode;
  certificate?: 'auto' | { key: string; cert: string; ca?: string; keyFile?: string; certFile?: string };
  acme?: IRouteAcme;
  versions?: string[];
  ciphers?: string;
  honorCipherOrder?: boolean;
  sessionTimeout?: number;
}

export interface IRouteAuthentication {
  type: 'basic' | 'digest' | 'oauth' | 'jwt';
  credentials?: Array<{ username: string; password: string }>;
  realm?: string;
  jwtSecret?: string;
  jwtIssuer?: string;
  oauthProvider?: string;
  oauthClientId?: string;
  oauthClientSecret?: string;
  oauthRedirectUri?: string;
  options?: Record<string, unknown>;
}

export interface IRouteRateLimit {
  enabled: boolean;
  maxRequests: number;
  /** Seconds. */
  window: number;
  keyBy?: 'ip' | 'path' | 'header';
  headerName?: string;
  errorMessage?: string;
}

export interface IRouteSecurity {
  ipAllowList?: string[];
  ipBlockList?: string[];
  maxConnections?: number;
  authentication?: IRouteAuthentication;
  rateLimit?: IRouteRateLimit;
  basicAuth?: { enabled: boolean; users: Array<{ username: string; password: string }>; realm?: string; excludePaths?: string[] };
  jwtAuth?: { enabled: boolean; secret: string; algorithm?: string; issuer?: string; audience?: string; expiresIn?: number; excludePaths?: string[] };
}

export interface IRouteCors {
  enabled: boolean;
  allowOrigin?: string | string[];
  allowMethods?: string;
  allowHeaders?: string;
  allowCredentials?: boolean;
  exposeHeaders?: string;
  maxAge?: number;
  preflight?: boolean;
}

export interface IRouteHeaders {
  request?: Record<string, string>;
  response?: Record<string, string>;
  cors?: IRouteCors;
}

export interface IRouteWebSocket {
  enabled: boolean;
  pingInterval?: number;
  pingTimeout?: number;
  maxPayloadSize?: number;
  customHeaders?: Record<string, string>;
  subprotocols?: string[];
  rewritePath?: string;
  allowedOrigins?: string[];
  authenticateRequest?: boolean;
  enableCompression?: boolean;
}

export interface IRouteLoadBalancing {
  algorithm: 'round-robin' | 'least-connections' | 'ip-hash';
  healthCheck?: { path: string; interval: number; timeout: number; unhealthyThreshold: number; healthyThreshold: number };
}

export interface IRouteAdvanced {
  timeout?: number;
  headers?: Record<string, string>;
  keepAlive?: boolean;
  staticFiles?: { root: string; index?: string[]; headers?: Record<string, string>; directory?: string; indexFiles?: string[]; cacheControl?: string; expires?: number; followSymlinks?: boolean; disableDirectoryListing?: boolean };
  /** The proxy answers every request of the route with this (no backend is asked). `headers` and `body` may be left out here. */
  testResponse?: { status: number; headers?: Record<string, string>; body?: string };
  urlRewrite?: { pattern: string; target: string; flags?: string; onlyRewritePath?: boolean };
}

export interface INfTablesOptions {
  preserveSourceIP?: boolean;
  protocol?: 'tcp' | 'udp' | 'all';
  maxRate?: string;
  priority?: number;
  tableName?: string;
  useIPSets?: boolean;
  useAdvancedNAT?: boolean;
}

export interface IRouteAction {
  type: TRouteActionType;
  /** 19.x: a single destination. Accepted as `targets: [target]`. */
  target?: IRouteTarget;
  /** 20+: destinations, chosen by `match` and `priority`. */
  targets?: IRouteTarget[];
  tls?: IRouteTls;
  websocket?: IRouteWebSocket;
  loadBalancing?: IRouteLoadBalancing;
  socketHandler?: TSocketHandler;
  forwardingEngine?: 'node' | 'nftables';
  nftables?: INfTablesOptions;
  advanced?: IRouteAdvanced;
  /**
   * `backendProtocol` (upstream). smartproxy-native adds `rejectUnauthorized` (verify re-encrypted
   * backends, default false) and `ca` (extra PEM roots for that check).
   */
  options?: { backendProtocol?: 'http1' | 'http2'; rejectUnauthorized?: boolean; ca?: string; [key: string]: any };
  /** PROXY protocol header to the backend (overrides the global option). Layer-4 routes only so far. */
  sendProxyProtocol?: TSendProxyProtocol;
}

export interface IRouteConfig {
  id?: string;
  match: IRouteMatch;
  action: IRouteAction;
  name?: string;
  description?: string;
  /** Higher first; default 0; ties keep configuration order. */
  priority?: number;
  tags?: string[];
  enabled?: boolean;
  security?: IRouteSecurity;
  headers?: IRouteHeaders;
}

// ---------------------------------------------------------------------------------------------
// Options (spec §2)
// ---------------------------------------------------------------------------------------------

export interface IAcmeOptions {
  enabled?: boolean;
  email?: string;
  accountEmail?: string;
  environment?: 'production' | 'staging';
  port?: number;
  useProduction?: boolean;
  renewThresholdDays?: number;
  autoRenew?: boolean;
  certificateStore?: string;
  skipConfiguredCerts?: boolean;
  renewCheckIntervalHours?: number;
  routeForwards?: any[];
  /** smartproxy-native: any RFC 8555 directory (ZeroSSL, step-ca, Pebble…); overrides `useProduction`. Default: Let's Encrypt staging, or production with `useProduction`. */
  directoryUrl?: string;
  /** smartproxy-native: PEM of the roots that sign the directory's HTTPS certificate, trusted besides the system's. */
  directoryCa?: string;
  /** smartproxy-native: the challenge of every `'auto'` route (default `'http-01'`). */
  challenge?: TAcmeChallenge;
  /**
   * smartproxy-native: DNS-01 (needed for wildcard names) through your DNS provider's API.
   * `name` is the full record name without a trailing dot (`_acme-challenge.example.com`, also
   * for `*.example.com`), `value` the TXT value. Records are removed after validation, also when
   * it fails.
   */
  dns01?: {
    setRecord: (name: string, value: string) => void | Promise<void>;
    removeRecord: (name: string, value: string) => void | Promise<void>;
  };
}

/** `@tsclass/tsclass` network.ICert. */
export interface ICert {
  id: string;
  domainName: string;
  created: number;
  privateKey: string;
  publicKey: string;
  csr: string;
  validUntil: number;
}

export type TSmartProxyCertProvisionObject = ICert | 'http01';

/** `true` is v1 (as upstream); smartproxy-native adds `'v1'` and `'v2'`. */
export type TSendProxyProtocol = boolean | 'v1' | 'v2';

export interface ISmartProxyOptions {
  routes: IRouteConfig[];
  preserveSourceIP?: boolean;
  /** Load balancers trusted to send a PROXY protocol header (v1 or v2): addresses, CIDRs, ranges, `1.2.3.*`. */
  proxyIPs?: string[];
  /** Read that header from `proxyIPs` (default: true when `proxyIPs` is given). */
  acceptProxyProtocol?: boolean;
  /**
   * Not in upstream. Accept a connection once its first bytes arrived (Linux `TCP_DEFER_ACCEPT`):
   * saves a wake-up and a read per connection. A client that waits for the server to speak first
   * (SMTP, MySQL, FTP) connecting directly waits about a second. Default: `acceptProxyProtocol`.
   */
  deferAccept?: boolean;
  /** PROXY protocol header to every backend connection, unless a route or target says otherwise. */
  sendProxyProtocol?: TSendProxyProtocol;
  defaults?: {
    target?: { host: string; port: number };
    security?: { ipAllowList?: string[]; ipBlockList?: string[]; maxConnections?: number };
    preserveSourceIP?: boolean;
  };
  pfx?: Buffer;
  key?: string | Buffer | Array<Buffer | string>;
  passphrase?: string;
  cert?: string | Buffer | Array<string | Buffer>;
  ca?: string | Buffer | Array<string | Buffer>;
  ciphers?: string;
  honorCipherOrder?: boolean;
  rejectUnauthorized?: boolean;
  secureProtocol?: string;
  servername?: string;
  minVersion?: string;
  maxVersion?: string;
  connectionTimeout?: number;
  initialDataTimeout?: number;
  socketTimeout?: number;
  inactivityCheckInterval?: number;
  maxConnectionLifetime?: number;
  inactivityTimeout?: number;
  gracefulShutdownTimeout?: number;
  noDelay?: boolean;
  keepAlive?: boolean;
  keepAliveInitialDelay?: number;
  maxPendingDataSize?: number;
  disableInactivityCheck?: boolean;
  enableKeepAliveProbes?: boolean;
  enableDetailedLogging?: boolean;
  enableTlsDebugLogging?: boolean;
  enableRandomizedTimeouts?: boolean;
  allowSessionTicket?: boolean;
  maxConnectionsPerIP?: number;
  connectionRateLimitPerMinute?: number;
  keepAliveTreatment?: 'standard' | 'extended' | 'immortal';
  keepAliveInactivityMultiplier?: number;
  extendedKeepAliveLifetime?: number;
  useHttpProxy?: number[];
  httpProxyPort?: number;
  metrics?: Partial<IMetricsConfig>;
  /** `false`: engine log lines go only to `'log'` events, not to the console. Default true. */
  consoleLog?: boolean;
  /** One line per HTTP request and per layer-4 connection, written in the background. */
  accessLog?: { enabled?: boolean; path?: string; format?: 'json' | 'combined' };
  acme?: IAcmeOptions;
  certProvisionFunction?: (domain: string) => Promise<TSmartProxyCertProvisionObject>;
  certProvisionFallbackToAcme?: boolean;
  /** smartproxy-native: keep relaying the other direction after one side half-closes (default false). */
  enableHalfOpen?: boolean;
  /** smartproxy-native: worker threads of the engine runtime (default: available cores). */
  workerThreads?: number;
  /** smartproxy-native: TLS session resumption for terminated TLS (default true). */
  tlsSessionResumption?: boolean;
  /** smartproxy-native: ms an HTTP connection may wait for its first request after the TLS handshake (default: initialDataTimeout). */
  httpFirstRequestTimeout?: number;
  /** smartproxy-native: ms an HTTP connection may idle between requests, HTTP/1.1 and HTTP/2 (default 60000). */
  httpKeepAliveTimeout?: number;
  /** smartproxy-native: ms a request head may take to arrive once started (default 30000). */
  httpHeadersTimeout?: number;
}

// ---------------------------------------------------------------------------------------------
// Connections, certificates, metrics (spec §3.11, §4.4, §7.1)
// ---------------------------------------------------------------------------------------------

export interface IConnectionRecord {
  id: string;
  incoming?: net.Socket;
  outgoing?: net.Socket | null;
  incomingStartTime: number;
  outgoingStartTime?: number;
  outgoingClosedTime?: number;
  lockedDomain?: string;
  connectionClosed: boolean;
  remoteIP: string;
  remotePort?: number;
  localPort: number;
  isTLS: boolean;
  tlsHandshakeComplete?: boolean;
  hasReceivedInitialData?: boolean;
  routeConfig?: IRouteConfig;
  routeId?: string;
  targetHost?: string;
  targetPort?: number;
  hasKeepAlive: boolean;
  lastActivity: number;
  inactivityWarningIssued?: boolean;
  bytesReceived: number;
  bytesSent: number;
  incomingTerminationReason?: string | null;
  outgoingTerminationReason?: string | null;
  usingNetworkProxy?: boolean;
  nftablesHandled?: boolean;
  [key: string]: any;
}

export interface ICertStatus {
  domain: string;
  status: 'valid' | 'pending' | 'expired' | 'error';
  expiryDate?: Date;
  issueDate?: Date;
  source: 'static' | 'acme' | 'custom';
  error?: string;
}

export interface ICertificateData {
  cert: string;
  key: string;
  ca?: string;
  expiryDate: Date;
  issueDate: Date;
  source?: 'static' | 'acme' | 'custom';
}

export interface IThroughputSample {
  timestamp: number;
  bytesIn: number;
  bytesOut: number;
  tags?: { route?: string; ip?: string; [key: string]: string | undefined };
}

export interface IThroughputData {
  in: number;
  out: number;
}

export interface IThroughputHistoryPoint {
  timestamp: number;
  in: number;
  out: number;
}

export interface IMetrics {
  connections: {
    active(): number;
    total(): number;
    byRoute(): Map<string, number>;
    byIP(): Map<string, number>;
    topIPs(limit?: number): Array<{ ip: string; count: number }>;
  };
  throughput: {
    instant(): IThroughputData;
    recent(): IThroughputData;
    average(): IThroughputData;
    custom(seconds: number): IThroughputData;
    history(seconds: number): IThroughputHistoryPoint[];
    byRoute(windowSeconds?: number): Map<string, IThroughputData>;
    byIP(windowSeconds?: number): Map<string, IThroughputData>;
  };
  requests: {
    perSecond(): number;
    perMinute(): number;
    total(): number;
  };
  totals: {
    bytesIn(): number;
    bytesOut(): number;
    connections(): number;
  };
  percentiles: {
    connectionDuration(): { p50: number; p95: number; p99: number };
    bytesTransferred(): { in: { p50: number; p95: number; p99: number }; out: { p50: number; p95: number; p99: number } };
  };
}

export interface IMetricsConfig {
  enabled: boolean;
  sampleIntervalMs: number;
  retentionSeconds: number;
  enableDetailedTracking?: boolean;
  enablePercentiles?: boolean;
  cacheResultsMs?: number;
  prometheusEnabled?: boolean;
  /** The metrics listener's port (default 9090) and address (default 127.0.0.1). */
  prometheusPort?: number;
  prometheusHost?: string;
  prometheusPath?: string;
  prometheusPrefix?: string;
}

/** Upstream's legacy statistics snapshot (plus byte totals). */
export interface ISmartProxyStatistics {
  activeConnections: number;
  totalConnections: number;
  tlsConnections: number;
  nonTlsConnections: number;
  keepAliveConnections: number;
  httpProxyConnections: number;
  terminationStats: { incoming: Record<string, number>; outgoing: Record<string, number> };
  acmeEnabled: boolean;
  port80HandlerPort: number | null;
  routes: number;
  listeningPorts: number[];
  activePorts: number;
  bytesIn: number;
  bytesOut: number;
}

// ---------------------------------------------------------------------------------------------
// HttpProxy, logging and nftables models (type exports of upstream)
// ---------------------------------------------------------------------------------------------

export interface ILogger {
  debug(message: string, data?: any): void;
  info(message: string, data?: any): void;
  warn(message: string, data?: any): void;
  error(message: string, data?: any): void;
}

export interface ICertificateEntry {
  key: string;
  cert: string;
  expires?: Date;
}

export interface IHttpProxyOptions {
  port: number;
  maxConnections?: number;
  keepAliveTimeout?: number;
  headersTimeout?: number;
  logLevel?: 'error' | 'warn' | 'info' | 'debug';
  cors?: { allowOrigin?: string; allowMethods?: string; allowHeaders?: string; maxAge?: number };
  connectionPoolSize?: number;
  portProxyIntegration?: boolean;
  useExternalPort80Handler?: boolean;
  backendProtocol?: 'http1' | 'http2';
  functionCacheSize?: number;
  functionCacheTtl?: number;
  acme?: IAcmeOptions & { enabled: boolean };
  routes?: IRouteConfig[];
  [key: string]: any;
}

export interface IMetricsTracker {
  incrementRequestsServed(): void;
  incrementFailedRequests(): void;
  [key: string]: any;
}
export type MetricsTracker = IMetricsTracker;

export interface IPortRange {
  from: number;
  to: number;
}
export type PortRange = IPortRange;

export interface NfTableProxyOptions {
  fromPort: number | PortRange | Array<number | PortRange>;
  toPort: number | PortRange | Array<number | PortRange>;
  toHost?: string;
  protocol?: 'tcp' | 'udp' | 'all';
  preserveSourceIP?: boolean;
  deleteOnExit?: boolean;
  enableLogging?: boolean;
  ipv6Support?: boolean;
  logFormat?: 'plain' | 'json';
  ipAllowList?: string[];
  ipBlockList?: string[];
  useIPSets?: boolean;
  forceCleanSlate?: boolean;
  tableName?: string;
  maxRetries?: number;
  retryDelayMs?: number;
  useAdvancedNAT?: boolean;
  qos?: { enabled: boolean; maxRate?: string; priority?: number; markConnections?: boolean };
  netProxyIntegration?: { enabled: boolean; redirectLocalhost?: boolean; sslTerminationPort?: number };
}
export type INfTableProxySettings = NfTableProxyOptions;

export interface NfTablesStatus {
  active: boolean;
  ruleCount: { total: number; added: number; verified: number };
  tablesConfigured: Array<{ family: string; tableName: string }>;
  metrics?: Record<string, unknown>;
  qosEnabled?: boolean;
}

// ---------------------------------------------------------------------------------------------
// SmartProxy (spec §4)
// ---------------------------------------------------------------------------------------------

export declare class SmartProxy extends EventEmitter {
  constructor(settingsArg: ISmartProxyOptions);
  /** The options with upstream's defaults filled in. */
  settings: ISmartProxyOptions;
  start(): Promise<void>;
  stop(): Promise<void>;
  updateRoutes(newRoutes: IRouteConfig[]): Promise<void>;
  addListeningPort(port: number): Promise<void>;
  removeListeningPort(port: number): Promise<void>;
  getListeningPorts(): number[];
  getStatistics(): ISmartProxyStatistics;
  getMetrics(): IMetrics;
  /** The Prometheus text exposition (what the metrics listener serves at `prometheusPath`). */
  getPrometheusMetrics(): string;
  /** The access log reopens its file (call after a log rotation moved it away). */
  reopenLogs(): void;
  provisionCertificate(routeName: string): Promise<void>;
  renewCertificate(routeName: string): Promise<void>;
  getCertificateStatus(routeName: string): ICertStatus | undefined;
  getEligibleDomainsForCertificates(): string[];
  getNfTablesStatus(): Promise<Record<string, NfTablesStatus>>;
}

// ---------------------------------------------------------------------------------------------
// Route helpers, validators, utilities, SocketHandlers (spec §5)
// ---------------------------------------------------------------------------------------------

type TDomains = string | string[];
type THelperTarget = { host: string | string[] | ((context: IRouteContext) => string | string[]); port: number | 'preserve' | ((context: IRouteContext) => number) };
type THelperCertificate = 'auto' | { key: string; cert: string };

export declare function createHttpRoute(domains: TDomains, target: THelperTarget, options?: Partial<IRouteConfig>): IRouteConfig;
export declare function createHttpsTerminateRoute(
  domains: TDomains,
  target: THelperTarget,
  options?: Partial<IRouteConfig> & { certificate?: THelperCertificate; httpPort?: number | number[]; httpsPort?: number | number[]; reencrypt?: boolean; name?: string },
): IRouteConfig;
export declare function createHttpsPassthroughRoute(domains: TDomains, target: THelperTarget, options?: Partial<IRouteConfig> & { httpsPort?: number | number[] }): IRouteConfig;
export declare function createHttpToHttpsRedirect(domains: TDomains, httpsPort?: number, options?: Partial<IRouteConfig>): IRouteConfig;
export declare function createCompleteHttpsServer(
  domains: TDomains,
  target: THelperTarget,
  options?: Partial<IRouteConfig> & { certificate?: THelperCertificate; httpPort?: number | number[]; httpsPort?: number | number[]; reencrypt?: boolean },
): IRouteConfig[];
export declare function createLoadBalancerRoute(
  domains: TDomains,
  backends: string[] | Array<{ host: string; port: number }>,
  port?: number,
  options?: Partial<IRouteConfig> & { tls?: { mode: TTlsMode; certificate?: THelperCertificate }; algorithm?: 'round-robin' | 'least-connections' | 'ip-hash'; healthCheck?: IRouteLoadBalancing['healthCheck'] },
): IRouteConfig;
export declare function createApiRoute(
  domains: TDomains,
  apiPath: string,
  target: THelperTarget,
  options?: Partial<IRouteConfig> & { useTls?: boolean; certificate?: THelperCertificate; addCorsHeaders?: boolean; httpPort?: number | number[]; httpsPort?: number | number[] },
): IRouteConfig;
export declare function createApiGatewayRoute(
  domains: TDomains,
  apiBasePath: string,
  target: THelperTarget,
  options?: Partial<IRouteConfig> & { useTls?: boolean; certificate?: THelperCertificate; addCorsHeaders?: boolean },
): IRouteConfig;
export declare function createWebSocketRoute(
  domains: TDomains,
  wsPath: string,
  target: THelperTarget,
  options?: Partial<IRouteConfig> & { useTls?: boolean; certificate?: THelperCertificate; httpPort?: number | number[]; httpsPort?: number | number[]; pingInterval?: number; pingTimeout?: number },
): IRouteConfig;
export declare function createSocketHandlerRoute(
  domains: TDomains,
  ports: TPortRange,
  handler: TSocketHandler,
  options?: { name?: string; priority?: number; path?: string },
): IRouteConfig;
export declare function createPortMappingRoute(options: {
  sourcePortRange: TPortRange;
  targetHost: string | string[] | ((context: IRouteContext) => string | string[]);
  portMapper: (context: IRouteContext) => number;
  name?: string;
  domains?: TDomains;
  priority?: number;
  [key: string]: any;
}): IRouteConfig;
export declare function createOffsetPortMappingRoute(options: {
  ports: TPortRange;
  targetHost: string | string[] | ((context: IRouteContext) => string | string[]);
  offset: number;
  name?: string;
  domains?: TDomains;
  priority?: number;
  [key: string]: any;
}): IRouteConfig;
export declare function createDynamicRoute(options: {
  ports: TPortRange;
  targetHost: (context: IRouteContext) => string | string[];
  portMapper: (context: IRouteContext) => number;
  name?: string;
  domains?: TDomains;
  path?: string;
  clientIp?: string[];
  priority?: number;
  [key: string]: any;
}): IRouteConfig;
export declare function createSmartLoadBalancer(options: {
  ports: TPortRange;
  domains?: TDomains;
  targets: Array<{ host: string; port: number; condition?: (context: IRouteContext) => boolean }>;
  fallbackTarget?: { host: string; port: number };
  name?: string;
  priority?: number;
  [key: string]: any;
}): IRouteConfig;
export declare function createNfTablesRoute(
  nameOrDomains: TDomains,
  target: { host: string; port: number | 'preserve' },
  options?: { ports?: TPortRange; protocol?: 'tcp' | 'udp' | 'all'; preserveSourceIP?: boolean; ipAllowList?: string[]; ipBlockList?: string[]; maxRate?: string; priority?: number; useTls?: boolean; tableName?: string; useIPSets?: boolean; useAdvancedNAT?: boolean },
): IRouteConfig;
export declare function createNfTablesTerminateRoute(
  nameOrDomains: TDomains,
  target: { host: string; port: number | 'preserve' },
  options?: { ports?: TPortRange; protocol?: 'tcp' | 'udp' | 'all'; preserveSourceIP?: boolean; ipAllowList?: string[]; ipBlockList?: string[]; maxRate?: string; priority?: number; tableName?: string; useIPSets?: boolean; useAdvancedNAT?: boolean; certificate?: THelperCertificate },
): IRouteConfig;
export declare function createCompleteNfTablesHttpsServer(
  nameOrDomains: TDomains,
  target: { host: string; port: number | 'preserve' },
  options?: { httpPort?: number; httpsPort?: number; certificate?: THelperCertificate; preserveSourceIP?: boolean; ipAllowList?: string[]; ipBlockList?: string[]; maxRate?: string; priority?: number; tableName?: string; useIPSets?: boolean; useAdvancedNAT?: boolean },
): IRouteConfig[];
export declare function addRateLimiting(route: IRouteConfig, rateLimit: Partial<IRouteRateLimit> & { maxRequests: number; window: number }): IRouteConfig;
export declare function addBasicAuth(route: IRouteConfig, auth: { users: Array<{ username: string; password: string }>; realm?: string; excludePaths?: string[] }): IRouteConfig;
export declare function addJwtAuth(
  route: IRouteConfig,
  jwt: { secret: string; algorithm?: string; issuer?: string; audience?: string; expiresIn?: number; excludePaths?: string[] },
): IRouteConfig;
export declare function mergeRouteConfigs(baseRoute: IRouteConfig, overrideRoute: Partial<IRouteConfig>): IRouteConfig;
export declare function routeMatchesDomain(route: IRouteConfig, domain: string): boolean;
export declare function routeMatchesPort(route: IRouteConfig, port: number): boolean;
export declare function isValidPort(port: any): boolean;
export declare function isValidDomain(domain: string): boolean;
export declare function validateRouteMatch(match: IRouteMatch): { valid: boolean; errors: string[] };
export declare function validateRouteAction(action: IRouteAction): { valid: boolean; errors: string[] };
export declare function validateRouteConfig(route: IRouteConfig): { valid: boolean; errors: string[] };
export declare function validateRoutes(routes: IRouteConfig[]): { valid: boolean; errors: Array<{ index: number; route: IRouteConfig; errors: string[] }> };
export declare function assertValidRoute(route: IRouteConfig): IRouteConfig;
export declare function cloneRoute(route: IRouteConfig): IRouteConfig;
export declare function generateRouteId(route: IRouteConfig): string;

export declare const SocketHandlers: {
  echo: TSocketHandler;
  proxy: (host: string, port: number) => TSocketHandler;
  lineProtocol: (handler: (line: string, socket: net.Socket) => void) => TSocketHandler;
  httpResponse: (statusCode: number, body: string) => TSocketHandler;
  block: (message?: string) => TSocketHandler;
  httpBlock: (statusCode?: number, message?: string) => TSocketHandler;
  httpRedirect: (locationTemplate: string, statusCode?: number) => TSocketHandler;
  httpServer: (
    handler: (
      req: { method: string; url: string; headers: Record<string, string>; body?: string },
      res: { status(code: number): void; header(name: string, value: string): void; send(data: string): void; end(): void },
    ) => void,
  ) => TSocketHandler;
};

// ---------------------------------------------------------------------------------------------
// Upstream's internal components (exported there; here they throw "not supported yet")
// ---------------------------------------------------------------------------------------------

export declare class ConnectionManager {
  constructor(...args: any[]);
}
export declare class SecurityManager {
  constructor(...args: any[]);
}
export declare class TimeoutManager {
  constructor(...args: any[]);
}
export declare class TlsManager {
  constructor(...args: any[]);
}
export declare class HttpProxyBridge {
  constructor(...args: any[]);
}
export declare class RouteConnectionHandler {
  constructor(...args: any[]);
}
export declare class SmartCertManager {
  constructor(routes: IRouteConfig[], certDir?: string, acmeOptions?: any, initialState?: any);
}
export declare class RouteManager extends EventEmitter {
  constructor(options?: { logger?: ILogger; enableDetailedLogging?: boolean; routes?: IRouteConfig[] });
}
export declare class HttpProxyRouteManager extends RouteManager {}
export declare class HttpProxy {
  constructor(options: IHttpProxyOptions);
}
export declare class CertificateManager {
  constructor(...args: any[]);
}
export declare class ConnectionPool {
  constructor(...args: any[]);
}
export declare class RequestHandler {
  constructor(...args: any[]);
}
export declare class WebSocketHandler {
  constructor(...args: any[]);
}
export declare class SniHandler {
  constructor(...args: any[]);
}
export declare class NfTablesProxy {
  constructor(settings: NfTableProxyOptions);
}
