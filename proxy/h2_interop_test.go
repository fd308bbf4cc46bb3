package proxy

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// The HTTP/2 interop tests put real HTTP/2 clients (curl built with
// nghttp2, Node's http2) in front of the Proxy served by NewServer with
// TLS, as quench-enclave serves it: the clients negotiate h2 by ALPN.
// Each test skips when its client is missing; every child process runs
// under a deadline.

// h2iFront serves p with NewServer (TLS, h2 and http/1.1 offered, scfg's
// timeouts) and returns its address; p is closed in t.Cleanup.
func h2iFront(t *testing.T, p *Proxy, scfg ServerConfig) string {
	t.Helper()
	tc := testServerTLS(t)
	tc.NextProtos = nil
	scfg.TLSConfig = tc
	srv := NewServer(p, scfg)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.ServeTLS(ln, "", "") }()
	t.Cleanup(func() { _ = srv.Close(); <-done; _ = p.Close() })
	return ln.Addr().String()
}

// h2iProxy returns a Proxy to target with cfg, served by h2iFront.
func h2iProxy(t *testing.T, target string, cfg Config, scfg ServerConfig) (*Proxy, string) {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("proxy log:\n%.8000s", logs.String())
		}
	})
	p, err := New(u, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return p, h2iFront(t, p, scfg)
}

// h2iCurl runs curl over HTTP/2 (failing t unless h2 was negotiated)
// with args, within d, and returns the response head and body.
func h2iCurl(t *testing.T, d time.Duration, args ...string) (head, body string) {
	t.Helper()
	out, errb, err := tiRun(t, d, nil, nil, "curl", append([]string{"-sSk", "--http2", "-D", "/dev/stderr", "-o", "-"}, args...)...)
	if err != nil {
		t.Fatalf("curl %v: %v\n%s", args, err, errb)
	}
	if !strings.HasPrefix(string(errb), "HTTP/2 ") {
		t.Fatalf("curl %v did not speak HTTP/2: %q", args, errb)
	}
	return string(errb), string(out)
}

// h2iHeader returns the value of the field name in a curl head, and
// whether it is there.
func h2iHeader(head, name string) (string, bool) {
	for _, line := range strings.Split(head, "\r\n") {
		k, v, ok := strings.Cut(line, ":")
		if ok && strings.EqualFold(k, name) {
			return strings.TrimSpace(v), true
		}
	}
	return "", false
}

// TestH2InteropNoSniffedContentType: a response the app sends without
// Content-Type (here with X-Content-Type-Options: nosniff, as apps serving
// user files do) must reach HTTP/2 clients without one, as it reaches
// HTTP/1.1 clients of Serve. Through net/http's server (NewServer, the
// Proxy as handler) it got the type net/http sniffed from the first bytes:
// an upload that starts with "<html>" went out as text/html.
func TestH2InteropNoSniffedContentType(t *testing.T) {
	const page = "<html><script>alert(document.cookie)</script></html>"
	up := newRawUp(t, func(r *http.Request) []string {
		switch r.URL.Path {
		case "/stream": // chunked: the copy loop, not the buffered write
			return []string{"HTTP/1.1 200 OK\r\nX-Content-Type-Options: nosniff\r\nTransfer-Encoding: chunked\r\n\r\n" +
				"34\r\n" + page + "\r\n0\r\n\r\n"}
		case "/typed":
			return []string{"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 52\r\n\r\n" + page}
		}
		return []string{"HTTP/1.1 200 OK\r\nX-Content-Type-Options: nosniff\r\nContent-Length: 52\r\n\r\n" + page}
	})
	_, addr := h2iProxy(t, up.url().String(), Config{}, ServerConfig{})
	for _, path := range []string{"/file", "/stream"} {
		head, body := h2iCurl(t, 10*time.Second, "https://"+addr+path)
		if body != page {
			t.Errorf("%s: body %q", path, body)
		}
		if ct, ok := h2iHeader(head, "Content-Type"); ok {
			t.Errorf("%s: the app sent no Content-Type; the HTTP/2 client got %q", path, ct)
		}
		head, _ = h2iCurl(t, 10*time.Second, "-I", "https://"+addr+path)
		if ct, ok := h2iHeader(head, "Content-Type"); ok {
			t.Errorf("HEAD %s: the app sent no Content-Type; the HTTP/2 client got %q", path, ct)
		}
	}
	// The app's own type still goes through.
	head, _ := h2iCurl(t, 10*time.Second, "https://"+addr+"/typed")
	if ct, _ := h2iHeader(head, "Content-Type"); ct != "image/png" {
		t.Errorf("/typed: Content-Type %q, want image/png", ct)
	}

	// An h2c app (a Go one that suppresses its own sniffing) alike.
	h2cUp := startH2CUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header()["Content-Type"] = nil
		_, _ = io.WriteString(w, page)
	}), false)
	_, addr = h2iProxy(t, h2cUp.String(), Config{}, ServerConfig{})
	head, body := h2iCurl(t, 10*time.Second, "https://"+addr+"/file")
	if ct, ok := h2iHeader(head, "Content-Type"); ok || body != page {
		t.Errorf("h2c app without Content-Type: the HTTP/2 client got %q (%v), body %q", ct, ok, body)
	}
}

