package enclave_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/quenchnet/quench/attestation"
	"github.com/quenchnet/quench/enclave"
	"github.com/quenchnet/quench/internal/testutil"
)

// These tests hold Config.MaxConns connections to the public server over
// both of its listeners (the tunnel through quench-host, and the ingress
// fast path: a unix socket standing in for VSOCK, whose TLS connections
// the proxy's event loops take), to forwards (whose pairs a relay loop
// takes) and to key sync, and check that one more is closed at once and
// counted, and that every way a connection ends gives its slot back
// exactly once.

const capN = 3 // Config.MaxConns in these tests

// capEnv is an enclave with MaxConns capN, serving an app (in-process, or
// proxied with AppURL) that answers "ok PATH" and, for a request with
// "Upgrade: echo", switches protocols and echoes.
type capEnv struct {
	logs    *lockedBuffer // the enclave's log (text)
	e       *enclave.Enclave
	counts  func() (held int64, refused uint64)
	tunnel  string // the host's published port to the public server
	ingress string // the ingress listener's unix socket
	fwdDir  string // forward i listens on fwDIR/fwI.sock (dialForward), dialled as viaForward(i)
}

// startCapEnv starts a capEnv; with targets, the enclave also has a
// forward to each (in that order), sharing the cap.
func startCapEnv(t *testing.T, proxied bool, targets ...string) *capEnv {
	t.Helper()
	ingress := filepath.Join(t.TempDir(), "in.sock")
	fwdDir := t.TempDir()
	logs := &lockedBuffer{}
	env := svStart(t, func(c *enclave.Config) {
		c.Logger = slog.New(slog.NewTextHandler(logs, nil))
		c.MaxConns = capN
		c.IngressListen = func() (net.Listener, error) { return net.Listen("unix", ingress) }
		if proxied {
			c.Handler = nil
			c.AppURL = svApp(t, capApp)
		} else {
			c.Handler = http.HandlerFunc(capApp)
		}
		for i, target := range targets {
			path := filepath.Join(fwdDir, fmt.Sprintf("fw%d.sock", i))
			c.Forwards = append(c.Forwards, enclave.Forward{
				Listen: func() (net.Listener, error) { return net.Listen("unix", path) },
				Target: target,
			})
		}
	})
	return &capEnv{
		logs:    logs,
		e:       env.enc,
		counts:  enclave.ConnCounts(env.enc),
		tunnel:  env.host.Published()[0].String(),
		ingress: ingress,
		fwdDir:  fwdDir,
	}
}

// lockedBuffer is a bytes.Buffer for several goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func capApp(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Upgrade") != "echo" {
		fmt.Fprintf(w, "ok %s", r.URL.Path)
		return
	}
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	defer conn.Close()
	_, _ = brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
	if brw.Flush() != nil {
		return
	}
	_, _ = io.Copy(conn, brw.Reader)
}

const (
	viaTunnel  = "tunnel"
	viaIngress = "ingress"
)

// viaForward names forward i of a capEnv for dial and expectRefused.
func viaForward(i int) string { return fmt.Sprintf("fw%d", i) }

// dial connects to the public server over the tunnel or the ingress fast
// path (with the PROXY header quench-host would send).
func (ce *capEnv) dial(t *testing.T, via string) net.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := ce.dialContext(ctx, via)
	if err != nil {
		t.Fatalf("dial %s: %v", via, err)
	}
	return c
}

func (ce *capEnv) dialContext(ctx context.Context, via string) (net.Conn, error) {
	switch via {
	case viaTunnel:
		var d net.Dialer
		return d.DialContext(ctx, "tcp", ce.tunnel)
	case viaIngress:
		return dialIngressAs(ce.ingress)(ctx, "", "")
	}
	return dialIngressAs(filepath.Join(ce.fwdDir, via+".sock"))(ctx, "", "")
}

