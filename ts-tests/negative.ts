// Configurations that must NOT type-check: proves the public types are precise, not `any`.
import { SmartProxy, type IRouteConfig } from '@push.rocks/smartproxy';

const removedActionType: IRouteConfig = {
  match: { ports: 80 },
  // @ts-expect-error 'redirect' was removed in 19.5; only 'forward' and 'socket-handler' remain
  action: { type: 'redirect' },
};

const stringPorts: IRouteConfig = {
  // @ts-expect-error ports are numbers or { from, to } ranges
  match: { ports: '80' },
  action: { type: 'forward', target: { host: 'x', port: 1 } },
};

const badTlsMode: IRouteConfig = {
  match: { ports: 443 },
  // @ts-expect-error unknown TLS mode
  action: { type: 'forward', target: { host: 'x', port: 1 }, tls: { mode: 'terminate-all' } },
};

// @ts-expect-error routes are required
const noRoutes = new SmartProxy({});

// @ts-expect-error keepAliveTreatment is a closed set
const badTreatment = new SmartProxy({ routes: [], keepAliveTreatment: 'forever' });

export { removedActionType, stringPorts, badTlsMode, noRoutes, badTreatment };