// TestH2InteropSilentStream: a server-sent event stream that stays silent
// between events for longer than TransferTimeout (and, before its first
// event, longer than the server's WriteTimeout) must stay open for an
// HTTP/2 client, as it does for HTTP/1.1 ones: silence is what event
// streams do. net/http's HTTP/2 server runs a stream's write deadline as
// a timer that resets the stream when it fires, written to or not; the
// deadline the Proxy set for one write (or the server's WriteTimeout)
// killed the stream in the silence that followed.
func TestH2InteropSilentStream(t *testing.T) {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(200)
		w.(http.Flusher).Flush()
		for i := range 3 {
			time.Sleep(700 * time.Millisecond)
			_, _ = io.WriteString(w, "data: event "+string(rune('0'+i))+"\n\n")
			w.(http.Flusher).Flush()
		}
	})
	for _, target := range []string{"http", "h2c"} {
		t.Run(target, func(t *testing.T) {
			u := h2iUpstream(t, target, h)
			p, addr := h2iProxy(t, u, Config{TransferTimeout: 300 * time.Millisecond},
				ServerConfig{WriteTimeout: 500 * time.Millisecond})
			_, body := h2iCurl(t, 15*time.Second, "-N", "https://"+addr+"/events")
			if want := "data: event 0\n\ndata: event 1\n\ndata: event 2\n\n"; body != want {
				t.Errorf("event stream over HTTP/2: %q, want %q", body, want)
			}
			eventually(t, 5*time.Second, "no slot or stream held", func() bool { return p.InFlight() == 0 && p.Streams() == 0 })
		})
	}
}

// h2iResult is what testdata/interop/h2client.js prints.
type h2iResult struct {
	OK, Bad, Cancelled, Failed int
	Errors                     []string
}

// h2iStreams runs h2client.js with n streams on one connection to addr.
func h2iStreams(t *testing.T, addr string, n int) h2iResult {
	t.Helper()
	out, errb, err := tiRun(t, 60*time.Second, nil, nil, "node", "testdata/interop/h2client.js", addr, strconv.Itoa(n))
	var res h2iResult
	if jerr := json.Unmarshal(out, &res); jerr != nil {
		t.Fatalf("h2client.js: %v (%v)\nstdout: %s\nstderr: %s", err, jerr, out, errb)
	}
	if err != nil {
		t.Errorf("h2client.js: %v: %+v\nstderr: %s", err, res, errb)
	}
	return res
}