// waitFor polls cond for up to 10 s.
func waitFor(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ok, state := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still %s after 10s", what, state)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// waitHeld waits until the capped listeners hold exactly n connections,
// as counted and as the gauge says. (A connection the client closed may
// still be waiting to be accepted: both are read together, in case it is
// counted between them.)
func (ce *capEnv) waitHeld(t *testing.T, n int64) {
	t.Helper()
	waitFor(t, fmt.Sprintf("connections held, want %d", n), func() (bool, string) {
		held, _ := ce.counts()
		g := enclave.MetricValue(ce.e, "quench_enclave_public_connections")
		return held == n && g == float64(n), fmt.Sprintf("%d (gauge %v)", held, g)
	})
}

// stall opens a connection that stops in the middle of its handshake: the
// first bytes of a TLS record, then nothing.
func (ce *capEnv) stall(t *testing.T, via string) net.Conn {
	t.Helper()
	c := ce.dial(t, via)
	if _, err := c.Write([]byte{0x16, 0x03, 0x01}); err != nil {
		t.Fatalf("stall %s: %v", via, err)
	}
	return c
}

// expectRefused checks that one more connection is closed at once, before
// any handshake, and counted.
func (ce *capEnv) expectRefused(t *testing.T, via string) {
	t.Helper()
	_, before := ce.counts()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := ce.dialContext(ctx, via)
	switch {
	case via != viaTunnel && (errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNRESET)):
		// Closed before the PROXY header was all written.
	case err != nil:
		t.Fatalf("dial %s: %v", via, err)
	default:
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		_, _ = c.Write([]byte{0x16, 0x03, 0x01})
		n, err := c.Read(make([]byte, 1))
		var ne net.Error
		if err == nil || errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("connection %d via %s: read %d bytes, %v; want it closed at once", capN+1, via, n, err)
		}
	}
	waitFor(t, "refusal counted", func() (bool, string) {
		_, r := ce.counts()
		return r == before+1, fmt.Sprintf("%d refused (%d before)", r, before)
	})
	_, r := ce.counts()
	if m := enclave.MetricValue(ce.e, "quench_enclave_public_connections_refused_total"); m != float64(r) {
		t.Fatalf("quench_enclave_public_connections_refused_total = %v, want %d", m, r)
	}
}

// h1Conn is an HTTP/1.1 connection over TLS, driven by hand so that the
// test knows which connection each request takes.
type h1Conn struct {
	tc *tls.Conn
	br *bufio.Reader
}

func (ce *capEnv) h1(t *testing.T, via string) *h1Conn {
	t.Helper()
	c := ce.dial(t, via)
	tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}})
	_ = tc.SetDeadline(time.Now().Add(10 * time.Second))
	if err := tc.Handshake(); err != nil {
		c.Close()
		t.Fatalf("handshake via %s: %v", via, err)
	}
	_ = tc.SetDeadline(time.Time{})
	return &h1Conn{tc: tc, br: bufio.NewReader(tc)}
}

// get sends GET path (with Connection: close if closeConn) and checks the
// answer.
func (h *h1Conn) get(t *testing.T, path string, closeConn bool) {
	t.Helper()
	_ = h.tc.SetDeadline(time.Now().Add(10 * time.Second))
	defer func() { _ = h.tc.SetDeadline(time.Time{}) }()
	req := "GET " + path + " HTTP/1.1\r\nHost: enclave.invalid\r\n"
	if closeConn {
		req += "Connection: close\r\n"
	}
	if _, err := io.WriteString(h.tc, req+"\r\n"); err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	resp, err := http.ReadResponse(h.br, nil)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	want := "ok " + path
	if strings.HasPrefix(path, "/enclave/") {
		want = `"status":"ok"`
	}
	if err != nil || resp.StatusCode != http.StatusOK || !strings.Contains(string(b), want) {
		t.Fatalf("GET %s: %d %q (%v), want %q", path, resp.StatusCode, b, err, want)
	}
	if closeConn {
		if _, err := h.br.ReadByte(); err != io.EOF {
			t.Fatalf("GET %s with Connection: close: %v after the response, want EOF", path, err)
		}
	}
}

