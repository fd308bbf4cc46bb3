package attestation_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quenchnet/quench/attestation"
	"github.com/quenchnet/quench/attestation/attestationtest"
)

var (
	pcr0      = bytes.Repeat([]byte{0xa0}, 48)
	otherPCR0 = bytes.Repeat([]byte{0xb0}, 48)
)

// enclaveServer is an HTTPS server as an enclave serves: documents that
// bind its certificate at attestation.Path, the app everywhere else.
type enclaveServer struct {
	*httptest.Server
	dev      *attestation.DevAttester
	appHits  atomic.Int64 // requests the app saw
	attests  atomic.Int64 // documents served
	conns    atomic.Int64 // TCP connections accepted
	closeDoc atomic.Bool  // answer documents with Connection: close
	docGate  func() bool  // when set, false refuses the document with 503 (set before requests)
	// bare counts app requests on a connection that served no document
	// before them (with TrustFor -1, a request the Transport sent over a
	// connection it did not verify).
	bare atomic.Int64
}

type attestedKey struct{}

func newEnclaveServer(t testing.TB, pcr []byte) *enclaveServer {
	t.Helper()
	e := newEnclaveServerPCR(t, pcr)
	e.StartTLS()
	return e
}

// newEnclaveServerUnstarted is newEnclaveServer with pcr0, not started.
func newEnclaveServerUnstarted(t *testing.T) *enclaveServer {
	t.Helper()
	return newEnclaveServerPCR(t, pcr0)
}

func newEnclaveServerPCR(t testing.TB, pcr []byte) *enclaveServer {
	t.Helper()
	e := &enclaveServer{dev: attestationtest.NewDevAttester(t, attestation.DevConfig{PCRs: map[uint][]byte{0: pcr}})}
	e.Server = httptest.NewUnstartedServer(nil)
	h, err := attestation.NewHandler(attestation.HandlerConfig{
		Attester: e.dev,
		UserData: func() ([]byte, error) {
			return attestation.UserData{TLSCertHash: attestation.CertHash(e.Certificate().Raw)}.Marshal(), nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc(attestation.Path, func(w http.ResponseWriter, r *http.Request) {
		if e.docGate != nil && !e.docGate() {
			w.Header().Set("Retry-After", "1")
			http.Error(w, "too many attestations at once", http.StatusServiceUnavailable)
			return
		}
		e.attests.Add(1)
		if f, ok := r.Context().Value(attestedKey{}).(*atomic.Bool); ok {
			f.Store(true)
		}
		if e.closeDoc.Load() {
			w.Header().Set("Connection", "close")
		}
		h(w, r)
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		e.appHits.Add(1)
		if f, ok := r.Context().Value(attestedKey{}).(*atomic.Bool); !ok || !f.Load() {
			e.bare.Add(1)
		}
		body, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "app: %s %s %s", r.Method, r.URL.Path, body)
	})
	e.Config.Handler = mux
	e.Config.ConnContext = func(ctx context.Context, _ net.Conn) context.Context {
		return context.WithValue(ctx, attestedKey{}, new(atomic.Bool))
	}
	e.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			e.conns.Add(1)
		}
	}
	t.Cleanup(e.Close)
	return e
}

func newTransport(t testing.TB, e *enclaveServer, mod func(*attestation.ClientConfig)) *attestation.Transport {
	t.Helper()
	cfg := attestation.ClientConfig{
		Options:   attestation.Options{Roots: e.dev.Roots(), PCRs: map[uint][]byte{0: pcr0}, MaxAge: time.Minute},
		TLSConfig: insecureTLS,
	}
	if mod != nil {
		mod(&cfg)
	}
	tr, err := attestation.NewTransport(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tr.Close() })
	return tr
}

