import { tap, expect } from '@git.zone/tstest/tapbundle';
import { spawn } from 'node:child_process';
import { SmartProxy } from '../index.js';
import * as h from './helpers.js';

let echo: h.TestServer;

async function withProxy(options: Record<string, any>, routeExtra: Record<string, any>, fn: (port: number, p: SmartProxy) => Promise<void>) {
  const port = await h.freePort();
  const p = new SmartProxy({ routes: [h.forward('t', port, echo.port, routeExtra)], ...options });
  await p.start();
  try {
    await fn(port, p);
  } finally {
    await p.stop();
  }
}

async function roundTrip(c: import('node:net').Socket, msg: string) {
  const r = h.readBytes(c, msg.length);
  c.write(msg);
  expect((await r).toString()).toEqual(msg);
}

tap.test('setup', async () => {
  echo = await h.echoServer();
});

tap.test('initialDataTimeout closes a silent client on a port that needs its first bytes', async () => {
  await withProxy({ initialDataTimeout: 300 }, { match: { domains: 'a.test' } }, async (port, p) => {
    const c = await h.connect(port);
    const t0 = Date.now();
    await h.closed(c, 3000);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(250);
    expect(p.getStatistics().terminationStats.incoming.initial_data_timeout).toEqual(1);
  });
});

tap.test('inactivityTimeout closes an idle connection but not a chatty one', async () => {
  await withProxy({ inactivityTimeout: 400, keepAliveTreatment: 'standard' }, {}, async (port, p) => {
    const idle = await h.connect(port);
    const chatty = await h.connect(port);
    await roundTrip(idle, 'a');
    const t0 = Date.now();
    const idleClosed = h.closed(idle, 3000);
    for (let i = 0; i < 8; i++) {
      await roundTrip(chatty, 'x');
      await h.sleep(100);
    }
    await idleClosed;
    expect(Date.now() - t0).toBeGreaterThanOrEqual(350);
    // 800 ms of activity every 100 ms kept `chatty` alive past 2 × the timeout.
    await roundTrip(chatty, 'still');
    chatty.destroy();
    expect(p.getStatistics().terminationStats.incoming.inactivity_timeout).toEqual(1);
  });
});

tap.test('maxConnectionLifetime closes even a busy connection', async () => {
  await withProxy({ maxConnectionLifetime: 500, keepAliveTreatment: 'standard' }, {}, async (port, p) => {
    const c = await h.connect(port);
    const closed = h.closed(c, 3000);
    const t0 = Date.now();
    let done = false;
    closed.then(() => (done = true));
    while (!done && Date.now() - t0 < 2500) {
      c.write('x');
      await h.sleep(50);
    }
    await closed;
    expect(Date.now() - t0).toBeLessThan(2000);
    expect(p.getStatistics().terminationStats.incoming.max_lifetime).toEqual(1);
  });
});

tap.test("keepAliveTreatment 'immortal' never times keep-alive connections out", async () => {
  await withProxy({ inactivityTimeout: 150, maxConnectionLifetime: 150, keepAliveTreatment: 'immortal' }, {}, async (port) => {
    const c = await h.connect(port);
    await h.sleep(600);
    await roundTrip(c, 'alive');
    c.destroy();
  });
});

tap.test("keepAliveTreatment 'extended' multiplies the inactivity timeout", async () => {
  await withProxy({ inactivityTimeout: 100, keepAliveInactivityMultiplier: 6, keepAliveTreatment: 'extended' }, {}, async (port) => {
    const c = await h.connect(port);
    await h.sleep(300);
    await roundTrip(c, 'alive'); // 3 × the base timeout: still open
    const t0 = Date.now();
    await h.closed(c, 3000);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(500);
  });
});

tap.test('socketTimeout bounds connections without keep-alive', async () => {
  await withProxy({ keepAlive: false, socketTimeout: 300 }, {}, async (port, p) => {
    const c = await h.connect(port);
    await roundTrip(c, 'a');
    await h.closed(c, 3000);
    expect(p.getStatistics().terminationStats.incoming.inactivity_timeout).toEqual(1);
  });
});

tap.test('connectionTimeout bounds the backend connect', async () => {
  // A loopback listener whose accept queue is full drops our SYN, so only the timeout ends the attempt.
  const py = spawn('python3', ['test/fixtures/stalled-listener.py', '20'], { stdio: ['ignore', 'pipe', 'inherit'] });
  try {
    const target = await new Promise<number>((r) => py.stdout!.once('data', (d) => r(Number(String(d).trim()))));
    const port = await h.freePort();
    const p = new SmartProxy({ connectionTimeout: 300, routes: [h.forward('stalled', port, target)] });
    await p.start();
    const c = await h.connect(port);
    const t0 = Date.now();
    await h.closed(c, 3000);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(250);
    expect(Date.now() - t0).toBeLessThan(2000);
    expect(p.getStatistics().terminationStats.incoming.connect_timeout).toEqual(1);
    await p.stop();
  } finally {
    py.kill();
  }
});

tap.test('teardown', async () => {
  await echo.close();
});

tap.start();