// TestH2InteropManyStreams: Node's http2 client runs 200 streams at once
// on one connection: downloads (Content-Length and chunked) and uploads of
// 0 B to 3 MiB, checksummed, every fifth large one reset by the client
// mid-download or mid-upload. Every other stream must come back whole;
// afterwards no slot or stream is held, and the same connection pattern
// works again (no upstream connection left in a bad state).
func TestH2InteropManyStreams(t *testing.T) {
	if _, err := exec.LookPath("node"); err != nil {
		t.Skipf("node not in PATH: %v", err)
	}
	env := newTIEnv(t, "handler-tls", Config{MaxInFlight: 1000})
	res := h2iStreams(t, env.addr, 200)
	if res.Bad != 0 || res.Failed != 0 || res.OK+res.Cancelled != 200 || res.Cancelled == 0 || len(res.Errors) != 0 {
		t.Errorf("200 streams on one connection: %+v", res)
	}
	eventually(t, 10*time.Second, "no slot or stream held", func() bool {
		return env.proxy.InFlight() == 0 && env.proxy.Streams() == 0
	})
	if res := h2iStreams(t, env.addr, 40); res.Bad != 0 || res.Failed != 0 || res.OK+res.Cancelled != 40 {
		t.Errorf("40 streams afterwards: %+v", res)
	}
}

// TestH2InteropUploadBackpressure: an app that stops reading an upload
// for a while (busy storing what it has) makes the Proxy wait in its
// write upstream, longer than TransferTimeout. The HTTP/2 client kept
// sending at the pace the app allowed and must get its upload through, as
// an HTTP/1.1 client does. net/http's HTTP/2 server runs a stream's read
// deadline as a timer that fails the body when it fires, read or not: the
// deadline the Proxy set for one read of the body failed it during the
// wait upstream that followed, and the upload was cut.
func TestH2InteropUploadBackpressure(t *testing.T) {
	const size = 24 << 20
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sum := sha256.New()
		n, err := io.CopyN(sum, r.Body, 1<<20)
		if err == nil {
			time.Sleep(1500 * time.Millisecond)
			var m int64
			m, err = io.Copy(sum, r.Body)
			n += m
		}
		if err != nil {
			w.WriteHeader(499)
			return
		}
		fmt.Fprintf(w, "%d %x", n, sum.Sum(nil))
	})
	file := filepath.Join(t.TempDir(), "upload")
	data := tiPattern(size)
	if err := os.WriteFile(file, data, 0o600); err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("%d %s", size, tiSum(data))
	for _, target := range []string{"http", "h2c"} {
		t.Run(target, func(t *testing.T) {
			u := h2iUpstream(t, target, h)
			p, addr := h2iProxy(t, u, Config{TransferTimeout: 300 * time.Millisecond}, ServerConfig{})
			head, body := h2iCurl(t, 30*time.Second, "--data-binary", "@"+file, "https://"+addr+"/upload")
			if body != want {
				t.Errorf("upload of %d bytes over HTTP/2 to an app that paused: %q\n%s", size, body, head)
			}
			eventually(t, 5*time.Second, "no slot or stream held", func() bool { return p.InFlight() == 0 && p.Streams() == 0 })
		})
	}
}

// TestH2InteropPausedDownload: an app that pauses in the middle of a
// response of known length (generating the rest) for longer than
// TransferTimeout, but within UpstreamTimeout, must get it to an HTTP/2
// client whole, as to an HTTP/1.1 one. The write deadline the Proxy set
// for the write before the pause, a timer under net/http's HTTP/2 server,
// reset the stream during the pause.
func TestH2InteropPausedDownload(t *testing.T) {
	const size = 300000
	data := tiPattern(size)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", strconv.Itoa(size))
		_, _ = w.Write(data[:100000])
		w.(http.Flusher).Flush()
		time.Sleep(1200 * time.Millisecond)
		_, _ = w.Write(data[100000:])
	})
	for _, target := range []string{"http", "h2c"} {
		t.Run(target, func(t *testing.T) {
			u := h2iUpstream(t, target, h)
			p, addr := h2iProxy(t, u, Config{TransferTimeout: 300 * time.Millisecond}, ServerConfig{})
			_, body := h2iCurl(t, 15*time.Second, "https://"+addr+"/file")
			if body != string(data) {
				t.Errorf("download of %d bytes with a pause: got %d bytes", size, len(body))
			}
			eventually(t, 5*time.Second, "no slot or stream held", func() bool { return p.InFlight() == 0 && p.Streams() == 0 })
		})
	}
}

