'use strict';
// SocketHandlers: ready-made socket handlers (spec §5.2). Each member is, or returns, a
// (socket, context) => void handler for `action.type: 'socket-handler'` routes. They run on a
// real net.Socket that owns the connection.
const net = require('node:net');

const STATUS_TEXT = {
  200: 'OK', 201: 'Created', 204: 'No Content', 301: 'Moved Permanently', 302: 'Found', 303: 'See Other',
  307: 'Temporary Redirect', 308: 'Permanent Redirect', 400: 'Bad Request', 401: 'Unauthorized', 403: 'Forbidden',
  404: 'Not Found', 405: 'Method Not Allowed', 429: 'Too Many Requests', 500: 'Internal Server Error',
  502: 'Bad Gateway', 503: 'Service Unavailable', 504: 'Gateway Timeout',
};

function statusText(code) {
  return STATUS_TEXT[code] || 'Unknown';
}

function httpReply(socket, statusCode, headers, body = '') {
  const payload = Buffer.from(body);
  const lines = [`HTTP/1.1 ${statusCode} ${statusText(statusCode)}`];
  const all = { 'Content-Length': String(payload.length), Connection: 'close', ...headers };
  for (const [k, v] of Object.entries(all)) lines.push(`${k}: ${v}`);
  socket.end(Buffer.concat([Buffer.from(`${lines.join('\r\n')}\r\n\r\n`), payload]));
}

/** Reads one HTTP request head (and a Content-Length body) from the socket. */
function readRequest(socket, onRequest) {
  let buf = Buffer.alloc(0);
  let done = false;
  const onData = (chunk) => {
    if (done) return;
    buf = Buffer.concat([buf, chunk]);
    const end = buf.indexOf('\r\n\r\n');
    if (end < 0) {
      if (buf.length > 64 * 1024) {
        done = true;
        socket.off('data', onData);
        httpReply(socket, 400, { 'Content-Type': 'text/plain' }, 'Bad Request');
      }
      return;
    }
    const head = buf.subarray(0, end).toString('latin1');
    const [requestLine, ...headerLines] = head.split('\r\n');
    const [method = '', url = '/'] = requestLine.split(' ');
    const headers = {};
    for (const line of headerLines) {
      const i = line.indexOf(':');
      if (i > 0) {
        const key = line.slice(0, i).trim().toLowerCase();
        if (!(key in headers)) headers[key] = line.slice(i + 1).trim();
      }
    }
    const length = Number(headers['content-length'] || 0);
    const body = buf.subarray(end + 4);
    if (body.length < length) return; // wait for the rest of the body
    done = true;
    socket.off('data', onData);
    onRequest({ method, url, headers, body: length ? body.subarray(0, length).toString() : undefined });
  };
  socket.on('data', onData);
}

function fill(template, values) {
  return template.replace(/\{(domain|port|path|clientIp)\}/g, (_, k) => (values[k] === undefined ? '' : String(values[k])));
}

const SocketHandlers = {
  /** Greets, then echoes every chunk back. */
  echo: (socket, _context) => {
    socket.write('ECHO SERVER READY\n');
    socket.on('data', (data) => socket.write(data));
  },

  /** Pipes the connection to host:port; either side closing closes the other. */
  proxy: (host, port) => (socket, _context) => {
    const target = net.connect(port, host);
    socket.pipe(target);
    target.pipe(socket);
    const destroyBoth = () => {
      socket.destroy();
      target.destroy();
    };
    socket.on('error', destroyBoth);
    target.on('error', destroyBoth);
    socket.on('close', () => target.destroy());
    target.on('close', () => socket.destroy());
  },

  /** Splits input on "\n" and calls `handler(line, socket)` for each non-empty trimmed line. */
  lineProtocol: (handler) => (socket, _context) => {
    let buffer = '';
    socket.on('data', (data) => {
      buffer += data.toString();
      const lines = buffer.split('\n');
      buffer = lines.pop() || '';
      for (const line of lines) {
        const trimmed = line.trim();
        if (trimmed) handler(trimmed, socket);
      }
    });
  },

  /** Answers the first request with a minimal HTTP/1.1 response, then closes. */
  httpResponse: (statusCode, body) => (socket, _context) => {
    readRequest(socket, () => httpReply(socket, statusCode, { 'Content-Type': 'text/plain' }, body));
  },

  /** Writes a message (by default naming the client IP), then closes. */
  block: (message) => (socket, context) => {
    socket.end(message || `Connection blocked from ${context.clientIp}\n`);
  },

  /** Answers with an HTTP error (403 by default), then closes. */
  httpBlock: (statusCode = 403, message) => (socket, context) => {
    const text = message || `Access forbidden for ${context.domain || context.clientIp}`;
    readRequest(socket, () => httpReply(socket, statusCode, { 'Content-Type': 'text/plain' }, text));
  },

  /**
   * Redirects: fills {domain}, {port}, {path}, {clientIp} into the template; 301 (Moved
   * Permanently) by default, otherwise the given status.
   */
  httpRedirect: (locationTemplate, statusCode = 301) => (socket, context) => {
    readRequest(socket, (req) => {
      const hostHeader = req.headers.host || '';
      const domain = (hostHeader.replace(/:\d+$/, '') || context.domain || '').replace(/^\[|\]$/g, '');
      const location = fill(locationTemplate, { domain, port: context.port, path: req.url, clientIp: context.clientIp });
      httpReply(socket, statusCode, { Location: location }, '');
    });
  },

  /** A tiny HTTP/1.1 server on the raw socket (one request per connection). */
  httpServer: (handler) => (socket, context) => {
    readRequest(socket, (req) => {
      let status = 200;
      const headers = {};
      let sent = false;
      const res = {
        status(code) {
          status = code;
        },
        header(name, value) {
          headers[name] = value;
        },
        send(data) {
          if (sent) return;
          sent = true;
          httpReply(socket, status, { 'Content-Type': 'text/plain', ...headers }, data === undefined ? '' : String(data));
        },
        end() {
          if (!sent) res.send('');
        },
      };
      try {
        handler({ ...req, context }, res);
      } catch (err) {
        if (!sent) {
          sent = true;
          httpReply(socket, 500, { 'Content-Type': 'text/plain' }, 'Internal Server Error');
        }
        throw err;
      }
    });
  },
};

module.exports = { SocketHandlers };
