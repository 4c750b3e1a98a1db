import { tap, expect } from '@git.zone/tstest/tapbundle';
import * as net from 'node:net';
import { SmartProxy } from '../index.js';
import * as h from './helpers.js';

let backend: h.TestServer;

tap.test('setup', async () => {
  backend = await h.namedServer('ok');
});

/** Connects; resolves 'ok' when the backend greets, 'closed' when the proxy closes first. */
function attempt(port: number, localAddress?: string): Promise<{ result: 'ok' | 'closed'; socket: net.Socket }> {
  return new Promise((resolve) => {
    const s = net.connect({ port, host: '127.0.0.1', localAddress });
    s.on('error', () => {});
    s.once('data', () => resolve({ result: 'ok', socket: s }));
    s.once('close', () => resolve({ result: 'closed', socket: s }));
  });
}

tap.test('ipAllowList admits only listed clients; ipBlockList wins over it', async () => {
  const port = await h.freePort();
  const p = new SmartProxy({
    routes: [h.forward('guarded', port, backend.port, { security: { ipAllowList: ['127.0.0.0/8'], ipBlockList: ['127.0.0.5'] } })],
  });
  await p.start();
  const before = backend.accepted();
  expect((await attempt(port, '127.0.0.4')).result).toEqual('ok');
  expect((await attempt(port, '127.0.0.5')).result).toEqual('closed');
  expect(backend.accepted()).toEqual(before + 1);
  await p.updateRoutes([h.forward('guarded', port, backend.port, { security: { ipAllowList: ['10.1.2.3'] } })]);
  expect((await attempt(port)).result).toEqual('closed');
  expect(p.getStatistics().terminationStats.incoming.ip_blocked).toEqual(2);
  await p.stop();
});

tap.test('security.maxConnections caps concurrent connections on a route', async () => {
  const port = await h.freePort();
  const p = new SmartProxy({ routes: [h.forward('capped', port, backend.port, { security: { maxConnections: 2 } })] });
  await p.start();
  const a = await attempt(port);
  const b = await attempt(port);
  const c = await attempt(port);
  expect([a.result, b.result, c.result]).toEqual(['ok', 'ok', 'closed']);
  a.socket.destroy();
  await h.waitFor(() => p.getStatistics().activeConnections === 1, 5000, 'one slot to free');
  const d = await attempt(port);
  expect(d.result).toEqual('ok');
  b.socket.destroy();
  d.socket.destroy();
  expect(p.getStatistics().terminationStats.incoming.route_connection_limit).toEqual(1);
  await p.stop();
});

tap.test('maxConnectionsPerIP and connectionRateLimitPerMinute', async () => {
  const port = await h.freePort();
  const p = new SmartProxy({ maxConnectionsPerIP: 2, connectionRateLimitPerMinute: 4, routes: [h.forward('r', port, backend.port)] });
  await p.start();
  const a = await attempt(port);
  const b = await attempt(port);
  const c = await attempt(port);
  expect([a.result, b.result, c.result]).toEqual(['ok', 'ok', 'closed']);
  // Other client IPs are counted separately.
  const other = await attempt(port, '127.0.0.9');
  expect(other.result).toEqual('ok');
  a.socket.destroy();
  await h.waitFor(() => p.getStatistics().activeConnections === 2, 5000, 'a slot to free');
  const third = await attempt(port); // 3rd accepted from 127.0.0.1 this minute
  expect(third.result).toEqual('ok');
  b.socket.destroy();
  third.socket.destroy();
  await h.waitFor(() => p.getStatistics().activeConnections === 1, 5000, 'slots to free');
  const fourth = await attempt(port);
  expect(fourth.result).toEqual('ok');
  // One connection open (below the cap of 2), but the 5th accept within a minute is over the rate.
  expect((await attempt(port)).result).toEqual('closed');
  fourth.socket.destroy();
  other.socket.destroy();
  const inc = p.getStatistics().terminationStats.incoming;
  expect(inc.ip_connection_limit).toEqual(1);
  expect(inc.rate_limited).toEqual(1);
  await p.stop();
});

tap.test('defaults.security guards the default target', async () => {
  const port = await h.freePort();
  const p = new SmartProxy({
    defaults: { target: { host: '127.0.0.1', port: backend.port }, security: { ipBlockList: ['127.0.0.7'] } },
    routes: [h.forward('only-a', port, backend.port, { match: { domains: 'a.test' } })],
  });
  await p.start();
  const viaDefault = (local: string) =>
    new Promise<string>((resolve) => {
      const s = net.connect({ port, host: '127.0.0.1', localAddress: local });
      s.on('error', () => {});
      s.write('not http, no domain\n');
      // The greeting line (the echo of what we sent may arrive in the same chunk).
      s.once('data', (d) => resolve(d.toString().split('\n')[0]));
      s.once('close', () => resolve('closed'));
    });
  expect(await viaDefault('127.0.0.6')).toEqual('ok');
  expect(await viaDefault('127.0.0.7')).toEqual('closed');
  await p.stop();
});

tap.test('teardown', async () => {
  await backend.close();
});

tap.start();
