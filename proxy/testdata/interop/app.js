// An upstream app for proxy/interop_test.go, on Node's standard library
// only. Usage: node app.js http [keepAliveTimeoutMs [maxRequestsPerSocket]]
// | node app.js h2.
// It listens on a free loopback port and prints the port on stdout.
'use strict';
const http = require('http');
const http2 = require('http2');

const mode = process.argv[2] || 'http';

// Open server-sent event streams; each GET /sse/next sends the next event
// to all of them.
const sse = new Set();
let sseSeq = 0;

function readAll(req, cb) {
  const parts = [];
  req.on('data', (c) => parts.push(c));
  req.on('end', () => cb(Buffer.concat(parts)));
}

function handle(req, res) {
  const u = new URL(req.url, 'http://x');
  switch (u.pathname) {
    case '/hello': {
      const body = 'hello from node\n';
      res.writeHead(200, { 'Content-Type': 'text/plain', 'Content-Length': Buffer.byteLength(body) });
      res.end(body); // Node sends no body for HEAD
      return;
    }
    case '/chunked':
      res.writeHead(200, { 'Content-Type': 'text/plain' });
      res.write('one,');
      res.write('two,');
      setTimeout(() => { res.write('three,'); res.end('end'); }, 10);
      return;
    case '/echo':
      // Streamed back as it comes (chunked), with the length it saw.
      res.writeHead(200, {
        'Content-Type': req.headers['content-type'] || 'application/octet-stream',
        'X-Seen-Length': String(req.headers['content-length'] || ''),
        'X-Seen-Expect': String(req.headers['expect'] || ''),
      });
      req.pipe(res);
      return;
    case '/echo-length':
      readAll(req, (b) => {
        res.writeHead(200, { 'Content-Length': b.length });
        res.end(b);
      });
      return;
    case '/nocontent':
      res.writeHead(204, { 'X-App': 'node' });
      res.end();
      return;
    case '/notmodified':
      res.writeHead(304, { ETag: '"v1"', 'Cache-Control': 'max-age=60' });
      res.end();
      return;
    case '/trailers':
      res.writeHead(200, { 'Content-Type': 'text/plain', Trailer: 'X-Checksum' });
      res.write('part one;');
      res.write('part two');
      res.addTrailers({ 'X-Checksum': 'abc123' });
      res.end();
      return;
    case '/headers':
      {
        const body = JSON.stringify({
          xff: req.headers['x-forwarded-for'] || null,
          xfproto: req.headers['x-forwarded-proto'] || null,
          xfhost: req.headers['x-forwarded-host'] || null,
          forwarded: req.headers['forwarded'] || null,
          host: req.headers['host'] || null,
          connection: req.headers['connection'] || null,
          remotePort: req.socket.remotePort,
        });
        res.writeHead(200, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) });
        res.end(body);
      }
      return;
    case '/sse':
      res.writeHead(200, { 'Content-Type': 'text/event-stream', 'Cache-Control': 'no-cache' });
      res.flushHeaders();
      sse.add(res);
      res.on('close', () => sse.delete(res));
      return;
    case '/sse/next': {
      const n = sseSeq++;
      for (const r of sse) r.write(`data: event ${n}\n\n`);
      const body = `sent ${n} to ${sse.size}`;
      res.writeHead(200, { 'Content-Length': Buffer.byteLength(body) });
      res.end(body);
      return;
    }
    case '/abort-length':
      // Promises 100 bytes, sends 40, then drops the connection.
      res.writeHead(200, { 'Content-Length': 100 });
      res.write('x'.repeat(40));
      setTimeout(() => req.socket.destroy(), 50);
      return;
    case '/abort-chunked':
      res.writeHead(200, { 'Content-Type': 'text/plain' });
      res.write('y'.repeat(40));
      setTimeout(() => req.socket.destroy(), 50);
      return;
    case '/early':
      res.writeEarlyHints({ link: '</style.css>; rel=preload; as=style' });
      setTimeout(() => {
        res.writeHead(200, { 'Content-Length': 5 });
        res.end('early');
      }, 20);
      return;
    case '/bigheaders': {
      // 40 KiB of header fields, one of them 12 KiB long.
      const h = { 'X-Long': 'l'.repeat(12 << 10), 'Content-Length': 2 };
      for (let i = 0; i < 28; i++) h['X-Field-' + i] = String(i).repeat(1000);
      res.writeHead(200, h);
      res.end('ok');
      return;
    }
    case '/cookies':
      res.setHeader('Set-Cookie', ['a=1; Path=/', 'b=2; Path=/', 'c=3; HttpOnly']);
      res.setHeader('X-Multi', ['one', 'two']);
      res.end('cookies');
      return;
    case '/close': {
      const body = 'closing after this';
      res.writeHead(200, { Connection: 'close', 'Content-Length': Buffer.byteLength(body) });
      res.end(body);
      return;
    }
    case '/close-chunked':
      res.writeHead(200, { Connection: 'close' });
      res.write('closing ');
      res.end('chunked');
      return;
    default:
      res.writeHead(404, { 'Content-Length': 0 });
      res.end();
  }
}