// TestH2InteropOptionsAsterisk: "OPTIONS *" (a client asking what the
// server supports, RFC 9110 section 9.3.7) reaches the app through
// NewServer, over HTTP/2 and HTTP/1.1, as it does through Serve. net/http's
// server answered it itself, 200 with no Allow, without the app seeing it.
func TestH2InteropOptionsAsterisk(t *testing.T) {
	up := newRawUp(t, func(r *http.Request) []string {
		return []string{"HTTP/1.1 204 No Content\r\nAllow: GET, OPTIONS\r\nX-Uri: " + r.RequestURI + "\r\n\r\n"}
	})
	_, addr := h2iProxy(t, up.url().String(), Config{}, ServerConfig{})
	for _, proto := range []string{"--http2", "--http1.1"} {
		out, errb, err := tiRun(t, 10*time.Second, nil, nil, "curl", "-sSk", proto, "-D", "-", "-o", "/dev/null",
			"-X", "OPTIONS", "--request-target", "*", "https://"+addr+"/")
		if err != nil {
			t.Fatalf("curl %s: %v\n%s", proto, err, errb)
		}
		head := string(out)
		allow, _ := h2iHeader(head, "Allow")
		uri, _ := h2iHeader(head, "X-Uri")
		if !strings.Contains(head, " 204") || allow != "GET, OPTIONS" || uri != "*" {
			t.Errorf("OPTIONS * with curl %s: the app's answer (204, Allow, X-Uri: *) did not come back:\n%s", proto, head)
		}
	}
}

// TestH2InteropNoContentLength: an app that answers 204 with a non-zero
// Content-Length (which RFC 9110 section 8.6 forbids, and HTTP/1.1 clients
// ignore: a 204 has no body) must not cost HTTP/2 clients the response.
// The Proxy passed the field on; nghttp2 (curl, Node, nghttpx) resets
// such a stream with PROTOCOL_ERROR. It is now dropped from 204s; a 304
// keeps its Content-Length, which describes the selected representation.
func TestH2InteropNoContentLength(t *testing.T) {
	up := newRawUp(t, func(r *http.Request) []string {
		if r.URL.Path == "/304" {
			return []string{"HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\nContent-Length: 5\r\n\r\n"}
		}
		return []string{"HTTP/1.1 204 No Content\r\nX-App: deleted\r\nContent-Length: 5\r\n\r\n"}
	})
	_, addr := h2iProxy(t, up.url().String(), Config{}, ServerConfig{})
	head, body := h2iCurl(t, 10*time.Second, "-X", "DELETE", "https://"+addr+"/item")
	if app, _ := h2iHeader(head, "X-App"); !strings.HasPrefix(head, "HTTP/2 204") || app != "deleted" || body != "" {
		t.Errorf("204 with Content-Length: 5 over HTTP/2: %q %q", head, body)
	}
	if cl, ok := h2iHeader(head, "Content-Length"); ok {
		t.Errorf("204 went out with Content-Length %q", cl)
	}
	head, _ = h2iCurl(t, 10*time.Second, "https://"+addr+"/304")
	if cl, _ := h2iHeader(head, "Content-Length"); !strings.HasPrefix(head, "HTTP/2 304") || cl != "5" {
		t.Errorf("304 over HTTP/2: %q, want its Content-Length 5 kept", head)
	}
}

