package attestation_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quenchnet/quench/attestation"
	"github.com/quenchnet/quench/attestation/attestationtest"
	"github.com/quenchnet/quench/internal/testutil"
)

var insecureTLS = &tls.Config{InsecureSkipVerify: true}

// countingDialer counts the TCP connections VerifyRemote opens.
type countingDialer struct{ n atomic.Int32 }

func (d *countingDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	d.n.Add(1)
	return (&net.Dialer{}).DialContext(ctx, network, addr)
}

func TestVerifyRemote(t *testing.T) {
	dev := attestationtest.NewDevAttester(t, attestation.DevConfig{})
	srv := attestationtest.NewServer(t, dev)
	var dialer countingDialer
	res, err := attestation.VerifyRemote(context.Background(), srv.URL, attestation.RemoteConfig{
		Options:     attestation.Options{Time: time.Now(), Roots: dev.Roots(), MaxAge: time.Minute},
		TLSConfig:   insecureTLS,
		DialContext: dialer.DialContext,
	})
	if err != nil {
		t.Fatalf("VerifyRemote: %v", err)
	}
	if got := dialer.n.Load(); got != 1 {
		t.Errorf("VerifyRemote dialed %d times, want 1", got)
	}
	for _, c := range []attestation.Check{attestation.CheckNonce, attestation.CheckTLSCertHash, attestation.CheckMaxAge} {
		if !slices.Contains(res.Checks, c) {
			t.Errorf("check %s did not run: %v", c, res.Checks)
		}
	}
	if len(res.Nonce) != attestation.NonceSize {
		t.Errorf("nonce is %d bytes", len(res.Nonce))
	}
	ud, err := attestation.ParseUserData(res.UserData)
	if err != nil || ud.TLSCertHash != attestation.CertHash(srv.Certificate().Raw) {
		t.Errorf("user data %x does not bind the server certificate (%v)", res.UserData, err)
	}

	// With the server's CA trusted, PKI verification succeeds too, and a
	// caller-chosen nonce and a full endpoint URL are honoured.
	pool := srv.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs
	nonce := bytes.Repeat([]byte{7}, attestation.NonceSize)
	res, err = attestation.VerifyRemote(context.Background(), srv.URL+attestation.Path, attestation.RemoteConfig{
		Options:   attestation.Options{Time: time.Now(), Roots: dev.Roots(), Nonce: nonce},
		TLSConfig: &tls.Config{RootCAs: pool},
	})
	if err != nil {
		t.Fatalf("VerifyRemote with PKI: %v", err)
	}
	if !bytes.Equal(res.Nonce, nonce) {
		t.Errorf("nonce = %x, want %x", res.Nonce, nonce)
	}

	// Without either, the self-signed certificate is refused.
	_, err = attestation.VerifyRemote(context.Background(), srv.URL, attestation.RemoteConfig{
		Options: attestation.Options{Time: time.Now(), Roots: dev.Roots()},
	})
	var uae x509.UnknownAuthorityError
	if err == nil || !errors.As(err, &uae) {
		t.Errorf("VerifyRemote with default TLS = %v, want x509.UnknownAuthorityError", err)
	}

	// The AWS root does not accept development documents.
	_, err = attestation.VerifyRemote(context.Background(), srv.URL, attestation.RemoteConfig{
		Options: attestation.Options{Time: time.Now()}, TLSConfig: insecureTLS,
	})
	if !errors.Is(err, attestation.ErrUntrustedChain) {
		t.Errorf("VerifyRemote with AWS root = %v, want ErrUntrustedChain", err)
	}
}

// TestVerifyRemoteRelayDetected: a machine in the middle that terminates TLS
// with its own certificate and relays the genuine enclave's documents
// (nonce included) is caught by the certificate binding.
func TestVerifyRemoteRelayDetected(t *testing.T) {
	dev := attestationtest.NewDevAttester(t, attestation.DevConfig{})
	genuine := attestationtest.NewServer(t, dev)
	relay := attestationtest.NewRelay(t, genuine, nil)

	_, err := attestation.VerifyRemote(context.Background(), relay.URL, attestation.RemoteConfig{
		Options: attestation.Options{Time: time.Now(), Roots: dev.Roots()}, TLSConfig: insecureTLS,
	})
	var ue *attestation.UserDataMismatchError
	if !errors.Is(err, attestation.ErrUserDataMismatch) || !errors.As(err, &ue) || ue.Field != "tls_cert_hash" {
		t.Fatalf("VerifyRemote through a relay = %v, want a tls_cert_hash mismatch", err)
	}
}