// upgrade switches h to the echo protocol and checks an echo.
func (h *h1Conn) upgrade(t *testing.T) {
	t.Helper()
	_ = h.tc.SetDeadline(time.Now().Add(10 * time.Second))
	defer func() { _ = h.tc.SetDeadline(time.Time{}) }()
	if _, err := io.WriteString(h.tc, "GET /up HTTP/1.1\r\nHost: enclave.invalid\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(h.br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %v %v", resp, err)
	}
	if _, err := io.WriteString(h.tc, "ping"); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 4)
	if _, err := io.ReadFull(h.br, b); err != nil || string(b) != "ping" {
		t.Fatalf("echo: %q %v", b, err)
	}
}

func (h *h1Conn) Close() error { return h.tc.Close() }

// h2 returns a transport holding one HTTP/2 connection (idle after a
// request, closed by CloseIdleConnections).
func (ce *capEnv) h2(t *testing.T, via string) *http.Transport {
	t.Helper()
	tr := &http.Transport{
		TLSClientConfig:   &tls.Config{InsecureSkipVerify: true},
		ForceAttemptHTTP2: true,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return ce.dialContext(ctx, via)
		},
	}
	t.Cleanup(tr.CloseIdleConnections)
	ce.h2get(t, tr)
	return tr
}

func (ce *capEnv) h2get(t *testing.T, tr *http.Transport) {
	t.Helper()
	c := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	resp, err := c.Get("https://enclave.invalid/h2")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.ProtoMajor != 2 || string(b) != "ok /h2" {
		t.Fatalf("HTTP/2 GET: %d over HTTP/%d %q", resp.StatusCode, resp.ProtoMajor, b)
	}
}

// readClosed reads c until the server closes it (within 5 s).
func readClosed(t *testing.T, c net.Conn, what string) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err := io.Copy(io.Discard, c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("%s: the server did not close the connection", what)
	}
}

func forModes(t *testing.T, f func(t *testing.T, proxied bool)) {
	for _, proxied := range []bool{false, true} {
		name := "handler"
		if proxied {
			name = "proxied"
		}
		t.Run(name, func(t *testing.T) { f(t, proxied) })
	}
}

// TestMaxConnsStalledHandshakes: capN connections stalled in their TLS
// handshake, over both listeners, hold the cap; the next is closed at once
// and counted; once they close, new connections are served.
func TestMaxConnsStalledHandshakes(t *testing.T) {
	forModes(t, func(t *testing.T, proxied bool) {
		ce := startCapEnv(t, proxied)
		var held []net.Conn
		for i := range capN {
			held = append(held, ce.stall(t, []string{viaTunnel, viaIngress}[i%2]))
		}
		ce.waitHeld(t, capN)
		ce.expectRefused(t, viaTunnel)
		ce.expectRefused(t, viaIngress)
		ce.waitHeld(t, capN)
		for _, c := range held {
			c.Close()
		}
		ce.waitHeld(t, 0)
		for _, via := range []string{viaTunnel, viaIngress} {
			h := ce.h1(t, via)
			h.get(t, "/again", false)
			h.Close()
		}
	})
}

