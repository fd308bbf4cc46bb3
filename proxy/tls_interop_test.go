package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// The TLS interop tests put real non-Go TLS clients (curl, openssl
// s_client, Node.js https, Python ssl) in front of the proxy's TLS front
// ends, whose HTTP/1.1 connections are served on the event loops with
// crypto/tls sealing and opening records there: records of every size,
// every cipher suite those clients offer, pipelining, KeyUpdate,
// renegotiation attempts, resumption, close_notify and tiny records. The
// upstream is a Go httptest server. Each test skips when its tool is
// missing; every child process runs under a deadline.

// tiFronts are the TLS front ends: Serve given TLSServer connections whose
// handshake is done, Serve on a NewTLSListener, and NewServer with a TLS
// config (net/http's server, HTTP/2 and HTTP/1.1, the Proxy as handler).
var tiFronts = []string{"serve-tls", "serve-tls-listener", "handler-tls"}

// tiEnv is an upstream and a Proxy in front of it on a TLS front.
type tiEnv struct {
	url   string // https://127.0.0.1:port
	addr  string // 127.0.0.1:port
	logs  *syncBuffer
	hits  *tiHits
	proxy *Proxy
}

// tiHits counts requests for /count by id.
type tiHits struct {
	mu sync.Mutex
	m  map[string]int
}

func (h *tiHits) add(id string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.m == nil {
		h.m = map[string]int{}
	}
	h.m[id]++
	return h.m[id]
}

func (h *tiHits) get(id string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.m[id]
}

// tiPattern returns n bytes that do not repeat with a short period.
func tiPattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i ^ i>>8 ^ i>>16 ^ i>>11)
	}
	return b
}

func tiSum(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// tiChunkSizes are the sizes of the writes of /stream: records of every
// size around the 16 KiB record limit.
var tiChunkSizes = []int{1, 7, 100, 1000, 4095, 16383, 16384, 16385, 32768, 70000, 2, 16401}

// tiUpstream is the upstream app:
//
//	/hello          "hello\n"
//	/big?n=N        tiPattern(N) with Content-Length
//	/stream?n=N     tiPattern(N), chunked, flushed in writes of tiChunkSizes
//	/sum            reads the body; "<length> <sha256>", X-Seen-TE
//	/echo           the body back
//	/count?id=X     how many times X was asked for
func tiUpstream(hits *tiHits) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := strconv.Atoi(r.URL.Query().Get("n"))
		w.Header().Set("X-Up", "go")
		switch r.URL.Path {
		case "/hello":
			w.Header().Set("Content-Type", "text/plain")
			_, _ = io.WriteString(w, "hello\n")
		case "/big":
			w.Header().Set("Content-Length", strconv.Itoa(n))
			_, _ = w.Write(tiPattern(n))
		case "/stream":
			b := tiPattern(n)
			f := w.(http.Flusher)
			for i := 0; len(b) > 0; i++ {
				k := min(len(b), tiChunkSizes[i%len(tiChunkSizes)])
				_, _ = w.Write(b[:k])
				f.Flush()
				b = b[k:]
			}
		case "/sum":
			b, err := io.ReadAll(r.Body)
			if err != nil {
				w.WriteHeader(499)
				return
			}
			w.Header().Set("X-Seen-TE", strings.Join(r.TransferEncoding, ","))
			fmt.Fprintf(w, "%d %s", len(b), tiSum(b))
		case "/echo":
			b, err := io.ReadAll(r.Body)
			if err != nil {
				w.WriteHeader(499)
				return
			}
			w.Header().Set("Content-Length", strconv.Itoa(len(b)))
			_, _ = w.Write(b)
		case "/eof":
			// A body that ends when the connection does (HTTP/1.0 style).
			c, brw, err := http.NewResponseController(w).Hijack()
			if err != nil {
				return
			}
			_, _ = brw.WriteString("HTTP/1.1 200 OK\r\nX-Up: go\r\nConnection: close\r\n\r\n")
			_, _ = brw.Write(tiPattern(n))
			_ = brw.Flush()
			_ = c.Close()
		case "/reject":
			// Refuses an upload without reading it.
			w.Header().Set("Connection", "close")
			http.Error(w, "too big", http.StatusRequestEntityTooLarge)
		case "/headers":
			fmt.Fprintf(w, "%d", len(r.Header.Get("X-Big")))
		case "/count":
			id := r.URL.Query().Get("id")
			fmt.Fprintf(w, "count %s %d\n", id, hits.add(id))
		default:
			http.NotFound(w, r)
		}
	})
}

// newTIEnv starts the upstream and a Proxy with cfg on front ("reference"
// is net/http's own TLS server with the upstream app as its handler, to
// compare with).
func newTIEnv(t *testing.T, front string, cfg Config) *tiEnv {
	t.Helper()
	env := &tiEnv{logs: &syncBuffer{}, hits: &tiHits{}}
	h := tiUpstream(env.hits)
	if front == "reference" {
		srv := httptest.NewUnstartedServer(h)
		srv.TLS = testServerTLS(t)
		srv.TLS.NextProtos = []string{"h2", "http/1.1"}
		srv.StartTLS()
		t.Cleanup(srv.Close)
		env.url = srv.URL
		env.addr = strings.TrimPrefix(srv.URL, "https://")
		return env
	}
	up := newUpstream(t, h)
	target, _ := url.Parse(up.URL)
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(env.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	p, err := New(target, cfg)
	if err != nil {
		t.Fatal(err)
	}
	env.proxy = p
	if front == "handler-tls" {
		env.url = "https://" + h2iFront(t, p, ServerConfig{IdleTimeout: cfg.IdleTimeout}) // h2 and http/1.1
	} else {
		env.url = serveFront(t, p, front)
	}
	env.addr = strings.TrimPrefix(env.url, "https://")
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("proxy log:\n%s", env.logs.String())
		}
	})
	return env
}

// tiTool returns the path of the program name, or skips t.
func tiTool(t *testing.T, name string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		t.Skipf("%s not in PATH: %v", name, err)
	}
	return path
}