func get(t testing.TB, c *http.Client, url string) (string, error) {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// TestTransport: the first request verifies the enclave on its connection
// and then goes over that same connection; later requests reuse it; a new
// connection presenting the verified certificate is not verified again.
func TestTransport(t *testing.T) {
	e := newEnclaveServer(t, pcr0)
	var verified []*attestation.Result
	var mu sync.Mutex
	tr := newTransport(t, e, func(c *attestation.ClientConfig) {
		c.OnVerify = func(addr string, res *attestation.Result) {
			mu.Lock()
			defer mu.Unlock()
			if addr != e.Listener.Addr().String() {
				t.Errorf("OnVerify addr = %q", addr)
			}
			verified = append(verified, res)
		}
	})
	c := tr.Client()
	for i := range 3 {
		body, err := get(t, c, e.URL+"/hello")
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		if body != "app: GET /hello " {
			t.Fatalf("body = %q", body)
		}
	}
	resp, err := c.Post(e.URL+"/echo", "text/plain", strings.NewReader("ping"))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != "app: POST /echo ping" {
		t.Fatalf("POST body = %q", b)
	}
	if resp.TLS == nil {
		t.Error("resp.TLS is nil: the transport did not get the *tls.Conn")
	}
	if got := e.conns.Load(); got != 1 {
		t.Errorf("%d connections, want 1: the attestation's connection serves the requests", got)
	}
	if got := e.attests.Load(); got != 1 {
		t.Errorf("%d documents fetched, want 1", got)
	}
	mu.Lock()
	if len(verified) != 1 || verified[0].PCRs[0] == nil || !bytes.Equal(verified[0].PCRs[0], pcr0) {
		t.Errorf("OnVerify got %d results", len(verified))
	}
	mu.Unlock()

	// A new connection with the same certificate: trusted, not verified again.
	tr.CloseIdleConnections()
	if _, err := get(t, c, e.URL+"/again"); err != nil {
		t.Fatal(err)
	}
	if got, attests := e.conns.Load(), e.attests.Load(); got != 2 || attests != 1 {
		t.Errorf("after a new connection: %d connections, %d documents; want 2, 1", got, attests)
	}
}

// TestTransportTrustFor: with a negative TrustFor every connection is
// verified; with a short one, a connection after it has passed is too.
func TestTransportTrustFor(t *testing.T) {
	e := newEnclaveServer(t, pcr0)
	tr := newTransport(t, e, func(c *attestation.ClientConfig) { c.TrustFor = -1 })
	for range 3 {
		if _, err := get(t, tr.Client(), e.URL+"/"); err != nil {
			t.Fatal(err)
		}
		tr.CloseIdleConnections()
	}
	if got := e.attests.Load(); got != 3 {
		t.Errorf("TrustFor -1: %d documents for 3 connections", got)
	}

	e2 := newEnclaveServer(t, pcr0)
	now := time.Now()
	var clock atomic.Int64
	tr2 := newTransport(t, e2, func(c *attestation.ClientConfig) {
		c.TrustFor = time.Minute
		c.Options.MaxAge = 0 // the documents carry the real time
		c.Now = func() time.Time { return now.Add(time.Duration(clock.Load())) }
	})
	for _, at := range []time.Duration{0, 30 * time.Second, 61 * time.Second} {
		clock.Store(int64(at))
		if _, err := get(t, tr2.Client(), e2.URL+"/"); err != nil {
			t.Fatal(err)
		}
		tr2.CloseIdleConnections()
	}
	if got := e2.attests.Load(); got != 2 {
		t.Errorf("TrustFor 1m at 0s, 30s, 61s: %d documents, want 2", got)
	}
}

// TestTransportRefusesBeforeSending: an enclave of another image, and a
// machine in the middle relaying the genuine enclave's documents with its
// own certificate, fail the request with the verification error, and the
// request never reaches the server's app.
func TestTransportRefusesBeforeSending(t *testing.T) {
	t.Run("other image", func(t *testing.T) {
		e := newEnclaveServer(t, otherPCR0)
		tr := newTransport(t, e, nil)
		_, err := get(t, tr.Client(), e.URL+"/secret")
		if !errors.Is(err, attestation.ErrPCRMismatch) {
			t.Fatalf("err = %v, want ErrPCRMismatch", err)
		}
		if n := e.appHits.Load(); n != 0 {
			t.Errorf("the app saw %d requests", n)
		}
	})
	t.Run("relay", func(t *testing.T) {
		genuine := newEnclaveServer(t, pcr0)
		var relayed atomic.Int64
		relay := attestationtest.NewRelay(t, genuine.Server, func(r *http.Request) {
			if r.URL.Path != attestation.Path {
				relayed.Add(1)
			}
		})
		tr := newTransport(t, genuine, nil)
		_, err := get(t, tr.Client(), relay.URL+"/secret")
		var ue *attestation.UserDataMismatchError
		if !errors.As(err, &ue) || ue.Field != "tls_cert_hash" {
			t.Fatalf("err = %v, want a tls_cert_hash mismatch", err)
		}
		if n := relayed.Load() + genuine.appHits.Load(); n != 0 {
			t.Errorf("%d requests other than the document's went through", n)
		}
	})
	t.Run("no documents", func(t *testing.T) {
		srv := httptest.NewTLSServer(http.NotFoundHandler())
		t.Cleanup(srv.Close)
		dev := attestationtest.NewDevAttester(t, attestation.DevConfig{})
		tr, err := attestation.NewTransport(attestation.ClientConfig{
			Options: attestation.Options{Roots: dev.Roots(), PCRs: map[uint][]byte{0: pcr0}}, TLSConfig: insecureTLS,
		})
		if err != nil {
			t.Fatal(err)
		}
		_, err = get(t, tr.Client(), srv.URL+"/")
		if err == nil || !strings.Contains(err.Error(), "404") {
			t.Fatalf("err = %v, want the 404 of the attestation path", err)
		}
	})
}

// TestTransportConnectionClose: an enclave that closes the connection after
// the document: the request goes on a new connection, which presents the
// certificate just verified.
func TestTransportConnectionClose(t *testing.T) {
	e := newEnclaveServer(t, pcr0)
	e.closeDoc.Store(true)
	tr := newTransport(t, e, nil)
	body, err := get(t, tr.Client(), e.URL+"/x")
	if err != nil {
		t.Fatal(err)
	}
	if body != "app: GET /x " {
		t.Errorf("body = %q", body)
	}
	if c, a := e.conns.Load(), e.attests.Load(); c != 2 || a != 1 {
		t.Errorf("%d connections, %d documents; want 2, 1", c, a)
	}
}

// TestTransportHostileServer: responses a server in the middle could send in
// place of a document fail cleanly and in bounded time.
func TestTransportHostileServer(t *testing.T) {
	dev := attestationtest.NewDevAttester(t, attestation.DevConfig{PCRs: map[uint][]byte{0: pcr0}})
	doc, err := dev.Attest(context.Background(), attestation.Request{Nonce: bytes.Repeat([]byte{1}, attestation.NonceSize)})
	if err != nil {
		t.Fatal(err)
	}
	b64 := encodeB64(doc)
	for _, tc := range []struct {
		name    string
		respond func(net.Conn)
		want    string
	}{
		{"stale document", func(c net.Conn) {
			fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(b64), b64)
		}, "nonce"},
		{"bytes after the response", func(c net.Conn) {
			fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%sHTTP/1.1 200 OK\r\n\r\n", len(b64), b64)
		}, "after the response"},
		{"huge body", func(c net.Conn) {
			fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n", 1<<30)
			_, _ = c.Write(bytes.Repeat([]byte{'A'}, 1<<20))
		}, "larger than"},
		{"endless head", func(c net.Conn) {
			_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\n")
			for range 10000 {
				if _, err := io.WriteString(c, "X-Pad: "+strings.Repeat("a", 100)+"\r\n"); err != nil {
					return
				}
			}
		}, "response head larger"},
		{"silence", func(c net.Conn) { _, _ = io.Copy(io.Discard, c) }, "deadline exceeded"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			url := rawTLSServer(t, tc.respond)
			tr, err := attestation.NewTransport(attestation.ClientConfig{
				Options:   attestation.Options{Roots: dev.Roots(), PCRs: map[uint][]byte{0: pcr0}},
				TLSConfig: insecureTLS,
				Timeout:   300 * time.Millisecond,
			})
			if err != nil {
				t.Fatal(err)
			}
			defer tr.Close()
			start := time.Now()
			_, err = get(t, tr.Client(), url+"/")
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("took %s", d)
			}
		})
	}
}

