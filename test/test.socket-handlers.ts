import { tap, expect } from '@git.zone/tstest/tapbundle';
import * as net from 'node:net';
import * as http from 'node:http';
import { SmartProxy, SocketHandlers, type IRouteContext } from '../index.js';
import * as h from './helpers.js';

// Socket handlers get a real net.Socket that owns the connection; target functions are called
// with the route context. JavaScript failures close one connection, never the proxy.
let port: number;
let proxy: SmartProxy;
let seenContext: IRouteContext | undefined;
const held: net.Socket[] = [];

const route = (name: string, ports: number | number[], socketHandler: any, match: Record<string, any> = {}) => ({
  name,
  match: { ports, ...match },
  action: { type: 'socket-handler' as const, socketHandler },
});

tap.test('setup', async () => {
  port = await h.freePort();
  proxy = new SmartProxy({
    connectionRateLimitPerMinute: 0,
    maxConnectionsPerIP: 0,
    routes: [
      route('echo', port, SocketHandlers.echo, { domains: 'echo.test' }),
      route('late', port, async (socket: net.Socket, ctx: IRouteContext) => {
        seenContext = ctx;
        await new Promise((r) => setTimeout(r, 100)); // attaches its listener late
        socket.once('data', (d) => socket.end(`late got: ${d.toString()}`));
      }, { domains: 'late.test' }),
      route('throws', port, () => {
        throw new Error('handler exploded');
      }, { domains: 'throws.test' }),
      route('rejects', port, async () => {
        throw new Error('handler rejected');
      }, { domains: 'rejects.test' }),
      route('hold', port, (socket: net.Socket) => {
        held.push(socket);
        socket.write('held\n');
      }, { domains: 'hold.test' }),
      route('redirect', port, SocketHandlers.httpRedirect('https://{domain}:8443{path}?from={clientIp}', 302), { domains: 'redirect.test' }),
      route('server', port, SocketHandlers.httpServer((req, res) => {
        res.status(201);
        res.header('X-Handled', 'yes');
        res.send(`${req.method} ${req.url} ${req.headers['x-test']}`);
      }), { domains: 'server.test' }),
      route('response', port, SocketHandlers.httpResponse(418, "I'm a teapot"), { domains: 'tea.test' }),
      route('block', port, SocketHandlers.httpBlock(403, 'nope'), { domains: 'block.test' }),
    ],
  });
  await proxy.start();
});

function raw(hostHeader: string, body = ''): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, '127.0.0.1', () => s.write(`GET /some/path?q=1 HTTP/1.1\r\nHost: ${hostHeader}\r\nX-Test: abc\r\n\r\n${body}`));
    let out = '';
    s.on('data', (d) => (out += d));
    s.on('close', () => resolve(out));
    s.on('error', () => {}); // a reset is a close too (a failed handler's socket is destroyed)
    void reject;
  });
}

tap.test('echo through a socket handler (the bytes that routed it are still delivered)', async () => {
  const s = await h.connect(port);
  const request = 'GET / HTTP/1.1\r\nHost: echo.test\r\n\r\n';
  s.write(request);
  expect(await h.readLine(s)).toEqual('ECHO SERVER READY');
  const back = await h.readBytes(s, request.length);
  expect(back.toString()).toEqual(request);
  s.destroy();
});

tap.test('an async handler that listens after 100 ms still gets the first chunk; context is complete', async () => {
  const out = await raw('late.test:8080');
  expect(out).toMatch(/^late got: GET \/some\/path\?q=1 HTTP\/1\.1/);
  const c = seenContext!;
  expect(c.port).toEqual(port);
  expect(c.domain).toEqual('late.test');
  expect(c.clientIp).toEqual('127.0.0.1');
  expect(c.serverIp).toEqual('127.0.0.1');
  expect(c.path).toEqual('/some/path');
  expect(c.query).toEqual('q=1');
  expect(c.headers!['x-test']).toEqual('abc');
  expect(c.isTls).toBeFalse();
  expect(c.routeName).toEqual('late');
  expect(typeof c.timestamp).toEqual('number');
  expect(typeof c.connectionId).toEqual('string');
});

tap.test('a throwing or rejecting handler closes that connection; the next one is served', async () => {
  expect(await raw('throws.test')).toEqual('');
  expect(await raw('rejects.test')).toEqual('');
  const s = await h.connect(port);
  s.write('GET / HTTP/1.1\r\nHost: echo.test\r\n\r\n');
  expect(await h.readLine(s)).toEqual('ECHO SERVER READY');
  s.destroy();
  await h.waitFor(() => (proxy.getStatistics().terminationStats.incoming.socket_handler_error ?? 0) >= 2, 3000, 'handler errors recorded');
});

tap.test('a handed-over connection counts as active until the JavaScript socket closes', async () => {
  await h.waitFor(() => proxy.getStatistics().activeConnections === 0, 3000, 'idle');
  const s = await h.connect(port);
  s.write('GET / HTTP/1.1\r\nHost: hold.test\r\n\r\n');
  expect(await h.readLine(s)).toEqual('held');
  expect(proxy.getStatistics().activeConnections).toEqual(1);
  held.pop()!.destroy();
  await h.closed(s);
  await h.waitFor(() => proxy.getStatistics().activeConnections === 0, 3000, 'count back to 0');
});