// TestMaxConnsKeepAlive: capN established keep-alive connections (HTTP/1.1
// over the ingress fast path, which a proxied app's event loops take, over
// the tunnel, and HTTP/2) hold the cap while idle; the next is closed at
// once; the held ones keep working; once they close, new ones are served.
func TestMaxConnsKeepAlive(t *testing.T) {
	forModes(t, func(t *testing.T, proxied bool) {
		ce := startCapEnv(t, proxied)
		loop := ce.h1(t, viaIngress)
		loop.get(t, "/a", false)
		tun := ce.h1(t, viaTunnel)
		tun.get(t, "/b", false)
		h2 := ce.h2(t, viaIngress)
		ce.waitHeld(t, capN)
		start := time.Now()
		for range 3 {
			ce.expectRefused(t, viaIngress)
			ce.expectRefused(t, viaTunnel)
		}
		// Six refusals, logged at most once a second, naming the limit.
		warnings := strings.Count(ce.logs.String(), "connection limit reached")
		if most := 1 + int(time.Since(start)/time.Second); warnings < 1 || warnings > most {
			t.Errorf("%d warnings for 6 refusals in %v, want 1 to %d:\n%s", warnings, time.Since(start), most, ce.logs)
		}
		if !strings.Contains(ce.logs.String(), fmt.Sprintf("level=WARN msg=\"connection limit reached (MaxConns); new connections are closed at once\" max_conns=%d", capN)) {
			t.Errorf("no warning naming the limit:\n%s", ce.logs)
		}
		loop.get(t, "/a", false)
		tun.get(t, "/b", false)
		ce.h2get(t, h2)
		ce.waitHeld(t, capN)
		loop.Close()
		ce.waitHeld(t, capN-1)
		tun.Close()
		h2.CloseIdleConnections()
		ce.waitHeld(t, 0)
		h := ce.h1(t, viaIngress)
		h.get(t, "/again", false)
		h.Close()
		ce.waitHeld(t, 0)
	})
}

// TestMaxConnsNoLeak ends connections every way there is, many times, over
// both listeners, and then checks that no slot leaked (or was released
// twice): exactly capN connections can be held again. A path that skipped
// its release would keep the count above 0.
func TestMaxConnsNoLeak(t *testing.T) {
	forModes(t, func(t *testing.T, proxied bool) {
		if proxied {
			// The front door's handshake deadline, so that a stalled
			// handshake ends by timing out.
			defer enclave.SetFrontDoorHandshakeTimeout(200 * time.Millisecond)()
		}
		ce := startCapEnv(t, proxied)
		type path struct {
			name string
			run  func(t *testing.T, via string)
		}
		paths := []path{
			{"failed handshake", func(t *testing.T, via string) {
				// A client that does not speak TLS.
				c := ce.dial(t, via)
				defer c.Close()
				_, _ = io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
				readClosed(t, c, "failed handshake")
			}},
			{"left mid-handshake", func(t *testing.T, via string) {
				ce.stall(t, via).Close()
			}},
			{"keep-alive, closed by the client", func(t *testing.T, via string) {
				// On the event loops over the ingress path of a
				// proxied app.
				h := ce.h1(t, via)
				defer h.Close()
				h.get(t, "/x", false)
				h.get(t, "/y", false)
			}},
			{"closed by the server", func(t *testing.T, via string) {
				h := ce.h1(t, via)
				defer h.Close()
				h.get(t, "/x", false)
				h.get(t, "/z", true)
			}},
			{"handed to a goroutine", func(t *testing.T, via string) {
				// The enclave's endpoints: the loops hand the
				// connection to the goroutine front end, which serves
				// it on.
				h := ce.h1(t, via)
				defer h.Close()
				h.get(t, "/x", false)
				h.get(t, "/enclave/health", false)
				h.get(t, "/y", false)
			}},
			{"upgraded", func(t *testing.T, via string) {
				// Tunnelled by the proxy; a hijack with an in-process
				// handler.
				h := ce.h1(t, via)
				defer h.Close()
				h.get(t, "/x", false)
				h.upgrade(t)
			}},
			{"HTTP/2", func(t *testing.T, via string) {
				ce.h2(t, via).CloseIdleConnections()
			}},
		}
		if proxied {
			paths = append(paths, path{"handshake timeout", func(t *testing.T, via string) {
				c := ce.stall(t, via)
				defer c.Close()
				readClosed(t, c, "handshake timeout")
			}})
		}
		for round := range 3 {
			for _, via := range []string{viaTunnel, viaIngress} {
				for _, p := range paths {
					p.run(t, via)
					if round == 0 {
						// Each path on its own first: which one leaks.
						t.Logf("%s via %s", p.name, via)
						ce.waitHeld(t, 0)
					}
				}
			}
		}
		ce.waitHeld(t, 0)
		// Exactly capN again: keep-alive connections, on the loops where
		// there are loops.
		var held []*h1Conn
		for i := range capN {
			h := ce.h1(t, []string{viaIngress, viaTunnel}[i%2])
			h.get(t, "/held", false)
			held = append(held, h)
		}
		ce.waitHeld(t, capN)
		ce.expectRefused(t, viaIngress)
		ce.expectRefused(t, viaTunnel)
		for _, h := range held {
			h.Close()
		}
		ce.waitHeld(t, 0)
	})
}

