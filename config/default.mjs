// The bundled default configuration (`pnpm start`): a small demo HTTP backend on an ephemeral
// loopback port, and a forward route to it on port 8080 (SMARTPROXY_PORT overrides).
// Try it: curl http://127.0.0.1:8080/
import * as http from 'node:http';

const listenPort = Number(process.env.SMARTPROXY_PORT || 8080);
let backend;

export default async function options() {
  backend = http.createServer((req, res) => {
    res.setHeader('content-type', 'text/plain');
    res.end(`Hello from the demo backend: you reached ${req.url} through smartproxy-native on port ${listenPort}.\n`);
  });
  await new Promise((resolve) => backend.listen(0, '127.0.0.1', resolve));
  return {
    routes: [
      {
        name: 'demo',
        match: { ports: listenPort },
        action: { type: 'forward', target: { host: '127.0.0.1', port: backend.address().port } },
      },
    ],
  };
}

export async function close() {
  if (backend) await new Promise((resolve) => backend.close(resolve));
}