tap.test('SocketHandlers.httpRedirect seen by a real HTTP client', async () => {
  const res = await new Promise<http.IncomingMessage>((resolve, reject) => {
    http.get({ host: '127.0.0.1', port, path: '/a/b?x=1', headers: { host: 'redirect.test' } }, resolve).on('error', reject);
  });
  res.resume();
  expect(res.statusCode).toEqual(302);
  expect(res.headers.location).toEqual('https://redirect.test:8443/a/b?x=1?from=127.0.0.1');
});

tap.test('SocketHandlers.httpServer, httpResponse and httpBlock answer requests', async () => {
  const res = await new Promise<{ status: number; body: string; handled?: string }>((resolve, reject) => {
    http
      .get({ host: '127.0.0.1', port, path: '/hello', headers: { host: 'server.test', 'x-test': 'T' } }, (r) => {
        let body = '';
        r.on('data', (d) => (body += d));
        r.on('end', () => resolve({ status: r.statusCode!, body, handled: r.headers['x-handled'] as string }));
      })
      .on('error', reject);
  });
  expect(res).toEqual({ status: 201, body: 'GET /hello T', handled: 'yes' });
  expect(await raw('tea.test')).toMatch(/^HTTP\/1\.1 418 [\s\S]*\r\n\r\nI'm a teapot$/);
  expect(await raw('block.test')).toMatch(/^HTTP\/1\.1 403 Forbidden[\s\S]*\r\n\r\nnope$/);
});

tap.test('200 concurrent socket-handler connections are all answered', async () => {
  const results = await Promise.all(
    Array.from({ length: 200 }, async (_, i) => {
      const s = await h.connect(port);
      s.write('GET / HTTP/1.1\r\nHost: echo.test\r\n\r\n');
      const greet = await h.readLine(s);
      await h.readBytes(s, 35);
      s.write(`msg-${i}`);
      const back = (await h.readBytes(s, `msg-${i}`.length)).toString();
      s.destroy();
      return greet === 'ECHO SERVER READY' && back === `msg-${i}`;
    }),
  );
  expect(results.filter(Boolean).length).toEqual(200);
});

tap.test('handed-over connections stop counting once closed, however fast JavaScript closes them', async () => {
  // The handler answers and ends at once: on a busy machine JavaScript can close the socket
  // before the engine's task has filed the connection as handed over.
  const p = await h.freePort();
  const quick = new SmartProxy({
    connectionRateLimitPerMinute: 0,
    maxConnectionsPerIP: 0,
    routes: [route('quick', p, (socket: net.Socket) => socket.end('bye'))],
  });
  await quick.start();
  try {
    for (let batch = 0; batch < 20; batch++) {
      await Promise.all(
        Array.from({ length: 25 }, async () => {
          const s = await h.connect(p);
          expect((await h.readBytes(s, 3)).toString()).toEqual('bye');
          await h.closed(s);
        }),
      );
    }
    await h.waitFor(() => quick.getStatistics().activeConnections === 0, 5000, 'no active connections');
    expect(quick.getStatistics().totalConnections).toEqual(500);
  } finally {
    await quick.stop();
  }
});

tap.test('function targets: a sync port function and an async host function', async () => {
  const backend = await h.namedServer('fn-backend');
  const p = await h.freePort();
  const seen: IRouteContext[] = [];
  const fx = new SmartProxy({
    routes: [
      {
        name: 'fn',
        match: { ports: p },
        action: {
          type: 'forward',
          target: {
            host: async (ctx: IRouteContext) => {
              seen.push(ctx);
              await new Promise((r) => setTimeout(r, 5));
              return '127.0.0.1';
            },
            port: (ctx: IRouteContext) => (ctx.targetHost === '127.0.0.1' ? backend.port : 1),
          },
        },
      },
    ],
  });
  await fx.start();
  const s = await h.connect(p);
  expect(await h.readLine(s)).toEqual('fn-backend');
  s.destroy();
  expect(seen[0].routeName).toEqual('fn');
  expect(seen[0].port).toEqual(p);
  await fx.stop();
  await backend.close();
});

tap.test('a throwing, wrong-typed or hanging target function closes that connection with a reason', async () => {
  const p = await h.freePort();
  let mode = 'throw';
  const fx = new SmartProxy({
    routes: [
      {
        name: 'bad-fn',
        match: { ports: p },
        action: {
          type: 'forward',
          target: {
            host: '127.0.0.1',
            port: (() => {
              if (mode === 'throw') throw new Error('no port for you');
              if (mode === 'type') return 'eighty' as any;
              return 70000;
            }) as any,
          },
        },
      },
    ],
  });
  await fx.start();
  for (const m of ['throw', 'type', 'range']) {
    mode = m;
    const s = await h.connect(p);
    await h.closed(s, 3000);
  }
  // The reason is recorded as the connection's task ends, just after the client sees the close.
  await h.waitFor(() => fx.getStatistics().terminationStats.incoming.target_function_error === 3, 3000, 'three target_function_error');
  await fx.stop();
});

tap.test('teardown', async () => {
  await proxy.stop();
});

tap.start();