// TestH2InteropSlowReader: an HTTP/2 client (Node) that stops reading a
// 64 MiB download holds the upstream back through flow control: the
// Proxy buffers a bounded amount (here: the upstream's writes stop well
// short of the body while the client waits), and when the client reads
// on, the body arrives whole.
func TestH2InteropSlowReader(t *testing.T) {
	const size = 64 << 20
	chunk := tiPattern(64 << 10)
	var written atomic.Int64
	up := newUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(size))
		for written.Load() < size {
			if _, err := w.Write(chunk); err != nil {
				return
			}
			written.Add(int64(len(chunk)))
		}
	}))
	p, addr := h2iProxy(t, up.URL, Config{}, ServerConfig{})
	pr := tiStart(t, "node", "testdata/interop/h2slow.js", addr, "/download")
	pr.waitOut(t, "paused", 1)
	// Wait until the upstream is held back: its count stops moving.
	var held int64
	eventually(t, 10*time.Second, "the upstream held back by the paused client", func() bool {
		before := written.Load()
		time.Sleep(300 * time.Millisecond)
		held = written.Load()
		return held == before
	})
	if held > 32<<20 {
		t.Errorf("the upstream wrote %d MiB of %d MiB while the client read nothing: unbounded buffering", held>>20, size>>20)
	}
	t.Logf("held back after %.1f MiB", float64(held)/(1<<20))
	pr.write(t, "go\n")
	sum := sha256.New()
	for left := size; left > 0; left -= len(chunk) {
		sum.Write(chunk)
	}
	pr.waitOut(t, fmt.Sprintf("done %d %x", size, sum.Sum(nil)), 1)
	eventually(t, 5*time.Second, "no slot or stream held", func() bool { return p.InFlight() == 0 && p.Streams() == 0 })
}

// TestH2InteropOverload: curl runs 10 requests at once, multiplexed on
// one HTTP/2 connection, past MaxInFlight 3: three are answered, the
// others refused at once with 503 and Retry-After, each on its own stream,
// and the connection carries on (one connection in all).
func TestH2InteropOverload(t *testing.T) {
	up := newUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(1500 * time.Millisecond)
		_, _ = io.WriteString(w, "slow\n")
	}))
	p, addr := h2iProxy(t, up.URL, Config{MaxInFlight: 3}, ServerConfig{})
	args := []string{"-sSk", "--http2", "-Z", "--parallel-max", "10",
		"-w", "%{http_code} %{num_connects} %header{retry-after}\n", "-o", "/dev/null"}
	for i := range 10 {
		args = append(args, "https://"+addr+"/slow?i="+strconv.Itoa(i))
		if i > 0 {
			args = append(args, "-o", "/dev/null")
		}
	}
	out, errb, err := tiRun(t, 20*time.Second, nil, nil, "curl", args...)
	if err != nil {
		t.Fatalf("curl: %v\n%s", err, errb)
	}
	counts := map[string]int{}
	conns := 0
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			t.Fatalf("curl output line %q", line)
		}
		n, _ := strconv.Atoi(f[1])
		conns += n
		counts[strings.Join(append(f[:1:1], f[2:]...), " ")]++
	}
	if counts["200"] != 3 || counts["503 1"] != 7 || conns != 1 {
		t.Errorf("10 requests at once past MaxInFlight 3: %v over %d connections, want 3× 200 and 7× 503 with Retry-After: 1 over 1\n%s", counts, conns, out)
	}
	eventually(t, 5*time.Second, "no slot held", func() bool { return p.InFlight() == 0 })
}

// h2iUpstream serves h as the proxy's app: over HTTP/1.1 ("http") or h2c.
func h2iUpstream(t *testing.T, target string, h http.Handler) string {
	t.Helper()
	if target == "http" {
		return newUpstream(t, h).URL
	}
	return startH2CUpstream(t, h, false).String()
}
