import { tap, expect } from '@git.zone/tstest/tapbundle';
import * as net from 'node:net';
import { spawn } from 'node:child_process';
import { SmartProxy } from '../index.js';
import * as h from './helpers.js';

let one: h.TestServer, two: h.TestServer;

tap.test('setup backends', async () => {
  one = await h.namedServer('one');
  two = await h.namedServer('two');
});

tap.test('settings carry upstream defaults, user values win, constructor binds nothing', async () => {
  const port = await h.freePort();
  const p = new SmartProxy({ routes: [h.forward('r', port, one.port)], connectionTimeout: 1234, acme: { accountEmail: 'a@b.c' } });
  expect(p.settings.connectionTimeout).toEqual(1234);
  expect(p.settings.inactivityTimeout).toEqual(14_400_000);
  expect(p.settings.gracefulShutdownTimeout).toEqual(30_000);
  expect(p.settings.keepAliveTreatment).toEqual('extended');
  expect(p.settings.maxConnectionsPerIP).toEqual(100);
  expect(p.settings.connectionRateLimitPerMinute).toEqual(300);
  expect(p.settings.acme!.email).toEqual('a@b.c');
  expect(p.settings.acme!.port).toEqual(80);
  expect(p.settings.acme!.certificateStore).toEqual('./certs');
  expect(p.getListeningPorts()).toEqual([]);
  // Nothing listens before start().
  const err = await h.connect(port).then((s) => (s.destroy(), null), (e) => e);
  expect(err?.code).toEqual('ECONNREFUSED');
});

tap.test('invalid routes are rejected naming the route and the field', async () => {
  const p = new SmartProxy({
    routes: [h.forward('fine', 1, 2), { name: 'broken', match: { ports: [80, { from: 90, to: 70000 }] }, action: { type: 'forward', target: { host: 'x', port: 1 } } } as any],
  });
  const err = await p.start().then(() => null, (e) => e);
  expect(err.code).toEqual('ERR_INVALID_CONFIG');
  expect(err.message).toEqual('route "broken" (index 1): match.ports[1].to: port must be an integer 1-65535, got 70000');
  const err2 = await new SmartProxy({ routes: [{ match: { ports: 1 }, action: { type: 'forward' } } as any] }).start().then(() => null, (e) => e);
  expect(err2.message).toMatch(/^route at index 0: action.targets/);
  const err3 = await new SmartProxy({ routes: [], connectionTimeout: 'x' as any }).start().then(() => null, (e) => e);
  expect(err3.message).toEqual('options.connectionTimeout: expected a number, got "x"');
});

tap.test('features not built yet fail loudly at start() and updateRoutes()', async () => {
  const port = await h.freePort();
  const term = { name: 'https', match: { ports: port, domains: 'x.test' }, action: { type: 'forward' as const, target: { host: 'x', port: 1 }, tls: { mode: 'terminate' as const, certificate: 'auto' as const } } };
  const err = await new SmartProxy({ preserveSourceIP: true, routes: [term] }).start().then(() => null, (e) => e);
  expect(err.code).toEqual('ERR_NOT_SUPPORTED');
  expect(err.message).toEqual('not supported yet: preserveSourceIP (transparent source address)');
  const p = new SmartProxy({ routes: [h.forward('r', port, one.port)] });
  await p.start();
  const oauth = { name: 'oauth', match: { ports: port }, action: { type: 'forward' as const, target: { host: 'x', port: 1 } }, security: { authentication: { type: 'oauth' as const } } };
  const err2 = await p.updateRoutes([oauth]).then(() => null, (e) => e);
  expect(err2.message).toEqual("not supported yet: security.authentication type 'oauth' (route \"oauth\" (index 0))");
  const nft = { name: 'nft', match: { ports: port }, action: { type: 'forward' as const, target: { host: 'x', port: 1 }, forwardingEngine: 'nftables' as const } };
  const err3 = await p.updateRoutes([nft]).then(() => null, (e) => e);
  expect(err3.message).toMatch(/^not supported yet: forwardingEngine 'nftables'/);
  // A refused update changes nothing.
  expect(p.getListeningPorts()).toEqual([port]);
  const c = await h.connect(port);
  expect(await h.readLine(c)).toEqual('one');
  c.destroy();
  await p.stop();
});

tap.test('start() names the port it cannot bind, and binds nothing', async () => {
  const [free, taken] = await h.freePorts(2);
  const blocker = net.createServer();
  await new Promise<void>((r) => blocker.listen(taken, () => r()));
  const p = new SmartProxy({ routes: [h.forward('a', free, one.port), h.forward('b', taken, one.port)] });
  const err = await p.start().then(() => null, (e) => e);
  expect(err.code).toEqual('ERR_BIND');
  expect(err.message).toMatch(new RegExp(`^cannot listen on port ${taken}: `));
  expect(p.getListeningPorts()).toEqual([]);
  const refused = await h.connect(free).then((s) => (s.destroy(), null), (e) => e);
  expect(refused?.code).toEqual('ECONNREFUSED');
  await new Promise((r) => blocker.close(r));
  // The same instance can start once the port is free.
  await p.start();
  expect(p.getListeningPorts().sort()).toEqual([free, taken].sort());
  await p.stop();
});