let watching = 0; // open /pkg.Svc/Watch streams

function h2stream(stream, headers) {
  const path = headers[':path'];
  switch (path) {
    case '/pkg.Svc/Unary': {
      const parts = [];
      stream.on('data', (c) => parts.push(c));
      stream.on('end', () => {
        stream.respond({ ':status': 200, 'content-type': 'application/grpc' }, { waitForTrailers: true });
        stream.on('wantTrailers', () => stream.sendTrailers({ 'grpc-status': '0', 'grpc-message': 'ok' }));
        stream.end('reply:' + Buffer.concat(parts).toString() + ':te=' + (headers['te'] || ''));
      });
      return;
    }
    case '/pkg.Svc/Missing':
      stream.respond({ ':status': 200, 'content-type': 'application/grpc', 'grpc-status': '5', 'grpc-message': 'not found' }, { endStream: true });
      return;
    case '/pkg.Svc/Chat': {
      stream.respond({ ':status': 200, 'content-type': 'application/grpc' }, { waitForTrailers: true });
      stream.on('wantTrailers', () => stream.sendTrailers({ 'grpc-status': '0' }));
      let buf = '';
      stream.on('data', (c) => {
        buf += c.toString();
        let i;
        while ((i = buf.indexOf('\n')) >= 0) {
          stream.write('re: ' + buf.slice(0, i + 1));
          buf = buf.slice(i + 1);
        }
      });
      stream.on('end', () => stream.end());
      return;
    }
    case '/echo':
      stream.respond({ ':status': 200, 'content-type': 'application/octet-stream' });
      stream.pipe(stream);
      return;
    case '/pkg.Svc/Watch': {
      // A server stream that ticks until the client goes.
      watching++;
      stream.respond({ ':status': 200, 'content-type': 'application/grpc' });
      const t = setInterval(() => stream.write('tick\n'), 20);
      stream.write('tick\n');
      stream.on('close', () => { clearInterval(t); watching--; });
      stream.on('error', () => {});
      return;
    }
    case '/watching':
      stream.respond({ ':status': 200 });
      stream.end(String(watching));
      return;
    case '/goaway':
      // Answers, then closes its session gracefully (GOAWAY), as a
      // server shutting down or recycling connections does.
      stream.respond({ ':status': 200, 'content-length': '3' });
      stream.end('bye');
      stream.session.close();
      return;
    case '/pkg.Svc/Reset':
      stream.respond({ ':status': 200, 'content-type': 'application/grpc' });
      stream.write('partial');
      // destroy with an error sends RST_STREAM (INTERNAL_ERROR); close(code)
      // would end the stream (END_STREAM) first.
      stream.on('error', () => {});
      setTimeout(() => stream.destroy(new Error('app failed mid-stream')), 50);
      return;
    default:
      stream.respond({ ':status': 404 }, { endStream: true });
  }
}

let server;
if (mode === 'h2') {
  server = http2.createServer();
  server.on('stream', h2stream);
  server.on('sessionError', () => {});
} else {
  server = http.createServer(handle);
  if (process.argv[3]) server.keepAliveTimeout = Number(process.argv[3]);
  if (process.argv[4]) server.maxRequestsPerSocket = Number(process.argv[4]);
  server.on('upgrade', (req, socket, head) => {
    if (req.url === '/reject') {
      // Refuses the upgrade with a plain response, and closes.
      socket.end('HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: 8\r\nConnection: close\r\n\r\nrejected');
      return;
    }
    // The app may speak first, in the same write as the 101.
    socket.write('HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\nX-App: node\r\n\r\n' +
      (req.headers['x-greet'] ? 'greetings\n' : ''));
    if (head.length) socket.write(head);
    socket.on('data', (d) => socket.write(d));
    socket.on('end', () => socket.end());
    socket.on('error', () => {});
  });
}
server.on('clientError', (err, socket) => socket.destroy());
server.listen(0, '127.0.0.1', () => {
  process.stdout.write(server.address().port + '\n');
});
// The test closes stdin (or dies): leave then.
process.stdin.on('end', () => process.exit(0));
process.stdin.on('error', () => process.exit(0));
process.stdin.resume();