// TestMaxConnsClose: Close releases the slots of every connection it ends
// (in its handshake, idle on the event loops, HTTP/2).
func TestMaxConnsClose(t *testing.T) {
	forModes(t, func(t *testing.T, proxied bool) {
		ce := startCapEnv(t, proxied)
		stalled := ce.stall(t, viaTunnel)
		defer stalled.Close()
		loop := ce.h1(t, viaIngress)
		defer loop.Close()
		loop.get(t, "/a", false)
		ce.h2(t, viaIngress)
		ce.waitHeld(t, capN)
		if err := ce.e.Close(); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "connections held after Close, want 0", func() (bool, string) {
			held, _ := ce.counts()
			return held == 0, fmt.Sprint(held)
		})
	})
}

// fwdConn is a connection relayed by a forward to lineServer, past its
// greeting.
type fwdConn struct {
	net.Conn
	r *bufio.Reader
}

// holdForward opens a connection to forward i (a lineServer) and reads the
// greeting, so that the pair is being relayed.
func holdForward(t *testing.T, dir string, i int) *fwdConn {
	t.Helper()
	c := dialForward(t, dir, i, clientHeader("203.0.113.7:40001"), "")
	r := bufio.NewReader(c)
	if you, err := r.ReadString('\n'); err != nil || !strings.HasPrefix(you, "you are ") {
		t.Fatalf("forward %d: greeting %q, %v", i, you, err)
	}
	return &fwdConn{c, r}
}

// echo checks that f is still relayed both ways.
func (f *fwdConn) echo(t *testing.T) {
	t.Helper()
	fmt.Fprintf(f, "ping\n")
	if line, err := f.r.ReadString('\n'); err != nil || line != "ping\n" {
		t.Fatalf("forward echo %q, %v", line, err)
	}
}

// TestMaxConnsForward: a forward shares the public server's cap. capN
// connections relayed by the forward hold it: the next forward connection
// and the next public ones (tunnel, ingress) are closed at once and
// counted, while the held ones keep relaying; one ending frees a slot, for
// the public server as well.
func TestMaxConnsForward(t *testing.T) {
	ce := startCapEnv(t, false, lineServer(t, false))
	var held []*fwdConn
	for range capN {
		held = append(held, holdForward(t, ce.fwdDir, 0))
	}
	ce.waitHeld(t, capN)
	ce.expectRefused(t, viaForward(0))
	ce.expectRefused(t, viaTunnel)
	ce.expectRefused(t, viaIngress)
	ce.expectRefused(t, viaForward(0))
	for _, f := range held {
		f.echo(t)
	}
	ce.waitHeld(t, capN)
	if st := ce.e.ForwardStats(); st[0].Accepted != capN || st[0].Active != capN {
		t.Errorf("forward stats %+v; want %d accepted and active (the refused ones never reach the forward)", st[0], capN)
	}
	if !strings.Contains(ce.logs.String(), "connection limit reached") {
		t.Errorf("no warning for the refusals:\n%s", ce.logs)
	}
	held[0].Close()
	ce.waitHeld(t, capN-1)
	h := ce.h1(t, viaTunnel)
	h.get(t, "/public", false)
	ce.waitHeld(t, capN)
	ce.expectRefused(t, viaForward(0))
	h.Close()
	for _, f := range held[1:] {
		f.Close()
	}
	ce.waitHeld(t, 0)
}