// tiRun runs name with args and stdin within d and returns its stdout and
// stderr; the process is killed when d passes.
func tiRun(t *testing.T, d time.Duration, stdin []byte, env []string, name string, args ...string) (stdout, stderr []byte, err error) {
	t.Helper()
	path := tiTool(t, name)
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.WaitDelay = time.Second
	cmd.Stdin = bytes.NewReader(stdin)
	if env != nil {
		cmd.Env = append(os.Environ(), env...)
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err = cmd.Run()
	if ctx.Err() != nil {
		err = fmt.Errorf("%s did not finish within %v: %w", name, d, err)
	}
	return out.Bytes(), errb.Bytes(), err
}

// tiProc is a child process fed through a pipe, whose output is collected.
type tiProc struct {
	stdin  io.WriteCloser
	out    *syncBuffer // stdout
	errb   *syncBuffer // stderr
	waited chan struct{}
}

func tiStart(t *testing.T, name string, args ...string) *tiProc {
	t.Helper()
	path := tiTool(t, name)
	cmd := exec.Command(path, args...)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	pr := &tiProc{stdin: stdin, out: &syncBuffer{}, errb: &syncBuffer{}, waited: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = pr.out, pr.errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = cmd.Wait(); close(pr.waited) }()
	t.Cleanup(func() {
		_ = stdin.Close()
		_ = cmd.Process.Kill()
		select {
		case <-pr.waited:
		case <-time.After(5 * time.Second):
			t.Errorf("%s did not exit", name)
		}
		if t.Failed() {
			t.Logf("%s stdout:\n%.4000s\nstderr:\n%.4000s", name, pr.out.String(), pr.errb.String())
		}
	})
	return pr
}

func (pr *tiProc) write(t *testing.T, s string) {
	t.Helper()
	if _, err := io.WriteString(pr.stdin, s); err != nil {
		t.Fatalf("writing to the child: %v", err)
	}
}

// waitOut waits until stdout holds want n times.
func (pr *tiProc) waitOut(t *testing.T, want string, n int) {
	t.Helper()
	eventually(t, 5*time.Second, fmt.Sprintf("%d× %q in the output", n, want), func() bool {
		return strings.Count(pr.out.String(), want) >= n
	})
}

// exited reports whether the process ends within d.
func (pr *tiProc) exited(d time.Duration) bool {
	select {
	case <-pr.waited:
		return true
	case <-time.After(d):
		return false
	}
}

// tiCheckAlive fails t unless env still answers a fresh connection.
func tiCheckAlive(t *testing.T, env *tiEnv) {
	t.Helper()
	c, err := dialFrontErr(t, env.url)
	if err != nil {
		t.Fatalf("dialing the front afterwards: %v", err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	_, _ = io.WriteString(c, "GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	b, _ := io.ReadAll(c)
	if !bytes.HasPrefix(b, []byte("HTTP/1.1 200 OK\r\n")) || !bytes.HasSuffix(b, []byte("\r\n\r\nhello\n")) {
		t.Errorf("GET /hello afterwards: %q", b)
	}
}

// TestTLSInteropCurl: curl over HTTP/1.1 with TLS 1.2 and 1.3, and with
// --http2 (HTTP/2 where the front offers it), several transfers on one
// connection: downloads of several MiB with and without a length, uploads
// with a length, chunked and with Expect: 100-continue, HEAD.
func TestTLSInteropCurl(t *testing.T) {
	tiTool(t, "curl")
	checkGoroutines(t)
	dir := t.TempDir()
	upload := tiPattern(2<<20 + 12345)
	upFile := filepath.Join(dir, "upload")
	if err := os.WriteFile(upFile, upload, 0o600); err != nil {
		t.Fatal(err)
	}
	const bigN, streamN = 3<<20 + 17, 2<<20 + 999
	for _, front := range tiFronts {
		for _, variant := range []struct {
			name  string
			args  []string
			proto string // http_version expected
		}{
			{"h1-tls12", []string{"--http1.1", "--tlsv1.2", "--tls-max", "1.2"}, "1.1"},
			{"h1-tls13", []string{"--http1.1", "--tlsv1.3"}, "1.1"},
			{"h2", []string{"--http2"}, "1.1"},
		} {
			t.Run(front+"/"+variant.name, func(t *testing.T) {
				env := newTIEnv(t, front, Config{})
				if variant.name == "h2" && front == "handler-tls" {
					variant.proto = "2"
				}
				out := func(name string) string { return filepath.Join(dir, front+variant.name+name) }
				type transfer struct {
					name string
					args []string
				}
				transfers := []transfer{
					{"hello", []string{env.url + "/hello"}},
					{"big", []string{env.url + fmt.Sprintf("/big?n=%d", bigN)}},
					{"stream", []string{env.url + fmt.Sprintf("/stream?n=%d", streamN)}},
					{"post", []string{"--data-binary", "@" + upFile, env.url + "/sum"}},
					{"chunked", []string{"-H", "Transfer-Encoding: chunked", "--data-binary", "@" + upFile, env.url + "/sum"}},
					{"expect", []string{"-H", "Expect: 100-continue", "--data-binary", "@" + upFile, env.url + "/sum"}},
					{"head", []string{"-I", env.url + "/big?n=12345"}},
					{"hello2", []string{env.url + "/hello"}},
				}
				var args []string
				for i, tr := range transfers {
					if i > 0 {
						args = append(args, "--next")
					}
					args = append(args, "-sSk", "--max-time", "10")
					args = append(args, variant.args...)
					args = append(args, "-w", tr.name+" %{http_code} %{num_connects} %{size_download} %{http_version}\\n",
						"-D", out(tr.name+".head"), "-o", out(tr.name))
					args = append(args, tr.args...)
				}
				stdout, stderr, err := tiRun(t, 20*time.Second, nil, nil, "curl", args...)
				if err != nil {
					t.Fatalf("curl: %v\nstdout:\n%s\nstderr:\n%s", err, stdout, stderr)
				}
				lines := strings.Split(strings.TrimSpace(string(stdout)), "\n")
				if len(lines) != len(transfers) {
					t.Fatalf("curl wrote %d lines, want %d:\n%s\nstderr:\n%s", len(lines), len(transfers), stdout, stderr)
				}
				file := func(name string) []byte {
					b, err := os.ReadFile(out(name))
					if err != nil {
						t.Errorf("%s: %v", name, err)
					}
					return b
				}
				wantSum := fmt.Sprintf("%d %s", len(upload), tiSum(upload))
				for i, tr := range transfers {
					f := strings.Fields(lines[i])
					if len(f) != 5 || f[0] != tr.name {
						t.Fatalf("curl line %q", lines[i])
					}
					if f[1] != "200" {
						t.Errorf("%s: status %s", tr.name, f[1])
					}
					wantConnects := "0"
					if i == 0 {
						wantConnects = "1"
					}
					if f[2] != wantConnects {
						t.Errorf("%s: %s connects, want %s (one connection for all)", tr.name, f[2], wantConnects)
					}
					if f[4] != variant.proto {
						t.Errorf("%s: HTTP/%s, want HTTP/%s", tr.name, f[4], variant.proto)
					}
				}
				if b := file("hello"); string(b) != "hello\n" {
					t.Errorf("hello: %q", b)
				}
				if b := file("hello2"); string(b) != "hello\n" {
					t.Errorf("hello2: %q", b)
				}
				if b := file("big"); !bytes.Equal(b, tiPattern(bigN)) {
					t.Errorf("big: %d bytes, sum %s, want %d, %s", len(b), tiSum(b), bigN, tiSum(tiPattern(bigN)))
				}
				if b := file("stream"); !bytes.Equal(b, tiPattern(streamN)) {
					t.Errorf("stream: %d bytes, want %d", len(b), streamN)
				}
				for _, name := range []string{"post", "chunked", "expect"} {
					if b := file(name); string(b) != wantSum {
						t.Errorf("%s: %q, want %q", name, b, wantSum)
					}
				}
				if h := strings.ToLower(string(file("chunked.head"))); variant.proto == "1.1" && !strings.Contains(h, "x-seen-te: chunked") {
					t.Errorf("chunked upload: head %q, want X-Seen-TE: chunked", h)
				}
				head := strings.ToLower(string(file("head.head")))
				if !strings.Contains(head, "content-length: 12345\r\n") || !strings.Contains(head, "x-up: go") {
					t.Errorf("HEAD: head %q", head)
				}
				if b := file("head"); !strings.EqualFold(string(b), head) {
					t.Errorf("HEAD: output %q, want the head alone", b) // -I writes the head there
				}
				if h := strings.ToLower(string(file("expect.head"))); variant.proto == "1.1" && strings.Count(h, "http/1.1 100 continue") != 1 {
					t.Errorf("Expect: head %q, want one 100 Continue", h)
				}
			})
		}
	}
}

// TestTLSInteropCipherSuites: byte-exact large bodies, both ways, through
// each cipher suite Go's server and OpenSSL share, TLS 1.2 (AEAD and CBC)
// and TLS 1.3.
func TestTLSInteropCipherSuites(t *testing.T) {
	tiTool(t, "curl")
	checkGoroutines(t)
	dir := t.TempDir()
	upload := tiPattern(300001)
	upFile := filepath.Join(dir, "upload")
	if err := os.WriteFile(upFile, upload, 0o600); err != nil {
		t.Fatal(err)
	}
	envs := map[string]*tiEnv{}
	for _, front := range []string{"serve-tls", "serve-tls-listener"} {
		envs[front] = newTIEnv(t, front, Config{})
	}
	suites := []struct{ name, ossl string }{
		{"tls12", "ECDHE-ECDSA-AES128-GCM-SHA256"},
		{"tls12", "ECDHE-ECDSA-AES256-GCM-SHA384"},
		{"tls12", "ECDHE-ECDSA-CHACHA20-POLY1305"},
		{"tls12", "ECDHE-ECDSA-AES128-SHA"},
		{"tls12", "ECDHE-ECDSA-AES256-SHA"},
		{"tls13", "TLS_AES_128_GCM_SHA256"},
		{"tls13", "TLS_AES_256_GCM_SHA384"},
		{"tls13", "TLS_CHACHA20_POLY1305_SHA256"},
	}
	const bigN, streamN = 1<<20 + 1, 600007
	for i, s := range suites {
		front := []string{"serve-tls", "serve-tls-listener"}[i%2]
		t.Run(s.ossl+"/"+front, func(t *testing.T) {
			env := envs[front]
			var tlsArgs []string
			if s.name == "tls12" {
				tlsArgs = []string{"--http1.1", "--tlsv1.2", "--tls-max", "1.2", "--ciphers", s.ossl}
			} else {
				tlsArgs = []string{"--http1.1", "--tlsv1.3", "--tls13-ciphers", s.ossl}
			}
			out := func(name string) string { return filepath.Join(dir, s.ossl+name) }
			var args []string
			for j, tr := range [][]string{
				{"big", env.url + fmt.Sprintf("/big?n=%d", bigN)},
				{"stream", env.url + fmt.Sprintf("/stream?n=%d", streamN)},
				{"echo", "--data-binary", "@" + upFile, env.url + "/echo"},
			} {
				if j > 0 {
					args = append(args, "--next")
				}
				args = append(args, "-sSkv", "--max-time", "10")
				args = append(args, tlsArgs...)
				args = append(args, "-w", tr[0]+" %{http_code} %{num_connects}\\n", "-o", out(tr[0]))
				args = append(args, tr[1:]...)
			}
			stdout, stderr, err := tiRun(t, 15*time.Second, nil, nil, "curl", args...)
			if err != nil {
				t.Fatalf("curl: %v\nstdout:\n%s\nstderr:\n%.3000s", err, stdout, stderr)
			}
			if !strings.Contains(string(stderr), "/ "+s.ossl) {
				t.Errorf("curl did not report the cipher suite %s:\n%.3000s", s.ossl, stderr)
			}
			if got, want := string(stdout), "big 200 1\nstream 200 0\necho 200 0\n"; got != want {
				t.Errorf("curl: %q, want %q", got, want)
			}
			for _, c := range []struct {
				name string
				want []byte
			}{{"big", tiPattern(bigN)}, {"stream", tiPattern(streamN)}, {"echo", upload}} {
				b, err := os.ReadFile(out(c.name))
				if err != nil || !bytes.Equal(b, c.want) {
					t.Errorf("%s: %d bytes (%v), want %d, exact", c.name, len(b), err, len(c.want))
				}
			}
		})
	}
}

// tiReadResponses parses the HTTP/1.1 responses in b, one per method.
func tiReadResponses(t *testing.T, b []byte, methods ...string) []*http.Response {
	t.Helper()
	br := bufio.NewReader(bytes.NewReader(b))
	var out []*http.Response
	for i, m := range methods {
		resp, err := http.ReadResponse(br, &http.Request{Method: m})
		if err != nil {
			t.Fatalf("response %d (%s): %v\nall:\n%.3000q", i, m, err, b)
		}
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatalf("response %d (%s) body: %v\nall:\n%.3000q", i, m, err, b)
		}
		resp.Body = io.NopCloser(bytes.NewReader(body))
		out = append(out, resp)
	}
	if rest, _ := io.ReadAll(br); len(rest) > 0 {
		t.Errorf("after %d responses: %.300q", len(methods), rest)
	}
	return out
}

// tiLatin1 returns the bytes of s, which Python decoded as Latin-1.
func tiLatin1(s string) []byte {
	b := make([]byte, 0, len(s))
	for _, r := range s {
		b = append(b, byte(r))
	}
	return b
}

func tiBody(r *http.Response) []byte {
	b, _ := io.ReadAll(r.Body)
	return b
}

// TestTLSInteropPipelining: openssl s_client writes several requests at
// once, among them a chunked upload and an Expect: 100-continue upload
// (which move the connection off the loop with what it read ahead), and
// reads every response in order.
func TestTLSInteropPipelining(t *testing.T) {
	tiTool(t, "openssl")
	checkGoroutines(t)
	echo := tiPattern(40000)
	reqs := "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n" +
		"GET /big?n=200000 HTTP/1.1\r\nHost: x\r\n\r\n" +
		"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 40000\r\n\r\n" + string(echo) +
		"HEAD /big?n=7 HTTP/1.1\r\nHost: x\r\n\r\n" +
		"GET /stream?n=100000 HTTP/1.1\r\nHost: x\r\n\r\n" +
		"POST /sum HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n" +
		"POST /sum HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\nabc" +
		"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
	methods := []string{"GET", "GET", "POST", "HEAD", "GET", "POST", "POST", "POST", "GET"}
	for _, front := range tiFronts {
		for _, vers := range []string{"-tls1_2", "-tls1_3"} {
			t.Run(front+vers, func(t *testing.T) {
				env := newTIEnv(t, front, Config{})
				stdout, stderr, err := tiRun(t, 10*time.Second, []byte(reqs), nil, "openssl",
					"s_client", "-quiet", vers, "-alpn", "http/1.1", "-connect", env.addr)
				if err != nil {
					t.Fatalf("s_client: %v\nstderr:\n%s\nstdout:\n%.2000q", err, stderr, stdout)
				}
				rs := tiReadResponses(t, stdout, methods...)
				want := []struct {
					status int
					body   []byte
				}{
					{200, []byte("hello\n")},
					{200, tiPattern(200000)},
					{200, echo},
					{200, nil},
					{200, tiPattern(100000)},
					{200, []byte("11 " + tiSum([]byte("hello world")))},
					{100, nil},
					{200, []byte("3 " + tiSum([]byte("abc")))},
					{200, []byte("hello\n")},
				}
				for i, r := range rs {
					if b := tiBody(r); r.StatusCode != want[i].status || !bytes.Equal(b, want[i].body) {
						t.Errorf("response %d (%s): %d, %d bytes %.60q, want %d, %d bytes", i, methods[i], r.StatusCode, len(b), b, want[i].status, len(want[i].body))
					}
				}
				if cl := rs[3].Header.Get("Content-Length"); cl != "7" {
					t.Errorf("HEAD: Content-Length %q", cl)
				}
			})
		}
	}
}

// TestTLSInteropKeyUpdate: a TLS 1.3 client sends KeyUpdate between
// requests, asking the server to update its keys too (K) or not (k); the
// connection goes on with the new keys both ways.
func TestTLSInteropKeyUpdate(t *testing.T) {
	tiTool(t, "openssl")
	checkGoroutines(t)
	for _, front := range tiFronts {
		t.Run(front, func(t *testing.T) {
			env := newTIEnv(t, front, Config{})
			// No -quiet or -ign_eof: s_client takes command letters then.
			pr := tiStart(t, "openssl", "s_client", "-tls1_3", "-alpn", "http/1.1", "-connect", env.addr)
			req := func(id string) string {
				return "GET /count?id=" + id + " HTTP/1.1\r\nHost: x\r\n\r\n"
			}
			pr.write(t, req("a"))
			pr.waitOut(t, "count a 1\n", 1)
			for i, cmd := range []string{"k\n", "K\n", "K\n", "k\n"} {
				pr.write(t, cmd)
				time.Sleep(50 * time.Millisecond)
				id := fmt.Sprintf("b%d", i)
				pr.write(t, req(id))
				pr.waitOut(t, "count "+id+" 1\n", 1)
			}
			// Key updates in the middle of a request body.
			half := strings.Repeat("a", 100000)
			pr.write(t, "POST /sum HTTP/1.1\r\nHost: x\r\nContent-Length: 300000\r\n\r\n"+half)
			for _, cmd := range []string{"K\n", "k\n"} {
				time.Sleep(50 * time.Millisecond)
				pr.write(t, cmd)
				time.Sleep(50 * time.Millisecond)
				pr.write(t, half)
			}
			pr.waitOut(t, "300000 "+tiSum([]byte(strings.Repeat(half, 3))), 1)
			// A big response after the updates: many records under the new keys.
			pr.write(t, "GET /big?n=300000 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
			if !pr.exited(5 * time.Second) {
				t.Fatal("s_client still running 5 s after Connection: close")
			}
			if n := strings.Count(pr.errb.String(), "KEYUPDATE"); n != 6 {
				t.Errorf("s_client reported %d key updates, want 6", n)
			}
			out := pr.out.String()
			if !strings.Contains(out, "Content-Length: 300000\r\n") || !strings.Contains(out, "\r\n\r\n"+string(tiPattern(300000))) {
				t.Errorf("the big response after the key updates is not whole: output ends %.200q", out[max(0, len(out)-200):])
			}
		})
	}
}

// TestTLSInteropRenegotiation: a TLS 1.2 client asks to renegotiate (R),
// which Go's server refuses: the connection ends at once, as with
// net/http's server, and the front goes on serving others.
func TestTLSInteropRenegotiation(t *testing.T) {
	tiTool(t, "openssl")
	checkGoroutines(t)
	for _, front := range append([]string{"reference"}, tiFronts...) {
		t.Run(front, func(t *testing.T) {
			env := newTIEnv(t, front, Config{})
			pr := tiStart(t, "openssl", "s_client", "-tls1_2", "-alpn", "http/1.1", "-connect", env.addr)
			pr.write(t, "GET /count?id=a HTTP/1.1\r\nHost: x\r\n\r\n")
			pr.waitOut(t, "count a 1\n", 1)
			pr.write(t, "R\n")
			time.Sleep(100 * time.Millisecond)
			_, _ = io.WriteString(pr.stdin, "GET /count?id=b HTTP/1.1\r\nHost: x\r\n\r\n")
			if !pr.exited(5 * time.Second) {
				t.Fatalf("s_client still running 5 s after asking to renegotiate")
			}
			if n := env.hits.get("b"); n != 0 {
				t.Errorf("the request after the renegotiation attempt was served %d times", n)
			}
			tiCheckAlive(t, env)
		})
	}
}

// TestTLSInteropResumption: sessions saved by one s_client are resumed by
// the next (TLS 1.2 and 1.3 tickets), and the resumed connection serves
// requests; an attempt at 0-RTT early data carrying a request is never
// served as such (Go's server accepts no early data).
func TestTLSInteropResumption(t *testing.T) {
	tiTool(t, "openssl")
	checkGoroutines(t)
	dir := t.TempDir()
	earlyReq := []byte("GET /count?id=early HTTP/1.1\r\nHost: x\r\n\r\n")
	earlyFile := filepath.Join(dir, "early")
	if err := os.WriteFile(earlyFile, earlyReq, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, front := range tiFronts {
		for _, vers := range []string{"-tls1_2", "-tls1_3"} {
			t.Run(front+vers, func(t *testing.T) {
				env := newTIEnv(t, front, Config{})
				sess := filepath.Join(dir, front+vers+".sess")
				for i, extra := range [][]string{
					{"-sess_out", sess},
					{"-sess_in", sess},
					{"-sess_in", sess, "-early_data", earlyFile},
				} {
					id := fmt.Sprintf("r%d", i)
					args := append([]string{"s_client", "-ign_eof", vers, "-alpn", "http/1.1", "-connect", env.addr}, extra...)
					stdout, stderr, err := tiRun(t, 10*time.Second,
						[]byte("GET /count?id="+id+" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"), nil, "openssl", args...)
					if err != nil {
						t.Fatalf("s_client %v: %v\nstderr:\n%s\nstdout:\n%s", extra, err, stderr, stdout)
					}
					out := string(stdout)
					if !strings.Contains(out, "count "+id+" 1\n") {
						t.Errorf("s_client %v: no response:\n%s\nstderr:\n%s", extra, out, stderr)
					}
					if i > 0 && !strings.Contains(out, "Reused, TLSv1.") {
						t.Errorf("s_client %v: session not resumed:\n%.1500s", extra, out)
					}
				}
				if n := env.hits.get("early"); n != 0 {
					t.Errorf("the request sent as early data was served %d times", n)
				}
			})
		}
	}
}

// TestTLSInteropNode: Node's https with a keep-alive agent, many requests
// one after another and in parallel (the agent reuses its sockets), and
// without one. It found connections closed after small POSTs (a race on
// the goroutine and handler fronts: when the upstream answered before
// sendBody noted the body's end, the response went out with Connection:
// close), so the agent opened more than maxSockets connections.
func TestTLSInteropNode(t *testing.T) {
	tiTool(t, "node")
	checkGoroutines(t)
	const script = `
const https = require('https');
const crypto = require('crypto');
const base = process.argv[1];
const ends = [];
const sum = (b) => crypto.createHash('sha256').update(b).digest('hex');
function req(agent, method, path, body, headers, expect) {
  return new Promise((resolve, reject) => {
    const r = https.request(base + path, {method, agent, headers: headers || {}, rejectUnauthorized: false}, (resp) => {
      const chunks = [];
      const port = resp.socket.localPort;
      resp.on('data', (c) => chunks.push(c));
      resp.on('end', () => {
        const b = Buffer.concat(chunks);
        resolve({status: resp.statusCode, len: b.length, sum: sum(b), text: b.length < 200 ? b.toString() : '',
          cl: resp.headers['content-length'] || '', conn: resp.headers['connection'] || '', path: method + ' ' + path, reused: r.reusedSocket, port});
      });
      resp.on('error', reject);
    });
    r.on('socket', (s) => {
      if (s.__ti) return;
      s.__ti = true;
      s.on('end', () => ends.push('end ' + s.localPort + ' after ' + s.__n));
      s.on('close', (e) => ends.push('close ' + (s.__port) + ' err ' + e + ' after ' + s.__n));
      s.on('connect', () => { s.__port = s.localPort; });
      s.on('secureConnect', () => { s.__port = s.localPort; });
    });
    r.on('response', (resp) => { resp.socket.__n = (resp.socket.__n || 0) + 1; resp.socket.__port = resp.socket.localPort; });
    r.setTimeout(5000, () => r.destroy(new Error('timeout ' + method + ' ' + path)));
    r.on('error', reject);
    if (expect) {
      r.on('continue', () => { r.end(body); });
      return;
    }
    if (Array.isArray(body)) { for (const p of body) r.write(p); r.end(); return; }
    r.end(body);
  });
}
(async () => {
  const out = {};
  const ka = new https.Agent({keepAlive: true, maxSockets: 4});
  out.seq = [];
  for (let i = 0; i < 25; i++) out.seq.push(await req(ka, 'GET', '/hello'));
  out.seq.push(await req(ka, 'GET', '/big?n=1000003'));
  out.seq.push(await req(ka, 'POST', '/sum', Buffer.alloc(500000, 'x'), {'content-type': 'application/octet-stream'}));
  out.seq.push(await req(ka, 'POST', '/sum', ['abc', 'defg', Buffer.alloc(70000, 'y')]));
  out.seq.push(await req(ka, 'POST', '/sum', 'expected body', {'expect': '100-continue', 'content-length': '13'}, true));
  out.seq.push(await req(ka, 'HEAD', '/big?n=99'));
  out.seq.push(await req(ka, 'GET', '/hello'));
  const par = [];
  for (let i = 0; i < 40; i++) {
    par.push(i % 3 == 0 ? req(ka, 'GET', '/stream?n=' + (100000 + i)) :
             i % 3 == 1 ? req(ka, 'POST', '/echo', 'body ' + i) : req(ka, 'GET', '/hello'));
  }
  out.par = await Promise.all(par);
  const none = [];
  for (let i = 0; i < 5; i++) none.push(await req(false, 'GET', '/big?n=' + (70000 + i)));
  out.none = none;
  out.ends = ends;
  ka.destroy();
  console.log(JSON.stringify(out));
})().catch((e) => { console.error(String(e && e.stack || e)); process.exit(1); });
`
	type nodeResp struct {
		Status int    `json:"status"`
		Len    int    `json:"len"`
		Sum    string `json:"sum"`
		Text   string `json:"text"`
		CL     string `json:"cl"`
		Reused bool   `json:"reused"`
		Port   int    `json:"port"`
		Conn   string `json:"conn"`
		Path   string `json:"path"`
	}
	for _, front := range append([]string{"reference"}, tiFronts...) {
		t.Run(front, func(t *testing.T) {
			env := newTIEnv(t, front, Config{})
			stdout, stderr, err := tiRun(t, 15*time.Second, nil, nil, "node", "-e", script, env.url)
			if err != nil {
				t.Fatalf("node: %v\nstderr:\n%s\nstdout:\n%.2000s", err, stderr, stdout)
			}
			var out struct {
				Seq, Par, None []nodeResp
				Ends           []string
			}
			if err := json.Unmarshal(stdout, &out); err != nil {
				t.Fatalf("node output %q: %v", stdout, err)
			}
			hello := tiSum([]byte("hello\n"))
			ports := map[int]bool{}
			for i, r := range out.Seq {
				ports[r.Port] = true
				if r.Status != 200 {
					t.Errorf("seq %d: status %d", i, r.Status)
				}
				if i > 0 && !r.Reused {
					t.Errorf("seq %d: a new connection", i)
				}
			}
			if len(ports) != 1 {
				t.Errorf("sequential requests on %d connections, want 1", len(ports))
			}
			for i := range 25 {
				if out.Seq[i].Sum != hello {
					t.Errorf("seq %d: %q", i, out.Seq[i].Text)
				}
			}
			s := out.Seq[25:]
			if s[0].Len != 1000003 || s[0].Sum != tiSum(tiPattern(1000003)) {
				t.Errorf("big: %d bytes, wrong", s[0].Len)
			}
			if want := fmt.Sprintf("500000 %s", tiSum(bytes.Repeat([]byte("x"), 500000))); s[1].Text != want {
				t.Errorf("POST: %q, want %q", s[1].Text, want)
			}
			chunked := append([]byte("abcdefg"), bytes.Repeat([]byte("y"), 70000)...)
			if want := fmt.Sprintf("%d %s", len(chunked), tiSum(chunked)); s[2].Text != want {
				t.Errorf("chunked POST: %q, want %q", s[2].Text, want)
			}
			if want := "13 " + tiSum([]byte("expected body")); s[3].Text != want {
				t.Errorf("Expect POST: %q, want %q", s[3].Text, want)
			}
			if s[4].Len != 0 || s[4].CL != "99" {
				t.Errorf("HEAD: %d bytes, Content-Length %q", s[4].Len, s[4].CL)
			}
			if s[5].Text != "hello\n" {
				t.Errorf("GET after HEAD: %q", s[5].Text)
			}
			ports = map[int]bool{}
			for i, r := range out.Par {
				ports[r.Port] = true
				var want string
				switch i % 3 {
				case 0:
					want = tiSum(tiPattern(100000 + i))
				case 1:
					want = tiSum([]byte(fmt.Sprintf("body %d", i)))
				default:
					want = hello
				}
				if r.Status != 200 || r.Sum != want {
					t.Errorf("parallel %d: status %d, %d bytes %q", i, r.Status, r.Len, r.Text)
				}
			}
			if len(ports) > 4 {
				t.Errorf("parallel requests on %d connections, want at most 4", len(ports))
				t.Logf("socket events: %q", out.Ends)
				for _, r := range append(out.Seq, out.Par...) {
					if r.Conn != "" {
						t.Logf("%s: port %d Connection: %s", r.Path, r.Port, r.Conn)
					}
				}
			}
			for i, r := range out.None {
				if r.Status != 200 || r.Sum != tiSum(tiPattern(70000+i)) {
					t.Errorf("no agent %d: status %d, %d bytes", i, r.Status, r.Len)
				}
			}
		})
	}
}

// TestTLSInteropPython: Python's http.client on one keep-alive connection
// (GET, large GET, POST, chunked POST, HEAD, a chunked response, then 30
// small POSTs, which must not close it), urllib, and a raw ssl client
// sending a request one byte per record.
func TestTLSInteropPython(t *testing.T) {
	tiTool(t, "python3")
	checkGoroutines(t)
	const script = `
import hashlib, http.client, json, socket, ssl, sys, time, urllib.request
host, port = sys.argv[1].rsplit(':', 1)
port = int(port)
ctx = ssl._create_unverified_context()
ctx.set_alpn_protocols(['http/1.1'])
out = {}
c = http.client.HTTPSConnection(host, port, context=ctx, timeout=5)
res = []
def do(method, path, body=None, headers={}, **kw):
    c.request(method, path, body=body, headers=headers, **kw)
    r = c.getresponse()
    b = r.read()
    res.append({'status': r.status, 'len': len(b), 'sum': hashlib.sha256(b).hexdigest(),
                'text': b.decode('latin1') if len(b) < 200 else '', 'cl': r.getheader('Content-Length') or '',
                'port': c.sock.getsockname()[1]})
do('GET', '/hello')
do('GET', '/big?n=2000001')
do('POST', '/sum', body=b'z' * 300000)
do('POST', '/sum', body=iter([b'one', b'two', b'x' * 40000]), encode_chunked=True)
do('HEAD', '/big?n=42')
do('GET', '/stream?n=333333')
do('GET', '/hello')
for i in range(30):
    do('POST', '/echo', body=b'small %d' % i)
c.close()
out['conn'] = res
with urllib.request.urlopen('https://%s:%d/big?n=123457' % (host, port), context=ctx, timeout=5) as r:
    b = r.read()
    out['urllib'] = {'status': r.status, 'len': len(b), 'sum': hashlib.sha256(b).hexdigest()}
# One byte per record, a few ms apart.
s = socket.create_connection((host, port), timeout=5)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
s = ctx.wrap_socket(s, server_hostname='localhost')
def readall(s):
    buf = b''
    while True:
        d = s.recv(65536)
        if not d:
            break
        buf += d
    s.close()
    return buf
slow = []
for req in [b'GET /hello HTTP/1.1\r\nHost: x\r\n\r\n',
            b'POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\nConnection: close\r\n\r\nhello slowly']:
    for i in range(len(req)):
        s.sendall(req[i:i+1])
        time.sleep(0.002)
out['slow'] = readall(s).decode('latin1')
# A chunked body in chunks 30 ms apart (off the loop), then a GET.
s = ctx.wrap_socket(socket.create_connection((host, port), timeout=5), server_hostname='localhost')
s.sendall(b'POST /sum HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n')
for i in range(10):
    time.sleep(0.03)
    s.sendall(b'3\r\nabc\r\n')
s.sendall(b'0\r\n\r\nGET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n')
out['slowchunked'] = readall(s).decode('latin1')
# A large response the client does not read yet, and behind it a chunked
# POST, which moves the connection off the loop with the response's
# sealed records still waiting to go out.
s = ctx.wrap_socket(socket.create_connection((host, port), timeout=5), server_hostname='localhost')
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
s.sendall(b'GET /big?n=4000000 HTTP/1.1\r\nHost: x\r\n\r\n'
          b'POST /sum HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n'
          b'GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n')
time.sleep(0.3)
chunks = []
while True:
    d = s.recv(1 << 20)
    if not d:
        break
    chunks.append(d)
s.close()
buf = b''.join(chunks)
i = buf.find(b'\r\n\r\n') + 4
out['pending'] = {'len': len(buf), 'sum': hashlib.sha256(buf[i:i+4000000]).hexdigest(),
                  'tail': buf[-400:].decode('latin1'), 'head': buf[:200].decode('latin1')}
print(json.dumps(out))
`
	type pyResp struct {
		Status int    `json:"status"`
		Len    int    `json:"len"`
		Sum    string `json:"sum"`
		Text   string `json:"text"`
		CL     string `json:"cl"`
		Port   int    `json:"port"`
	}
	for _, front := range tiFronts {
		t.Run(front, func(t *testing.T) {
			t.Parallel() // mostly waiting on Python's sleeps
			env := newTIEnv(t, front, Config{})
			stdout, stderr, err := tiRun(t, 15*time.Second, nil, nil, "python3", "-c", script, env.addr)
			if err != nil {
				t.Fatalf("python: %v\nstderr:\n%s\nstdout:\n%.2000s", err, stderr, stdout)
			}
			var out struct {
				Conn        []pyResp
				Urllib      pyResp
				Slow        string
				SlowChunked string `json:"slowchunked"`
				Pending     struct {
					Len        int
					Sum        string
					Head, Tail string
				}
			}
			if err := json.Unmarshal(stdout, &out); err != nil {
				t.Fatalf("python output %q: %v", stdout, err)
			}
			if len(out.Conn) != 37 {
				t.Fatalf("%d responses", len(out.Conn))
			}
			c := out.Conn
			for i, r := range c {
				if r.Status != 200 {
					t.Errorf("response %d: status %d", i, r.Status)
				}
				if r.Port != c[0].Port {
					t.Errorf("response %d on another connection", i)
				}
			}
			for i, r := range c[7:] {
				if want := fmt.Sprintf("small %d", i); r.Text != want {
					t.Errorf("small POST %d: %q, want %q", i, r.Text, want)
				}
			}
			if c[0].Text != "hello\n" || c[6].Text != "hello\n" {
				t.Errorf("hello: %q, %q", c[0].Text, c[6].Text)
			}
			if c[1].Len != 2000001 || c[1].Sum != tiSum(tiPattern(2000001)) {
				t.Errorf("big: %d bytes, wrong", c[1].Len)
			}
			if want := "300000 " + tiSum(bytes.Repeat([]byte("z"), 300000)); c[2].Text != want {
				t.Errorf("POST: %q", c[2].Text)
			}
			chunked := append([]byte("onetwo"), bytes.Repeat([]byte("x"), 40000)...)
			if want := fmt.Sprintf("%d %s", len(chunked), tiSum(chunked)); c[3].Text != want {
				t.Errorf("chunked POST: %q, want %q", c[3].Text, want)
			}
			if c[4].Len != 0 || c[4].CL != "42" {
				t.Errorf("HEAD: %d bytes, Content-Length %q", c[4].Len, c[4].CL)
			}
			if c[5].Len != 333333 || c[5].Sum != tiSum(tiPattern(333333)) {
				t.Errorf("stream: %d bytes, wrong", c[5].Len)
			}
			if u := out.Urllib; u.Status != 200 || u.Sum != tiSum(tiPattern(123457)) {
				t.Errorf("urllib: %d, %d bytes", u.Status, u.Len)
			}
			// The big response, whole, then the POST's and the GET's.
			pd := out.Pending
			if !strings.HasPrefix(pd.Head, "HTTP/1.1 200 OK\r\n") || !strings.Contains(pd.Tail, "5 "+tiSum([]byte("hello"))) || !strings.HasSuffix(pd.Tail, "\r\n\r\nhello\n") {
				t.Errorf("pending response then handoff: %d bytes, head %q, tail %q", pd.Len, pd.Head, pd.Tail)
			}
			if pd.Sum != tiSum(tiPattern(4000000)) {
				t.Errorf("pending response then handoff: the big body is not exact (%d bytes in all)", pd.Len)
			}
			rs := tiReadResponses(t, tiLatin1(out.SlowChunked), "POST", "GET")
			if b := tiBody(rs[0]); rs[0].StatusCode != 200 || string(b) != "30 "+tiSum(bytes.Repeat([]byte("abc"), 10)) {
				t.Errorf("slow chunked POST: %d %q", rs[0].StatusCode, b)
			}
			if b := tiBody(rs[1]); rs[1].StatusCode != 200 || string(b) != "hello\n" {
				t.Errorf("GET after the slow chunked POST: %d %q", rs[1].StatusCode, b)
			}
			rs = tiReadResponses(t, []byte(out.Slow), "GET", "POST")
			if b := tiBody(rs[0]); rs[0].StatusCode != 200 || string(b) != "hello\n" {
				t.Errorf("slow GET: %d %q", rs[0].StatusCode, b)
			}
			if b := tiBody(rs[1]); rs[1].StatusCode != 200 || string(b) != "hello slowl" {
				t.Errorf("slow POST: %d %q", rs[1].StatusCode, b)
			}
		})
	}
}

// TestTLSInteropCloseNotify: a client that sends close_notify in the
// middle of a request body, in the middle of its head, and right after a
// whole request, keeping the TCP connection open to read; and one that
// stays idle until the front closes the connection. The front does not
// wait for more, answers or closes within a bounded time, and goes on
// serving others. Python's ssl with memory BIOs sends the close_notify
// without waiting for the server's.
//
// It found: the Proxy as net/http handler (NewServer) answering the
// truncated body 200 with an empty body (it returned without a response
// when the client had gone, and net/http sent its implicit 200); and the
// event loops closing TLS connections without close_notify when the
// client had closed between requests or the connection was idle too long,
// which OpenSSL clients report as an unexpected EOF.
func TestTLSInteropCloseNotify(t *testing.T) {
	tiTool(t, "python3")
	checkGoroutines(t)
	const script = `
import json, socket, ssl, sys, time
host, port = sys.argv[1].rsplit(':', 1)
ctx = ssl._create_unverified_context()
ctx.set_alpn_protocols(['http/1.1'])
if sys.argv[2] == '1.2':
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
def run(req, bye=True):
    s = socket.create_connection((host, int(port)), timeout=5)
    inc, outg = ssl.MemoryBIO(), ssl.MemoryBIO()
    o = ctx.wrap_bio(inc, outg, server_hostname='localhost')
    def flush():
        d = outg.read()
        if d:
            s.sendall(d)
    while True:
        try:
            o.do_handshake()
            break
        except ssl.SSLWantReadError:
            flush()
            d = s.recv(65536)
            if not d:
                raise Exception('eof in handshake')
            inc.write(d)
    flush()
    o.write(req)
    flush()
    time.sleep(0.05)
    if bye:
        try:
            o.unwrap()
        except ssl.SSLWantReadError:
            pass
        flush()
    start = time.time()
    got = b''
    how = 'timeout'
    while time.time() - start < 4:
        try:
            d = s.recv(65536)
        except socket.timeout:
            break
        except ConnectionResetError:
            how = 'reset'
            break
        if not d:
            inc.write_eof()
            how = 'eof'
        else:
            inc.write(d)
        try:
            while True:
                x = o.read(65536)
                if not x:
                    break
                got += x
        except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
            pass
        except ssl.SSLError as e:
            how = 'ssl error ' + e.reason if e.reason else str(e)
            break
        if how == 'eof':
            break
    s.close()
    return {'how': how, 'got': got.decode('latin1'), 'secs': time.time() - start}
out = {
  'midbody': run(b'POST /sum HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n' + b'a' * 100),
  'midhead': run(b'GET /hello HTTP/1.1\r\nHost: x\r\n'),
  'after': run(b'GET /count?id=after HTTP/1.1\r\nHost: x\r\n\r\n'),
  'pipebye': run(b'GET /count?id=p1 HTTP/1.1\r\nHost: x\r\n\r\nGET /big?n=100000 HTTP/1.1\r\nHost: x\r\n\r\nGET /count?id=p3 HTTP/1.1\r\nHost: x\r\n\r\n'),
}
if sys.argv[3] == 'idle':
    out['idle'] = run(b'GET /count?id=idle HTTP/1.1\r\nHost: x\r\n\r\n', bye=False)
print(json.dumps(out))
`
	type result struct {
		How  string  `json:"how"`
		Got  string  `json:"got"`
		Secs float64 `json:"secs"`
	}
	for _, front := range append([]string{"reference"}, tiFronts...) {
		for _, vers := range []string{"1.2", "1.3"} {
			t.Run(front+"/"+vers, func(t *testing.T) {
				t.Parallel() // mostly waiting on Python
				// The proxy's fronts close idle connections after 300 ms.
				env := newTIEnv(t, front, Config{IdleTimeout: 300 * time.Millisecond})
				idle := "idle"
				if front == "reference" {
					idle = "-"
				}
				stdout, stderr, err := tiRun(t, 20*time.Second, nil, nil, "python3", "-c", script, env.addr, vers, idle)
				if err != nil {
					t.Fatalf("python: %v\nstderr:\n%s\nstdout:\n%.2000s", err, stderr, stdout)
				}
				var out map[string]result
				if err := json.Unmarshal(stdout, &out); err != nil {
					t.Fatalf("python output %q: %v", stdout, err)
				}
				for name, r := range out {
					t.Logf("%s: %s after %.2fs, %q", name, r.How, r.Secs, r.Got)
					if r.How == "timeout" {
						t.Errorf("%s: the front neither answered and closed nor closed within 4 s (got %q)", name, r.Got)
					}
				}
				if r := out["after"]; r.Got != "" {
					if !strings.HasPrefix(r.Got, "HTTP/1.1 200 OK\r\n") || !strings.HasSuffix(r.Got, "count after 1\n") {
						t.Errorf("after: %q", r.Got)
					}
				}
				// A client that said goodbye between requests, and an idle
				// connection closed by the server, end with the server's
				// close_notify, as net/http's tls.Conn.Close sends it:
				// without it OpenSSL reports an unexpected EOF (a possible
				// truncation).
				for _, name := range []string{"after", "midhead", "idle", "pipebye"} {
					if r, ok := out[name]; ok && r.How != "eof" {
						t.Errorf("%s: the connection ended with %s, not with the server's close_notify", name, r.How)
					}
				}
				// Pipelined requests, then close_notify: every one is
				// answered. Not under net/http's server (handler-tls):
				// when its background read meets the client's close, it
				// cancels the request being served, so the proxy gives up
				// on it as on a client gone, and how many of the three are
				// answered depends on timing (the full race-enabled suite
				// lost the second one).
				if front != "handler-tls" {
					rs := tiReadResponses(t, tiLatin1(out["pipebye"].Got), "GET", "GET", "GET")
					for i, want := range [][]byte{[]byte("count p1 1\n"), tiPattern(100000), []byte("count p3 1\n")} {
						if b := tiBody(rs[i]); rs[i].StatusCode != 200 || !bytes.Equal(b, want) {
							t.Errorf("pipebye %d: %d, %d bytes", i, rs[i].StatusCode, len(b))
						}
					}
				}
				if r, ok := out["idle"]; ok && !strings.HasSuffix(r.Got, "count idle 1\n") {
					t.Errorf("idle: %q", r.Got)
				}
				// net/http's server passes the truncated body to the app,
				// which fails (499 here); the proxy may answer 400 or
				// nothing, but never success for a request it did not
				// forward whole.
				if r := out["midbody"]; strings.HasPrefix(r.Got, "HTTP/1.1 2") {
					t.Errorf("midbody: %q", r.Got)
				}
				if env.proxy != nil {
					tiCheckAlive(t, env)
				}
			})
		}
	}
}

// TestTLSInteropCloseDelimited: bodies that end with the connection (an
// HTTP/1.0 client, an upstream that closes to end its body) must end with
// close_notify: curl (OpenSSL 3) reports a close without it as an error,
// as it could be a truncation.
func TestTLSInteropCloseDelimited(t *testing.T) {
	tiTool(t, "curl")
	checkGoroutines(t)
	dir := t.TempDir()
	for _, front := range tiFronts {
		for _, vers := range []string{"--http1.0", "--http1.1"} {
			t.Run(front+vers, func(t *testing.T) {
				// curl --http1.0 offers ALPN http/1.0, which Go's server
				// refuses (no_application_protocol): offer none.
				alpn := "--alpn"
				if vers == "--http1.0" {
					alpn = "--no-alpn"
				}
				env := newTIEnv(t, front, Config{})
				paths := []struct {
					path string
					n    int
				}{{"/big?n=100001", 100001}, {"/stream?n=200003", 200003}, {"/eof?n=150007", 150007}, {"/eof?n=0", 0}}
				for i, c := range paths {
					out := filepath.Join(dir, fmt.Sprintf("%s%s%d", front, vers, i))
					stdout, stderr, err := tiRun(t, 10*time.Second, nil, nil, "curl", "-sSk", vers, alpn, "--max-time", "5",
						"-w", "%{http_code}", "-o", out, env.url+c.path)
					if err != nil || string(stdout) != "200" {
						t.Errorf("%s: curl: %v, %q\nstderr:\n%s", c.path, err, stdout, stderr)
						continue
					}
					if b, err := os.ReadFile(out); err != nil || !bytes.Equal(b, tiPattern(c.n)) {
						t.Errorf("%s: %d bytes (%v), want %d exact", c.path, len(b), err, c.n)
					}
				}
			})
		}
	}
}

// TestTLSInteropSlowReader: a client that reads slowly (curl
// --limit-rate) gets large responses whole: the loop holds sealed records
// while the socket is full.
func TestTLSInteropSlowReader(t *testing.T) {
	tiTool(t, "curl")
	checkGoroutines(t)
	dir := t.TempDir()
	const bigN, streamN = 2<<20 + 3, 1<<20 + 5
	for _, front := range []string{"serve-tls", "serve-tls-listener"} {
		t.Run(front, func(t *testing.T) {
			env := newTIEnv(t, front, Config{})
			big, stream := filepath.Join(dir, front+"big"), filepath.Join(dir, front+"stream")
			stdout, stderr, err := tiRun(t, 15*time.Second, nil, nil, "curl", "-sSk", "--limit-rate", "8M", "--max-time", "10",
				"-w", "%{http_code} %{num_connects}\n", "-o", big, env.url+fmt.Sprintf("/big?n=%d", bigN),
				"-o", stream, env.url+fmt.Sprintf("/stream?n=%d", streamN))
			if err != nil || string(stdout) != "200 1\n200 0\n" {
				t.Fatalf("curl: %v, %q\nstderr:\n%s", err, stdout, stderr)
			}
			for _, c := range []struct {
				file string
				n    int
			}{{big, bigN}, {stream, streamN}} {
				if b, err := os.ReadFile(c.file); err != nil || !bytes.Equal(b, tiPattern(c.n)) {
					t.Errorf("%s: %d bytes (%v), want %d exact", filepath.Base(c.file), len(b), err, c.n)
				}
			}
		})
	}
}

// TestTLSInteropCurlEdges: curl without ALPN, with a large header field
// (accepted under the limit, refused with 431 above it), and an Expect:
// 100-continue upload the upstream refuses before reading it.
//
// The last found the Serve fronts resetting the connection before curl
// read the 413 about half the time: a TLS connection that an Expect
// request moved off the event loop is a prefixConn, which had no
// CloseWrite, so lingerClose closed it at once; and its socket, an
// *os.File, returned *os.PathError, which crypto/tls takes for a fatal
// error once a deadline stops a read (finishBody), so lingering could not
// read from it either.
func TestTLSInteropCurlEdges(t *testing.T) {
	tiTool(t, "curl")
	checkGoroutines(t)
	dir := t.TempDir()
	upFile := filepath.Join(dir, "upload")
	if err := os.WriteFile(upFile, tiPattern(3<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, front := range append([]string{"reference"}, tiFronts...) {
		t.Run(front, func(t *testing.T) {
			env := newTIEnv(t, front, Config{})
			curl := func(args ...string) string {
				t.Helper()
				args = append([]string{"-sk", "--http1.1", "--max-time", "5", "-o", "/dev/null", "-w", "%{http_code}"}, args...)
				stdout, stderr, err := tiRun(t, 10*time.Second, nil, nil, "curl", args...)
				if err != nil {
					t.Logf("curl %.200q: %v\n%s", args, err, stderr)
				}
				return string(stdout)
			}
			if got := curl("--no-alpn", env.url+"/hello"); got != "200" {
				t.Errorf("no ALPN: %s", got)
			}
			if got := curl("-H", "X-Big: "+strings.Repeat("b", 30000), env.url+"/headers"); got != "200" {
				t.Errorf("a 30000-byte field: %s", got)
			}
			// Above the proxy's MaxHeaderBytes (64 KiB), under net/http's
			// default (1 MiB).
			want := "431"
			if front == "reference" {
				want = "200"
			}
			if got := curl("-H", "X-Big: "+strings.Repeat("b", 100000), env.url+"/headers"); got != want {
				t.Errorf("a 100000-byte field: %s, want %s", got, want)
			}
			tiCheckAlive(t, env)
			// The proxy answers 100 Continue itself as it starts sending
			// the body up; the upstream's 413 comes while curl is still
			// sending 3 MiB. The connection must not be reset before curl
			// reads the 413: it is shut for writing and read from for a
			// while (lingerClose), as net/http's is when a handler did
			// not read a body.
			if front == "handler-tls" {
				// net/http's server, after a handler that read part of a
				// large body, only sends close_notify (tls.Conn's
				// CloseWrite) and waits 500 ms without reading: curl,
				// blocked writing, is reset before it reads the 413.
				t.Skip("known: net/http's server resets a TLS client still sending a body the handler left (the proxy's 100 Continue made it send)")
			}
			if got := curl("-v", "-H", "Expect: 100-continue", "--data-binary", "@"+upFile, env.url+"/reject"); got != "413" {
				t.Errorf("refused upload: %s, want 413", got)
			}
		})
	}
}
