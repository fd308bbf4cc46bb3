package proxy

import (
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/quenchnet/quench/internal/testutil"
)

// h2Raw sends one HTTP/2 request with the given header fields (in order,
// pseudo-headers included) to the TLS front at addr and returns the
// response status (or error string).
func h2Raw(t *testing.T, addr string, fields [][2]string, data []byte) string {
	t.Helper()
	f, err := testutil.H2First(t, addr, fields, data, 5*time.Second)
	switch {
	case err != nil:
		return "error: " + err.Error()
	case f.Kind == "HEADERS":
		return f.Fields[":status"]
	case f.Kind == "RST_STREAM":
		return "rst: " + f.ErrCode
	case f.Kind == "GOAWAY":
		return "goaway: " + f.ErrCode
	}
	return "unexpected " + f.String()
}

func startH2Front(t *testing.T, p *Proxy) string {
	t.Helper()
	srv := NewServer(p, ServerConfig{TLSConfig: testServerTLS(t)})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.ServeTLS(ln, "", "") }()
	t.Cleanup(func() { _ = srv.Close(); <-done })
	return ln.Addr().String()
}

// TestH2PseudoHeadersRefused: over HTTP/2 (NewServer, the Proxy as
// handler) net/http's server lets :method, :path and :authority carry
// spaces (tabs get RST_STREAM), and :path a fragment. The proxy wrote
// r.Method, r.RequestURI and r.Host verbatim into the HTTP/1.1 request
// line and Host field, so the upstream got a request line with extra words
// ("GET /public HTTP/1.0 HTTP/1.1") and an invalid Host. Such requests are
// now refused with 400 and nothing goes upstream; a clean one still does.
func TestH2PseudoHeadersRefused(t *testing.T) {
	up := newRawUp(t, func(r *http.Request) []string {
		return []string{"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"}
	})
	p, err := New(up.url(), Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	addr := startH2Front(t, p)
	req := func(method, authority, path string) [][2]string {
		return [][2]string{{":method", method}, {":scheme", "https"}, {":authority", authority}, {":path", path}}
	}
	for _, c := range [][][2]string{
		req("GET", "app", "/public HTTP/1.0"),
		req("GET /admin", "app", "/public"),
		req("GET", "app x", "/public"),
		req("GET", "app", "/x#frag"),
	} {
		before := len(up.received())
		if st := h2Raw(t, addr, c, nil); st != "400" {
			t.Errorf("h2 request %v: status %s, want 400", c, st)
		}
		time.Sleep(50 * time.Millisecond)
		if got := up.received()[before:]; got != "" {
			line, _, _ := strings.Cut(got, "\r\n")
			t.Errorf("h2 request %v went upstream as %q", c, line)
		}
	}
	before := len(up.received())
	if st := h2Raw(t, addr, req("GET", "app", "/ok?q=1"), nil); st != "200" {
		t.Fatalf("clean h2 request: status %s", st)
	}
	for deadline := time.Now().Add(2 * time.Second); !strings.Contains(up.received()[before:], "\r\n\r\n"); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("clean h2 request never reached the upstream")
		}
	}
	if line, _, _ := strings.Cut(up.received()[before:], "\r\n"); line != "GET /ok?q=1 HTTP/1.1" {
		t.Errorf("clean h2 request went upstream as %q", line)
	}
}
