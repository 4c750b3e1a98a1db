import { tap, expect } from '@git.zone/tstest/tapbundle';
import * as net from 'node:net';
import { SmartProxy } from '../index.js';
import * as h from './helpers.js';

// client → outer proxy → inner proxy → backend
let backend: h.TestServer;
let outer: SmartProxy, inner: SmartProxy;
let outerPort: number, innerPort: number;
const backendSockets: net.Socket[] = [];

tap.test('setup: two proxies in a chain', async () => {
  backend = await h.tcpServer((s) => {
    backendSockets.push(s);
    s.pipe(s);
  });
  [outerPort, innerPort] = await h.freePorts(2);
  inner = new SmartProxy({ routes: [h.forward('inner', innerPort, backend.port)] });
  outer = new SmartProxy({ routes: [h.forward('outer', outerPort, innerPort)] });
  await inner.start();
  await outer.start();
});

tap.test('data crosses both proxies', async () => {
  const c = await h.connect(outerPort);
  const r = h.readBytes(c, 11);
  c.write('hello chain');
  expect((await r).toString()).toEqual('hello chain');
  expect(outer.getStatistics().activeConnections).toEqual(1);
  expect(inner.getStatistics().activeConnections).toEqual(1);
  c.destroy();
  await h.waitFor(() => outer.getStatistics().activeConnections + inner.getStatistics().activeConnections === 0, 5000, 'counts to return to 0');
});

tap.test('closing the backend closes the client, and both proxies return to 0', async () => {
  const clients = await Promise.all([h.connect(outerPort), h.connect(outerPort), h.connect(outerPort)]);
  for (const c of clients) {
    const r = h.readBytes(c, 2);
    c.write('hi');
    await r;
  }
  await h.waitFor(() => backendSockets.filter((s) => !s.destroyed).length === 3, 5000, 'three backend sockets');
  for (const s of backendSockets) s.destroy();
  await Promise.all(clients.map((c) => h.closed(c, 5000)));
  await h.waitFor(() => outer.getStatistics().activeConnections + inner.getStatistics().activeConnections === 0, 5000, 'counts to return to 0');
  expect(inner.getStatistics().terminationStats.incoming.backend_closed).toBeGreaterThanOrEqual(3);
});

tap.test('closing the client closes the backend side', async () => {
  backendSockets.length = 0;
  const c = await h.connect(outerPort);
  const r = h.readBytes(c, 2);
  c.write('yo');
  await r;
  await h.waitFor(() => backendSockets.length === 1, 5000, 'backend socket');
  c.end();
  await h.closed(backendSockets[0], 5000);
  await h.waitFor(() => outer.getStatistics().activeConnections + inner.getStatistics().activeConnections === 0, 5000, 'counts to return to 0');
});

tap.test('teardown', async () => {
  await outer.stop();
  await inner.stop();
  await backend.close();
});

tap.start();
