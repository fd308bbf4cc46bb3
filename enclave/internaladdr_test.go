package enclave_test

import (
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/quenchnet/quench/enclave"
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
