import { tap, expect } from '@git.zone/tstest/tapbundle';
import * as crypto from 'node:crypto';
import * as net from 'node:net';
import { SmartProxy } from '../index.js';
import * as h from './helpers.js';

const MiB = 1024 * 1024;
let echo: h.TestServer;
let port: number;
let proxy: SmartProxy;

tap.test('setup: echo backend behind a forward route', async () => {
  echo = await h.echoServer();
  port = await h.freePort();
  proxy = new SmartProxy({
    routes: [h.forward('echo', port, echo.port)],
    connectionRateLimitPerMinute: 100_000,
  });
  await proxy.start();
  expect(proxy.getListeningPorts()).toEqual([port]);
});

tap.test('8 MiB round trip arrives byte-identical', async () => {
  const data = crypto.randomBytes(8 * MiB);
  const c = await h.connect(port);
  const received = h.readBytes(c, data.length, 30_000);
  c.write(data);
  const got = await received;
  expect(got.length).toEqual(data.length);
  expect(h.sha256(got)).toEqual(h.sha256(data));
  c.destroy();
});

tap.test('distinct payloads both ways at once keep their checksums', async () => {
  const up = crypto.randomBytes(6 * MiB);
  const down = crypto.randomBytes(5 * MiB);
  let serverGot: Buffer | null = null;
  const sink = await h.tcpServer((s) => {
    const chunks: Buffer[] = [];
    let n = 0;
    s.on('data', (d) => {
      chunks.push(d);
      n += d.length;
      if (n === up.length) serverGot = Buffer.concat(chunks);
    });
    s.write(down);
  });
  const p2 = await h.freePort();
  await proxy.updateRoutes([h.forward('echo', port, echo.port), h.forward('sink', p2, sink.port)]);
  const c = await h.connect(p2);
  const received = h.readBytes(c, down.length, 30_000);
  c.write(up);
  expect(h.sha256(await received)).toEqual(h.sha256(down));
  await h.waitFor(() => serverGot !== null, 10_000, 'backend to receive the upload');
  expect(h.sha256(serverGot!)).toEqual(h.sha256(up));
  c.destroy();
  await sink.close();
});

tap.test('100 concurrent connections are all answered', async () => {
  await h.waitFor(() => proxy.getStatistics().activeConnections === 0, 5000, 'idle proxy');
  const clients = await Promise.all(Array.from({ length: 100 }, () => h.connect(port)));
  const answers = await Promise.all(
    clients.map(async (c, i) => {
      const msg = `client-${i}-${crypto.randomBytes(8).toString('hex')}`;
      const r = h.readBytes(c, msg.length);
      c.write(msg);
      return (await r).toString() === msg;
    }),
  );
  expect(answers.every(Boolean)).toBeTrue();
  expect(proxy.getStatistics().activeConnections).toEqual(100);
  for (const c of clients) c.destroy();
  await h.waitFor(() => proxy.getStatistics().activeConnections === 0, 5000, 'connections to close');
});

tap.test('host arrays rotate round-robin', async () => {
  const [p] = await h.freePorts(1);
  const a = net.createServer((s) => s.end('A\n'));
  const b = net.createServer((s) => s.end('B\n'));
  await new Promise<void>((r) => a.listen(p, '127.0.0.1', () => r()));
  await new Promise<void>((r) => b.listen(p, '127.0.0.2', () => r()));
  const lp = await h.freePort();
  const rr = new SmartProxy({
    routes: [{ name: 'rr', match: { ports: lp }, action: { type: 'forward', targets: [{ host: ['127.0.0.1', '127.0.0.2'], port: p }] } }],
  });
  await rr.start();
  const seen: string[] = [];
  for (let i = 0; i < 4; i++) {
    const c = await h.connect(lp);
    seen.push(await h.readLine(c));
    c.destroy();
  }
  expect(seen).toEqual(['A', 'B', 'A', 'B']);
  await rr.stop();
  await new Promise((r) => a.close(r));
  await new Promise((r) => b.close(r));
});

