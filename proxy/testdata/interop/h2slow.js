// A slow HTTP/2 reader for proxy/h2_interop_test.go, on Node's standard
// library only. Usage: node h2slow.js host:port path
// Asks for path over TLS (ALPN h2), stops reading at the first bytes and
// prints "paused"; reads on once a line comes on stdin, then prints
// "done <length> <sha256>".
'use strict';
const http2 = require('http2');
const crypto = require('crypto');
const readline = require('readline');

const [addr, path] = process.argv.slice(2);
const c = http2.connect('https://' + addr, { rejectUnauthorized: false });
c.on('error', (e) => { console.log('error ' + e.message); process.exit(1); });
const s = c.request({ ':path': path });
const sum = crypto.createHash('sha256');
let n = 0;
let paused = false;
s.on('data', (d) => {
  sum.update(d);
  n += d.length;
  if (!paused) {
    paused = true;
    s.pause();
    console.log('paused');
    readline.createInterface({ input: process.stdin }).once('line', () => s.resume());
  }
});
s.on('end', () => { console.log(`done ${n} ${sum.digest('hex')}`); c.close(); process.exit(0); });
s.on('error', (e) => { console.log('error ' + e.message); process.exit(1); });
