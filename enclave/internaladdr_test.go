package enclave_test

import (
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/quenchnet/quench/enclave"
	"github.com/quenchnet/quench/internal/testutil"
)

// TestInternalAddrMustBeLoopback: the internal server (POST /enclave/hash,
// GET and PUT /enclave/state, pprof) must listen on the enclave's loopback
// only. "-internal-addr :8080" or "0.0.0.0:0" would put it on tap0 in TAP
// mode, where the untrusted host could replace the attested app key hash.
func TestInternalAddrMustBeLoopback(t *testing.T) {
	h := http.NotFoundHandler()
	for _, a := range []string{
		"0.0.0.0:0", ":8080", "[::]:8080", "192.168.127.2:8080", "10.0.0.1:0",
		"localhost:8080", "enclave.example:8080", "[::ffff:0.0.0.0]:8080", "[fe80::1%eth0]:8080",
	} {
		_, err := enclave.New(enclave.Config{Handler: h, InternalAddr: a})
		if err == nil || !strings.Contains(err.Error(), "InternalAddr") || !strings.Contains(err.Error(), "-internal-addr") || !strings.Contains(err.Error(), "loopback") {
			t.Errorf("InternalAddr %q: New: %v, want a refusal naming InternalAddr, -internal-addr and loopback", a, err)
		}
	}
	for _, a := range []string{"127.0.0.1:0", "127.0.0.1:8080", "127.1.2.3:9000", "[::1]:0", "[::ffff:127.0.0.1]:0", "-", ""} {
		if _, err := enclave.New(enclave.Config{Handler: h, InternalAddr: a}); err != nil {
			t.Errorf("InternalAddr %q: %v", a, err)
		}
	}
}

// TestForwardOrAppURLToInternalServer: a Forward (the ingress fast path,
// relayed from the host's VSOCK connections) or AppURL (the public proxy)
// whose target is the internal server would hand the host (or any client)
// POST /enclave/hash: New refuses it, whichever loopback spelling is used.
func TestForwardOrAppURLToInternalServer(t *testing.T) {
	h := http.NotFoundHandler()
	listen := func() (net.Listener, error) { return nil, nil }
	fwd := func(target string) []enclave.Forward { return []enclave.Forward{{Listen: listen, Target: target}} }
	u := func(s string) *url.URL {
		v, err := url.Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	for _, tc := range []struct {
		name string
		cfg  enclave.Config
		want string
	}{
		{"forward default", enclave.Config{Handler: h, Forwards: fwd("127.0.0.1:8080")}, "-forward"},
		{"forward localhost", enclave.Config{Handler: h, Forwards: fwd("localhost:8080")}, "-forward"},
		{"forward unspecified", enclave.Config{Handler: h, Forwards: fwd("0.0.0.0:8080")}, "-forward"},
		{"forward ipv6", enclave.Config{Handler: h, Forwards: fwd("[::1]:8080")}, "-forward"},
		{"forward ipv6 unspecified", enclave.Config{Handler: h, Forwards: fwd("[::]:8080")}, "-forward"},
		{"forward other loopback", enclave.Config{Handler: h, InternalAddr: "127.0.0.1:9000", Forwards: fwd("127.0.0.2:9000")}, "-forward"},
		{"forward to ipv6 listener", enclave.Config{Handler: h, InternalAddr: "[::1]:9000", Forwards: fwd("127.0.0.1:9000")}, "-forward"},
		{"app url", enclave.Config{AppURL: u("http://127.0.0.1:8080")}, "-app-url"},
		{"app url localhost", enclave.Config{AppURL: u("https://LOCALHOST.:8080/x")}, "-app-url"},
		{"app url default port", enclave.Config{InternalAddr: "127.0.0.1:80", AppURL: u("http://localhost")}, "-app-url"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := enclave.New(tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "-internal-addr") {
				t.Errorf("New: %v, want a refusal naming %s and -internal-addr", err, tc.want)
			}
		})
	}
	for _, tc := range []struct {
		name string
		cfg  enclave.Config
	}{
		{"other port", enclave.Config{Handler: h, Forwards: fwd("127.0.0.1:8081")}},
		{"no serving: no internal server", enclave.Config{Forwards: fwd("127.0.0.1:8080")}},
		{"internal server off", enclave.Config{Handler: h, InternalAddr: "-", Forwards: fwd("127.0.0.1:8080")}},
		{"internal port 0", enclave.Config{Handler: h, InternalAddr: "127.0.0.1:0", Forwards: fwd("127.0.0.1:8080")}},
		{"unix", enclave.Config{Handler: h, Forwards: fwd("unix:///run/app.sock")}},
		{"app url other port", enclave.Config{AppURL: u("http://127.0.0.1:8081")}},
	} {
		if _, err := enclave.New(tc.cfg); err != nil {
			t.Errorf("%s: %v", tc.name, err)
		}
	}
}