func TestTransportConfig(t *testing.T) {
	dev := attestationtest.NewDevAttester(t, attestation.DevConfig{})
	pcrs := map[uint][]byte{0: pcr0}
	for _, tc := range []struct {
		name string
		cfg  attestation.ClientConfig
		want string
	}{
		{"no PCRs", attestation.ClientConfig{}, "any enclave image would pass"},
		{"time", attestation.ClientConfig{Options: attestation.Options{PCRs: pcrs, Time: time.Now()}}, "Time must be zero"},
		{"nonce", attestation.ClientConfig{Options: attestation.Options{PCRs: pcrs, Nonce: []byte{1}}}, "Nonce must be nil"},
		{"cert hash", attestation.ClientConfig{Options: attestation.Options{PCRs: pcrs, TLSCertHash: make([]byte, 32)}}, "TLSCertHash must be nil"},
		{"bad PCR", attestation.ClientConfig{Options: attestation.Options{PCRs: map[uint][]byte{0: {1}}}}, "PCR0 value is 1 bytes"},
		{"path", attestation.ClientConfig{Options: attestation.Options{PCRs: pcrs}, Path: "enclave"}, "must start with /"},
		{"timeout", attestation.ClientConfig{Options: attestation.Options{PCRs: pcrs}, Timeout: -1}, "negative"},
		// Debug-mode enclaves report all-zero PCRs, whatever their image, and
		// the parent can read their memory.
		{"zero PCRs", attestation.ClientConfig{Options: attestation.Options{PCRs: map[uint][]byte{0: make([]byte, 48), 1: make([]byte, 48)}}}, "debug mode"},
	} {
		_, err := attestation.NewTransport(tc.cfg)
		if !errors.Is(err, attestation.ErrInvalidOptions) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want ErrInvalidOptions with %q", tc.name, err, tc.want)
		}
	}
	if _, err := attestation.NewTransport(attestation.ClientConfig{AnyImage: true, Options: attestation.Options{Roots: dev.Roots()}}); err != nil {
		t.Errorf("AnyImage: %v", err)
	}
	if _, err := attestation.NewTransport(attestation.ClientConfig{AnyImage: true, Options: attestation.Options{PCRs: map[uint][]byte{0: make([]byte, 48)}}}); err != nil {
		t.Errorf("AnyImage with zero PCRs: %v", err)
	}
	// A zero value next to a real one is fine: unused PCRs read as zero in
	// production too, and a debug-mode enclave fails the real one.
	if _, err := attestation.NewTransport(attestation.ClientConfig{Options: attestation.Options{PCRs: map[uint][]byte{0: pcr0, 5: make([]byte, 48)}}}); err != nil {
		t.Errorf("PCR0 and a zero PCR5: %v", err)
	}

	// Plain HTTP is refused, before any connection.
	tr, err := attestation.NewTransport(attestation.ClientConfig{Options: attestation.Options{PCRs: pcrs}})
	if err != nil {
		t.Fatal(err)
	}
	var dialed atomic.Bool
	srv := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { dialed.Store(true) }))
	defer srv.Close()
	if _, err := get(t, tr.Client(), srv.URL); err == nil || !strings.Contains(err.Error(), "https URLs only") {
		t.Errorf("http URL: err = %v", err)
	}
	if dialed.Load() {
		t.Error("the http URL was fetched")
	}
}