// TestMaxConnsForwardOnly: without a public server (forwards only, as
// quench-enclave -forward without -app-url), the forwards are capped
// still.
func TestMaxConnsForwardOnly(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "host.sock")
	usHost(t, sock)
	target := lineServer(t, false)
	e := usEnclave(t, sock, func(c *enclave.Config) {
		c.MaxConns = capN
		c.Forwards = []enclave.Forward{{
			Listen: func() (net.Listener, error) { return net.Listen("unix", filepath.Join(dir, "fw0.sock")) },
			Target: target,
		}}
	})
	ce := &capEnv{e: e, counts: enclave.ConnCounts(e), fwdDir: dir}
	waitHeld := func(n int64) {
		t.Helper()
		waitFor(t, fmt.Sprintf("connections held, want %d", n), func() (bool, string) {
			held, _ := ce.counts()
			return held == n, fmt.Sprint(held)
		})
	}
	var held []*fwdConn
	for range capN {
		held = append(held, holdForward(t, dir, 0))
	}
	waitHeld(capN)
	_, before := ce.counts()
	c, err := ce.dialContext(context.Background(), viaForward(0))
	if err == nil {
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		n, err := c.Read(make([]byte, 1))
		var ne net.Error
		if err == nil || errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("forward connection %d: read %d bytes, %v; want it closed at once", capN+1, n, err)
		}
		c.Close()
	}
	waitFor(t, "refusal counted", func() (bool, string) {
		_, r := ce.counts()
		return r == before+1, fmt.Sprintf("%d refused (%d before)", r, before)
	})
	for _, f := range held {
		f.Close()
	}
	waitHeld(0)
	holdForward(t, dir, 0).echo(t)
}

// resetServer serves on a kernel TCP port of 127.0.0.1: it writes "bye" to
// each connection and resets it, ending the forward's pair from the
// target's side.
func resetServer(t *testing.T) string {
	t.Helper()
	ln := listenLocal(t, "tcp")
	testutil.ServeConns(t, ln, func(c net.Conn) {
		_, _ = io.WriteString(c, "bye")
		_ = c.(*net.TCPConn).SetLinger(0)
	})
	return ln.Addr().String()
}