func TestVerifyRemoteFailures(t *testing.T) {
	dev := attestationtest.NewDevAttester(t, attestation.DevConfig{})
	stale, err := dev.Attest(context.Background(), attestation.Request{Nonce: bytes.Repeat([]byte{1}, 20)})
	if err != nil {
		t.Fatal(err)
	}
	serve := func(h http.HandlerFunc) string {
		s := httptest.NewTLSServer(h)
		t.Cleanup(s.Close)
		return s.URL
	}
	replay := serve(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte(strings.TrimSpace(string(encodeB64(stale))) + "\n"))
	})
	unavailable := serve(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "enclave not ready", http.StatusServiceUnavailable)
	})
	huge := serve(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write(bytes.Repeat([]byte("A"), 64<<10))
	})
	// A response head that never ends: 8 MiB of one header line. net/http's
	// server would refuse to send it, so the server is raw TLS.
	hugeHead := rawTLSServer(t, func(c net.Conn) {
		_, _ = c.Write([]byte("HTTP/1.1 200 OK\r\nX-Pad: "))
		pad := bytes.Repeat([]byte("a"), 64<<10)
		for range 128 {
			if _, err := c.Write(pad); err != nil {
				return
			}
		}
	})
	// A status line with terminal escapes (clear screen, retitle the window).
	escapes := rawTLSServer(t, func(c net.Conn) {
		_, _ = c.Write([]byte("HTTP/1.1 503 \x1b]0;title\x07\x1b[2JOK verified\u202e\r\nContent-Length: 0\r\n\r\n"))
	})
	tests := []struct {
		name    string
		url     string
		cfg     attestation.RemoteConfig
		want    error  // sentinel, if any
		wantMsg string // substring, if any
	}{
		{name: "replayed document", url: replay, want: attestation.ErrNonceMismatch},
		{name: "HTTP error", url: unavailable, wantMsg: "503 Service Unavailable: enclave not ready"},
		{name: "oversized body", url: huge, wantMsg: "larger than"},
		{name: "oversized head", url: hugeHead, wantMsg: "response head larger than"},
		{name: "control characters in status", url: escapes, wantMsg: `"503 \x1b]0;title\a\x1b[2JOK verified\u202e"`},
		{name: "http scheme", url: "http://127.0.0.1:1", wantMsg: "scheme must be https"},
		{name: "no host", url: "https://", wantMsg: "no host"},
		{name: "user info", url: "https://u:p@127.0.0.1:1", wantMsg: "user info"},
		{name: "nonce size", url: replay, cfg: attestation.RemoteConfig{Options: attestation.Options{Nonce: []byte{1}}}, want: attestation.ErrInvalidOptions},
		{name: "cert hash preset", url: replay, cfg: attestation.RemoteConfig{Options: attestation.Options{TLSCertHash: make([]byte, 32)}}, want: attestation.ErrInvalidOptions},
		{name: "no time", url: replay, cfg: attestation.RemoteConfig{Options: attestation.Options{Time: time.Time{}}}, want: attestation.ErrTimeRequired},
		{name: "connection refused", url: "https://" + closedAddr(t), wantMsg: "refused"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := tt.cfg
			if cfg.Options.Time.IsZero() && tt.want != attestation.ErrTimeRequired {
				cfg.Options.Time = time.Now()
			}
			cfg.Options.Roots = dev.Roots()
			cfg.TLSConfig = insecureTLS
			_, err := attestation.VerifyRemote(context.Background(), tt.url, cfg)
			if err == nil {
				t.Fatal("VerifyRemote succeeded")
			}
			if tt.want != nil && !errors.Is(err, tt.want) {
				t.Errorf("err = %v, want %v", err, tt.want)
			}
			if !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("err = %q, want it to contain %q", err, tt.wantMsg)
			}
			if strings.ContainsAny(err.Error(), "\x1b\x07\u202e") {
				t.Errorf("err = %q: control characters from the server", err)
			}
		})
	}
}

// rawTLSServer accepts TLS connections, reads each request head and hands the
// connection to respond, which writes whatever it likes.
func rawTLSServer(t *testing.T, respond func(net.Conn)) string {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{selfSigned(t)}})
	if err != nil {
		t.Fatal(err)
	}
	testutil.ServeConnsWait(t, ln, func(c net.Conn) {
		if _, err := http.ReadRequest(bufio.NewReader(c)); err == nil {
			respond(c)
		}
	})
	return "https://" + ln.Addr().String()
}

// TestVerifyRemoteTimeout: without a deadline on ctx, RemoteConfig.Timeout
// still bounds a server that never answers.
func TestVerifyRemoteTimeout(t *testing.T) {
	url := rawTLSServer(t, func(c net.Conn) { _, _ = io.Copy(io.Discard, c) })
	start := time.Now()
	_, err := attestation.VerifyRemote(context.Background(), url, attestation.RemoteConfig{
		Options: attestation.Options{Time: time.Now()}, TLSConfig: insecureTLS, Timeout: 200 * time.Millisecond,
	})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want context.DeadlineExceeded", err)
	}
	if msg := err.Error(); strings.Contains(msg, "\n") || !strings.Contains(msg, "RemoteConfig.Timeout (200ms)") {
		t.Errorf("err = %q: want one line naming RemoteConfig.Timeout", msg)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("VerifyRemote returned after %s", d)
	}
}

// TestVerifyRemoteContext: a server that accepts and never answers does not
// hold VerifyRemote past its context.
func TestVerifyRemoteContext(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	testutil.Hold(t, ln, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err = attestation.VerifyRemote(ctx, "https://"+ln.Addr().String(), attestation.RemoteConfig{
		Options: attestation.Options{Time: time.Now()}, TLSConfig: insecureTLS,
	})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want context.DeadlineExceeded", err)
	}
	if msg := err.Error(); strings.Contains(msg, "\n") {
		t.Errorf("err = %q: want one line", msg)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("VerifyRemote returned after %s", d)
	}
}