// TestTransportOneDocumentPerCertificate: a fresh Transport under many
// parallel requests opens many connections at once; they present one
// certificate, and one document is fetched for it while the others wait
// for its verdict. An enclave serves a few documents at once (each is an
// NSM request; quench-enclave -max-attestations, 16) and refuses the rest
// with 503: one per connection failed most requests of a burst.
func TestTransportOneDocumentPerCertificate(t *testing.T) {
	e := newEnclaveServer(t, pcr0)
	var busy atomic.Int32
	e.docGate = func() bool { // at most 2 at once, 50 ms each
		if busy.Add(1) > 2 {
			busy.Add(-1)
			return false
		}
		time.Sleep(50 * time.Millisecond)
		busy.Add(-1)
		return true
	}
	tr := newTransport(t, e, nil)
	c := tr.Client()
	const n = 40
	errs := make(chan error, n)
	for range n {
		go func() {
			_, err := get(t, c, e.URL+"/burst")
			errs <- err
		}()
	}
	failed := 0
	for range n {
		if err := <-errs; err != nil {
			failed++
			t.Log(err)
		}
	}
	if failed > 0 {
		t.Errorf("%d of %d requests failed", failed, n)
	}
	if got := e.attests.Load(); got != 1 {
		t.Errorf("%d documents fetched for one certificate, want 1", got)
	}
}