tap.test('updateRoutes: new ports bound, unused released, live connection on a kept route untouched', async () => {
  const [x, y, z] = await h.freePorts(3);
  const p = new SmartProxy({ routes: [h.forward('keep', x, one.port), h.forward('drop', y, two.port)] });
  await p.start();
  const live = await h.connect(x);
  expect(await h.readLine(live)).toEqual('one');
  await p.updateRoutes([h.forward('keep', x, two.port), h.forward('new', z, two.port)]);
  expect(p.getListeningPorts().sort()).toEqual([x, z].sort());
  // The live connection still talks to its original backend.
  live.write('still here\n');
  expect(await h.readLine(live)).toEqual('still here');
  // New connections on the kept port follow the new table.
  const fresh = await h.connect(x);
  expect(await h.readLine(fresh)).toEqual('two');
  fresh.destroy();
  const zc = await h.connect(z);
  expect(await h.readLine(zc)).toEqual('two');
  zc.destroy();
  const gone = await h.connect(y).then((s) => (s.destroy(), null), (e) => e);
  expect(gone?.code).toEqual('ECONNREFUSED');
  expect(p.settings.routes.map((r) => r.name)).toEqual(['keep', 'new']);
  live.destroy();
  await p.stop();
});

tap.test('ports are reference-counted across routes and manual listeners', async () => {
  const [x, m] = await h.freePorts(2);
  const p = new SmartProxy({ routes: [h.forward('a', x, one.port), h.forward('b', x, two.port)] });
  await p.start();
  await p.addListeningPort(m);
  await p.addListeningPort(m);
  expect(p.getListeningPorts().sort()).toEqual([x, m].sort());
  await p.removeListeningPort(m);
  expect(p.getListeningPorts()).toContain(m);
  await p.removeListeningPort(m);
  expect(p.getListeningPorts()).toEqual([x]);
  // Two routes share x: dropping one keeps it bound.
  await p.updateRoutes([h.forward('b', x, two.port)]);
  expect(p.getListeningPorts()).toEqual([x]);
  const c = await h.connect(x);
  expect(await h.readLine(c)).toEqual('two');
  c.destroy();
  await p.stop();
  const err = await p.addListeningPort(m).then(() => null, (e) => e);
  expect(err.code).toEqual('ERR_NOT_RUNNING');
});

tap.test('stop() during start(), double stop(), start() after stop()', async () => {
  const port = await h.freePort();
  const p = new SmartProxy({ routes: [h.forward('r', port, one.port)] });
  const started = p.start();
  const stopped = p.stop();
  await started;
  await stopped;
  expect(p.getListeningPorts()).toEqual([]);
  await p.stop();
  await p.start();
  const c = await h.connect(port);
  expect(await h.readLine(c)).toEqual('one');
  await p.stop();
  await h.closed(c);
  expect(p.getStatistics().activeConnections).toEqual(0);
});

tap.test('stop() closes live connections', async () => {
  const port = await h.freePort();
  const p = new SmartProxy({ routes: [h.forward('r', port, one.port)] });
  await p.start();
  const conns = await Promise.all([h.connect(port), h.connect(port), h.connect(port)]);
  await Promise.all(conns.map((c) => h.readLine(c)));
  const t0 = Date.now();
  await p.stop();
  await Promise.all(conns.map((c) => h.closed(c, 2000)));
  expect(Date.now() - t0).toBeLessThan(2000);
  expect(p.getStatistics().terminationStats.incoming.shutdown).toEqual(3);
});

tap.test('a started proxy is not garbage-collected while it runs', async () => {
  const gc = (globalThis as any).gc as undefined | (() => void);
  expect(typeof gc).toEqual('function');
  const port = await h.freePort();
  let ref: WeakRef<SmartProxy>;
  await (async () => {
    const p = new SmartProxy({ routes: [h.forward('r', port, one.port)] });
    ref = new WeakRef(p);
    await p.start();
  })();
  for (let i = 0; i < 5; i++) {
    gc!();
    await h.sleep(20);
  }
  const c = await h.connect(port);
  expect(await h.readLine(c)).toEqual('one');
  c.destroy();
  const p = ref!.deref();
  expect(p).toBeInstanceOf(SmartProxy);
  await p!.stop();
});

tap.test('a child process that starts and stops a proxy exits by itself', async () => {
  const port = await h.freePort();
  const child = spawn(process.execPath, ['--import', 'tsx', 'test/fixtures/child-start-stop.ts', String(port)], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.on('data', (d) => (out += d));
  child.stderr.on('data', (d) => (out += d));
  const code = await new Promise<number | null>((resolve) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      resolve(null);
    }, 15_000);
    child.on('close', (c) => {
      clearTimeout(timer);
      resolve(c);
    });
  });
  expect(out).toMatch(/child got hi/);
  expect(out).toMatch(/child stopped/);
  expect(code).toEqual(0);
});

tap.test('teardown', async () => {
  await one.close();
  await two.close();
});

tap.start();
