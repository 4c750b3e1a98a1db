// The proxy side of bench/soak.mts, in its own process so that its memory and descriptors are
// measured alone. Routes come from the parent (IPC); a JavaScript socket handler echoes lines.
// Messages: {routes} → start; {update: n} → updateRoutes with variant n; {stats} → counts back;
// {stop} → stop and exit. Loads the package from SOAK_PKG (a copy, so that rebuilding the
// project during a soak cannot replace the native module under a running process).
import { pathToFileURL } from 'node:url';
import { join } from 'node:path';

const pkg = process.env.SOAK_PKG ? pathToFileURL(join(process.env.SOAK_PKG, 'index.js')).href : '../index.js';
const { SmartProxy } = await import(pkg);

let proxy: any;
let base: any[] = [];

/** The socket-handler route (functions cannot cross IPC). */
function withHandler(routes: any[]): any[] {
  return routes.map((r) =>
    r.action?.type === 'socket-handler'
      ? {
          ...r,
          action: {
            type: 'socket-handler',
            socketHandler: (socket: any) => {
              socket.on('error', () => {});
              socket.on('data', (d: Buffer) => socket.write(d));
              socket.on('end', () => socket.end());
            },
          },
        }
      : r,
  );
}

/** Variant n of the routes: every other update adds a route and changes a header template, so
 * changed routes start fresh and unchanged ones keep their state. */
function variant(n: number): any[] {
  const routes = withHandler(base);
  if (n % 2 === 1) {
    routes.push({ name: `extra-${n}`, match: { ports: routes[0].match.ports, domains: `extra${n}.soak.test` }, action: routes[0].action });
    routes[0] = { ...routes[0], headers: { response: { 'x-soak-variant': String(n) } } };
  }
  return routes;
}

process.on('message', async (m: any) => {
  try {
    if (m.routes) {
      base = m.routes;
      proxy = new SmartProxy({ routes: withHandler(base), maxConnectionsPerIP: 0, connectionRateLimitPerMinute: 0, ...(m.options || {}) });
      await proxy.start();
      process.send!({ started: true });
    } else if (m.update !== undefined) {
      await proxy.updateRoutes(variant(m.update));
      process.send!({ updated: m.update });
    } else if (m.stats) {
      const s = proxy.getStatistics();
      const mem = process.memoryUsage();
      process.send!({ stats: { active: s.activeConnections, total: s.totalConnections, terminations: s.terminationStats?.incoming, heap: mem.heapTotal, external: mem.external } });
    } else if (m.stop) {
      await proxy.stop();
      process.send!({ stopped: true });
      setTimeout(() => process.exit(0), 100);
    }
  } catch (e: any) {
    process.send!({ error: String(e?.stack || e) });
  }
});
process.send!({ ready: true });
