import { tap, expect } from '@git.zone/tstest/tapbundle';
import * as net from 'node:net';
import { SmartProxy } from '../index.js';
import * as h from './helpers.js';

// Routing decisions end to end: each route forwards to an HTTP backend that answers with its
// own name, so the response says which route matched.
const names = ['exact', 'wild', 'api', 'user', 'beta', 'ranged', 'prio', 'fallback', 'lan', 'default'];
const backends: Record<string, h.TestServer> = {};
let port: number, rangeFrom: number;
let proxy: SmartProxy;

const to = (name: string) => ({ type: 'forward' as const, target: { host: '127.0.0.1', port: backends[name].port } });

tap.test('setup', async () => {
  for (const n of names) backends[n] = await h.httpNameServer(n);
  [port] = await h.freePorts(1);
  rangeFrom = await h.freePortRun(3);
  proxy = new SmartProxy({
    connectionRateLimitPerMinute: 10_000,
    defaults: { target: { host: '127.0.0.1', port: backends.default.port } },
    routes: [
      { name: 'fallback', match: { ports: port, domains: '*' }, action: to('fallback') },
      { name: 'exact', priority: 10, match: { ports: port, domains: ['example.com', 'www.example.com'] }, action: to('exact') },
      { name: 'wild', priority: 5, match: { ports: port, domains: '*.example.com' }, action: to('wild') },
      { name: 'api', priority: 20, match: { ports: port, domains: 'example.com', path: '/api/*' }, action: to('api') },
      { name: 'user', priority: 20, match: { ports: port, domains: 'example.com', path: '/users/:id' }, action: to('user') },
      { name: 'beta', priority: 30, match: { ports: port, domains: 'example.com', headers: { 'x-beta': /^(1|yes)$/i } }, action: to('beta') },
      { name: 'prio-low', priority: 1, match: { ports: port, domains: 'prio.test' }, action: to('exact') },
      { name: 'prio', priority: 2, match: { ports: port, domains: 'prio.test' }, action: to('prio') },
      { name: 'disabled', enabled: false, priority: 100, match: { ports: port, domains: 'prio.test' }, action: to('exact') },
      { name: 'lan', priority: 50, match: { ports: port, domains: 'lan.test', clientIp: ['127.0.0.2', '192.168.0.0/16'] }, action: to('lan') },
      { name: 'ranged', match: { ports: [{ from: rangeFrom, to: rangeFrom + 1 }, rangeFrom + 2] }, action: to('ranged') },
    ],
  });
  await proxy.start();
});

const get = (host: string, path = '/', headers: Record<string, string> = {}, p = port) => h.httpGet(p, host, path, headers);

tap.test('exact domains, case-insensitive, trailing dot ignored', async () => {
  expect(await get('example.com')).toEqual('exact /');
  expect(await get('WWW.Example.COM.')).toEqual('exact /');
  expect(await get('example.com:8080')).toEqual('exact /');
});

tap.test('*.example.com matches subdomains at any depth, not the apex', async () => {
  expect(await get('a.example.com')).toEqual('wild /');
  expect(await get('a.b.example.com')).toEqual('wild /');
  expect(await get('badexample.com')).toEqual('fallback /');
});

tap.test('paths: prefix wildcard and :param segments; non-matching paths fall through', async () => {
  expect(await get('example.com', '/api/v1/things?x=1')).toEqual('api /api/v1/things?x=1');
  expect(await get('example.com', '/users/42')).toEqual('user /users/42');
  expect(await get('example.com', '/users/42/posts')).toEqual('user /users/42/posts');
  expect(await get('example.com', '/users/')).toEqual('exact /users/');
  expect(await get('example.com', '/apiary')).toEqual('exact /apiary');
});

tap.test('header conditions with a RegExp', async () => {
  expect(await get('example.com', '/', { 'X-Beta': 'YES' })).toEqual('beta /');
  expect(await get('example.com', '/', { 'X-Beta': 'no' })).toEqual('exact /');
});

tap.test('priority wins, disabled routes are skipped', async () => {
  expect(await get('prio.test')).toEqual('prio /');
});

tap.test('clientIp restricts a route', async () => {
  expect(await get('lan.test')).toEqual('fallback /');
  const s = net.connect({ port, host: '127.0.0.1', localAddress: '127.0.0.2' });
  s.write('GET / HTTP/1.1\r\nHost: lan.test\r\nConnection: close\r\n\r\n');
  const chunks: Buffer[] = [];
  s.on('data', (d) => chunks.push(d));
  await h.closed(s);
  expect(Buffer.concat(chunks).toString()).toMatch(/\r\n\r\nlan \/$/);
});

tap.test('port ranges and mixed port arrays', async () => {
  for (const p of [rangeFrom, rangeFrom + 1, rangeFrom + 2]) {
    expect(await get('anything', '/', {}, p)).toEqual('ranged /');
  }
  expect(proxy.getListeningPorts().sort()).toEqual([port, rangeFrom, rangeFrom + 1, rangeFrom + 2].sort());
});

tap.test('defaults.target takes connections that match no route', async () => {
  // A request without Host cannot match the domain routes (not even '*'), so it goes to the default.
  const s = await h.connect(port);
  s.write('GET /nohost HTTP/1.0\r\n\r\n');
  const chunks: Buffer[] = [];
  s.on('data', (d) => chunks.push(d));
  await h.waitFor(() => Buffer.concat(chunks).toString().endsWith('default /nohost'), 5000, 'default backend');
  s.destroy();
});

tap.test('teardown', async () => {
  await proxy.stop();
  for (const b of Object.values(backends)) await b.close();
});

tap.start();
