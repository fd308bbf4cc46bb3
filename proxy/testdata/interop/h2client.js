// An HTTP/2 client for proxy/h2_interop_test.go, on Node's standard
// library only. Usage: node h2client.js host:port streams
// Opens one TLS connection (ALPN h2; maxSessionMemory raised from Node's
// 10 MB, past which Node itself resets streams with ENHANCE_YOUR_CALM) and runs that many streams on it at
// once against tiUpstream's paths: downloads of /big and /stream and
// uploads to /sum of mixed sizes, checksummed, and every fifth stream
// cancelled (RST_STREAM CANCEL) mid-download or mid-upload. It prints one
// JSON object: counts of streams that matched, mismatched, were cancelled
// and failed, and the first few failures.
'use strict';
const http2 = require('http2');
const crypto = require('crypto');

const [addr, nStr] = process.argv.slice(2);
const n = Number(nStr);

// tiPattern: byte(i ^ i>>8 ^ i>>16 ^ i>>11).
function pattern(len) {
  const b = Buffer.alloc(len);
  for (let i = 0; i < len; i++) b[i] = (i ^ (i >> 8) ^ (i >> 16) ^ (i >> 11)) & 0xff;
  return b;
}
const sha = (b) => crypto.createHash('sha256').update(b).digest('hex');

const sizes = [0, 1, 100, 16384, 16385, 70000, 1 << 20, 3 << 20];
const res = { ok: 0, bad: 0, cancelled: 0, failed: 0, errors: [] };
const c = http2.connect('https://' + addr, { rejectUnauthorized: false, maxSessionMemory: 1024 });
c.on('error', (e) => { res.errors.push('connection: ' + e.message); });

function note(kind, msg) {
  res[kind]++;
  if (msg && res.errors.length < 10) res.errors.push(msg);
}

function one(i) {
  return new Promise((done) => {
    const size = sizes[i % sizes.length];
    const cancel = i % 5 === 4 && size >= 70000;
    const kind = ['big', 'stream', 'sum'][i % 3];
    const path = kind === 'sum' ? '/sum' : `/${kind}?n=${size}`;
    const s = c.request({ ':path': path, ':method': kind === 'sum' ? 'POST' : 'GET' },
      { endStream: kind !== 'sum' });
    const parts = [];
    let got = 0;
    let status = 0;
    let cancelled = false;
    s.on('response', (h) => { status = h[':status']; });
    s.on('data', (d) => {
      parts.push(d);
      got += d.length;
      if (cancel && kind !== 'sum' && got >= size / 3 && !cancelled) {
        cancelled = true;
        s.close(http2.constants.NGHTTP2_CANCEL);
      }
    });
    s.on('error', () => {});
    s.on('close', () => {
      const body = Buffer.concat(parts);
      if (cancelled) note('cancelled');
      else if (status !== 200) note('failed', `${path} #${i}: status ${status} rst ${s.rstCode}`);
      else if (kind === 'sum') {
        const want = `${size} ${sha(pattern(size))}`;
        if (String(body) === want) note('ok'); else note('bad', `${path} #${i}: ${body} want ${want}`);
      } else if (body.length === size && body.equals(pattern(size))) note('ok');
      else note('bad', `${path} #${i}: ${body.length} bytes, want ${size}`);
      done();
    });
    if (kind === 'sum') {
      const b = pattern(size);
      if (cancel) {
        // Send a third, then reset the stream.
        s.write(b.subarray(0, Math.floor(size / 3)), () => {
          setTimeout(() => { cancelled = true; s.close(http2.constants.NGHTTP2_CANCEL); }, 50);
        });
      } else {
        s.end(b);
      }
    }
  });
}

const all = [];
for (let i = 0; i < n; i++) all.push(one(i));
Promise.all(all).then(() => {
  c.close();
  process.stdout.write(JSON.stringify(res) + '\n');
});
setTimeout(() => { res.errors.push('timed out'); process.stdout.write(JSON.stringify(res) + '\n'); process.exit(1); }, 50000).unref();