tap.test("port 'preserve' uses the port the connection arrived on", async () => {
  // Every local address falls under the proxy's wildcard listener, so the preserved hop comes back
  // to the proxy itself: clients from 127.0.0.3 are sent to 127.0.0.1:<same port>, and that hop
  // (from 127.0.0.1) is forwarded to a backend that names the port it was reached on.
  const [x, y] = await h.freePorts(2);
  const named: Record<number, h.TestServer> = {};
  for (const p of [x, y]) named[p] = await h.namedServer(`port-${p}`);
  const pp = new SmartProxy({
    routes: [
      { name: 'preserve', priority: 10, match: { ports: [x, y], clientIp: ['127.0.0.3'] }, action: { type: 'forward', target: { host: '127.0.0.1', port: 'preserve' } } },
      h.forward('hop-x', x, named[x].port, { match: { clientIp: ['127.0.0.1'] } }),
      h.forward('hop-y', y, named[y].port, { match: { clientIp: ['127.0.0.1'] } }),
    ],
  });
  await pp.start();
  for (const p of [x, y]) {
    const c = net.connect({ port: p, host: '127.0.0.1', localAddress: '127.0.0.3' });
    expect(await h.readLine(c)).toEqual(`port-${p}`);
    c.destroy();
  }
  await pp.stop();
  for (const p of [x, y]) await named[p].close();
});

tap.test('a refused backend 20 times in a row: clients closed, proxy fine, nothing leaks', async () => {
  const [dead, lp] = await h.freePorts(2);
  const rp = new SmartProxy({ routes: [h.forward('dead', lp, dead)] });
  await rp.start();
  const closes = [];
  for (let i = 0; i < 20; i++) {
    const c = await h.connect(lp);
    c.on('error', () => {});
    closes.push(h.closed(c, 5000));
  }
  await Promise.all(closes);
  await h.waitFor(() => rp.getStatistics().activeConnections === 0, 5000, 'active back to 0');
  const stats = rp.getStatistics();
  expect(stats.terminationStats.incoming.connection_refused).toEqual(20);
  expect(stats.terminationStats.outgoing.connection_refused).toEqual(20);
  expect(stats.totalConnections).toEqual(20);
  // The other proxy still serves.
  const c = await h.connect(port);
  const r = h.readBytes(c, 4);
  c.write('ping');
  expect((await r).toString()).toEqual('ping');
  c.destroy();
  await rp.stop();
});

tap.test('clients that disconnect right after connecting leave nothing behind', async () => {
  const before = proxy.getStatistics().totalConnections;
  for (let i = 0; i < 50; i++) {
    const c = net.connect(port, '127.0.0.1');
    c.on('error', () => {});
    if (i % 2) c.on('connect', () => c.destroy());
    else c.on('connect', () => c.end());
  }
  await h.waitFor(() => proxy.getStatistics().totalConnections >= before + 50, 5000, '50 accepted');
  await h.waitFor(() => proxy.getStatistics().activeConnections === 0, 5000, 'all closed');
  const c = await h.connect(port);
  const r = h.readBytes(c, 2);
  c.write('ok');
  expect((await r).toString()).toEqual('ok');
  c.destroy();
});

tap.test('when the backend closes, the client is closed', async () => {
  const closer = await h.tcpServer((s) => s.end('bye\n'));
  const lp = await h.freePort();
  await proxy.updateRoutes([h.forward('echo', port, echo.port), h.forward('closer', lp, closer.port)]);
  const c = await h.connect(lp);
  expect(await h.readLine(c)).toEqual('bye');
  await h.closed(c);
  await closer.close();
});

tap.test('teardown', async () => {
  await proxy.stop();
  expect(proxy.getListeningPorts()).toEqual([]);
  await echo.close();
});

tap.start();