// TestMaxConnsForwardNoLeak ends forwarded connections every way there is,
// many times, and then checks that no slot leaked or was released twice:
// the count is back at 0 after each, and exactly capN can be held again.
func TestMaxConnsForwardNoLeak(t *testing.T) {
	ln := listenLocal(t, "tcp")
	dead := ln.Addr().String()
	_ = ln.Close()
	ce := startCapEnv(t, false, lineServer(t, false), dead, resetServer(t))
	hdr := clientHeader("203.0.113.7:40001")
	paths := []struct {
		name string
		run  func(t *testing.T)
	}{
		{"target unreachable", func(t *testing.T) {
			c := dialForward(t, ce.fwdDir, 1, hdr, "")
			defer c.Close()
			readClosed(t, c, "dial failure")
		}},
		{"no PROXY header", func(t *testing.T) {
			c := dialForward(t, ce.fwdDir, 0, nil, "GET / HTTP/1.1\r\n\r\n")
			defer c.Close()
			readClosed(t, c, "no header")
		}},
		{"left mid-header", func(t *testing.T) {
			b, _ := hdr.Format()
			c := dialForward(t, ce.fwdDir, 0, nil, string(b[:8]))
			c.Close()
		}},
		{"closed by the client", func(t *testing.T) {
			f := holdForward(t, ce.fwdDir, 0)
			f.echo(t)
			f.Close()
		}},
		{"half-closed both ways", func(t *testing.T) {
			// The pair ends (and its slot is free) before the client
			// closes its socket.
			f := holdForward(t, ce.fwdDir, 0)
			defer f.Close()
			_ = f.Conn.(*net.UnixConn).CloseWrite()
			if rest, err := io.ReadAll(f.r); err != nil || string(rest) != "bye" {
				t.Fatalf("after half-close %q, %v", rest, err)
			}
			ce.waitHeld(t, 0)
		}},
		{"reset by the target", func(t *testing.T) {
			c := dialForward(t, ce.fwdDir, 2, hdr, "")
			defer c.Close()
			readClosed(t, c, "target reset")
			ce.waitHeld(t, 0)
		}},
	}
	for round := range 3 {
		for _, p := range paths {
			p.run(t)
			if round == 0 {
				t.Logf("%s", p.name)
				ce.waitHeld(t, 0)
			}
		}
	}
	ce.waitHeld(t, 0)
	st := ce.e.ForwardStats()
	if st[1].DialErrors != 3 || st[0].Refused != 6 || st[0].Active != 0 || st[2].Active != 0 {
		t.Errorf("forward stats %+v; want 3 dial errors, 6 refused headers, none active", st)
	}
	var held []*fwdConn
	for range capN {
		held = append(held, holdForward(t, ce.fwdDir, 0))
	}
	ce.waitHeld(t, capN)
	ce.expectRefused(t, viaForward(0))
	ce.expectRefused(t, viaTunnel)
	for _, f := range held {
		f.Close()
	}
	ce.waitHeld(t, 0)
}

// TestMaxConnsForwardClose: Close releases the slots of the pairs it ends
// after the drain, and of the public server's connections.
func TestMaxConnsForwardClose(t *testing.T) {
	ce := startCapEnv(t, true, lineServer(t, false))
	for range capN - 1 {
		holdForward(t, ce.fwdDir, 0)
	}
	stalled := ce.stall(t, viaTunnel)
	defer stalled.Close()
	ce.waitHeld(t, capN)
	if err := ce.e.Close(); err != nil {
		t.Fatal(err)
	}
	held, _ := ce.counts()
	if held != 0 {
		t.Fatalf("connections held after Close: %d, want 0", held)
	}
}

// TestMaxConnsKeySync: the key-sync listener counts against the same cap:
// a connection to it holds a slot until it closes; with the cap full the
// next one, to it or to the public server, is closed at once.
func TestMaxConnsKeySync(t *testing.T) {
	att, err := attestation.NewDevAttester(attestation.DevConfig{})
	if err != nil {
		t.Fatal(err)
	}
	sock, public, sync := ksHost(t)
	// The leader is unreachable (a closed port): the enclave never
	// connects to its own sync listener, whose count stays the test's.
	ln := listenLocal(t, "tcp")
	dead := ln.Addr().String()
	_ = ln.Close()
	ks := ksStart(t, att, sock, public, sync, dead, func(c *enclave.Config) { c.MaxConns = capN })
	ce := &capEnv{e: ks.enc, counts: enclave.ConnCounts(ks.enc), tunnel: public}
	syncCE := *ce
	syncCE.tunnel = sync
	syncConn := syncCE.stall(t, viaTunnel)
	defer syncConn.Close()
	ce.waitHeld(t, 1)
	for range capN - 1 {
		defer ce.stall(t, viaTunnel).Close()
	}
	ce.waitHeld(t, capN)
	syncCE.expectRefused(t, viaTunnel)
	ce.expectRefused(t, viaTunnel)
	syncConn.Close()
	ce.waitHeld(t, capN-1)
	h := syncCE.h1(t, viaTunnel) // a TLS handshake with the sync server
	ce.waitHeld(t, capN)
	ce.expectRefused(t, viaTunnel)
	h.Close()
	ce.waitHeld(t, capN-1)
}