// loopbackName returns a host name, other than "localhost", that this
// machine resolves to loopback addresses only (its own host name usually
// does, through /etc/hosts), or skips the test.
func loopbackName(t *testing.T) string {
	t.Helper()
	name, err := os.Hostname()
	if err != nil || name == "" || strings.EqualFold(strings.TrimSuffix(name, "."), "localhost") || strings.HasSuffix(strings.ToLower(name), ".localhost") {
		t.Skipf("no host name other than localhost (%q, %v)", name, err)
	}
	addrs, err := net.LookupHost(name)
	if err != nil || len(addrs) == 0 {
		t.Skipf("host name %q does not resolve: %v", name, err)
	}
	for _, a := range addrs {
		if ip, err := netip.ParseAddr(a); err != nil || !ip.IsLoopback() {
			t.Skipf("host name %q resolves to %s, not loopback", name, a)
		}
	}
	return name
}

// TestTargetNameResolvingToInternalServer: New refuses targets that name
// the internal server's port on loopback, but a host name is resolved only
// when dialled, by resolvers the host may answer. A Forward target or
// AppURL whose name resolved to 127.0.0.1 reached the internal server
// (POST /enclave/hash) from the host's connections. The dial refuses it now.
func TestTargetNameResolvingToInternalServer(t *testing.T) {
	name := loopbackName(t)
	port := strconv.Itoa(testutil.FreePort(t))
	internal := "127.0.0.1:" + port
	target := net.JoinHostPort(name, port)

	t.Run("forward", func(t *testing.T) {
		fwSock := filepath.Join(t.TempDir(), "fw.sock")
		env := svStart(t, func(c *enclave.Config) {
			c.InternalAddr = internal
			c.Forwards = []enclave.Forward{{
				Listen: func() (net.Listener, error) { return net.Listen("unix", fwSock) },
				Target: target,
			}}
		})
		c, err := net.Dial("unix", fwSock)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		hdr, err := clientHeader("203.0.113.7:40000").Format()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Write(append(hdr, "GET /enclave/ready HTTP/1.0\r\n\r\n"...)); err != nil {
			t.Fatal(err)
		}
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		got, _ := io.ReadAll(c)
		if len(got) > 0 {
			t.Errorf("a forward to %s (resolving to the internal server %s) answered %q", target, internal, got)
		}
		if st := env.enc.ForwardStats(); len(st) != 1 || st[0].DialErrors != 1 {
			t.Errorf("ForwardStats = %+v, want one dial error", st)
		}
	})
	t.Run("app url", func(t *testing.T) {
		u, err := url.Parse("http://" + target)
		if err != nil {
			t.Fatal(err)
		}
		env := svStart(t, func(c *enclave.Config) {
			c.InternalAddr = internal
			c.Handler = nil
			c.AppURL = u
		})
		code, body := svGet(t, svClient(t), env.public+"/debug/pprof/")
		if code != http.StatusBadGateway {
			t.Errorf("the app proxy to %s (resolving to the internal server %s) answered %d %q, want 502", target, internal, code, body)
		}
	})
}