// TestTransportRetriesBusyEnclave: a document refused with 503 (the enclave
// busy with other clients' documents) is asked for again on the same
// connection, after Retry-After (at most a second), within Timeout.
func TestTransportRetriesBusyEnclave(t *testing.T) {
	e := newEnclaveServer(t, pcr0)
	var refusals atomic.Int32
	e.docGate = func() bool { return refusals.Add(1) > 2 } // the first two refused, Retry-After: 1
	tr := newTransport(t, e, nil)
	start := time.Now()
	if _, err := get(t, tr.Client(), e.URL+"/"); err != nil {
		t.Fatal(err)
	}
	if c := e.conns.Load(); c != 1 {
		t.Errorf("%d connections, want 1", c)
	}
	if d := time.Since(start); d < 2*time.Second {
		t.Errorf("done after %s: Retry-After (1 s, twice) not honoured", d)
	}

	// Busy for longer than Timeout: the request fails with the 503.
	e2 := newEnclaveServer(t, pcr0)
	e2.docGate = func() bool { return false }
	tr2 := newTransport(t, e2, func(c *attestation.ClientConfig) { c.Timeout = 300 * time.Millisecond })
	if _, err := get(t, tr2.Client(), e2.URL+"/"); err == nil || !strings.Contains(err.Error(), "503") {
		t.Errorf("always busy: err = %v, want the 503", err)
	}
}

// TestTransportSharedVerdict: connections waiting for another one's
// verification of their certificate fail with its error when it fails,
// at once, rather than each trying in turn.
func TestTransportSharedVerdict(t *testing.T) {
	e := newEnclaveServer(t, otherPCR0)
	e.docGate = func() bool { time.Sleep(100 * time.Millisecond); return true }
	tr := newTransport(t, e, nil)
	c := tr.Client()
	const n = 20
	errs := make(chan error, n)
	start := time.Now()
	for range n {
		go func() {
			_, err := get(t, c, e.URL+"/")
			errs <- err
		}()
	}
	for range n {
		if err := <-errs; !errors.Is(err, attestation.ErrPCRMismatch) {
			t.Errorf("err = %v, want ErrPCRMismatch", err)
		}
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("took %s: verifications in turn", d)
	}
	if a := e.attests.Load(); a > 2 {
		t.Errorf("%d documents fetched", a)
	}
}

// BenchmarkTransportNewConnection: what a new connection costs a client:
// plain TLS (handshake and one request), verified (a document fetched
// and verified on it first: TrustFor -1), and trusted (a certificate
// verified before: the handshake and the request only). The enclave side
// (the development attester's signature) is in the figures, as the
// server runs in the benchmark's process.
func BenchmarkTransportNewConnection(b *testing.B) {
	e := newEnclaveServer(b, pcr0)
	run := func(b *testing.B, tr http.RoundTripper, closeIdle func()) {
		c := &http.Client{Transport: tr}
		b.ReportAllocs()
		for b.Loop() {
			if _, err := get(b, c, e.URL+"/"); err != nil {
				b.Fatal(err)
			}
			closeIdle()
		}
	}
	b.Run("plain TLS", func(b *testing.B) {
		tr := &http.Transport{TLSClientConfig: insecureTLS}
		defer tr.CloseIdleConnections()
		run(b, tr, tr.CloseIdleConnections)
	})
	b.Run("verified", func(b *testing.B) {
		tr := newTransport(b, e, func(c *attestation.ClientConfig) { c.TrustFor = -1 })
		run(b, tr, tr.CloseIdleConnections)
	})
	b.Run("trusted", func(b *testing.B) {
		tr := newTransport(b, e, nil)
		run(b, tr, tr.CloseIdleConnections)
	})
}
