package enclave_test

import (
	"net/http"
	"strings"
	"testing"
)

// TestReservedEnclavePathsSayWhy: nitriding-daemon routes the paths under
// /enclave/ it does not serve to the app (enclave.go: the proxy is the
// router's "/*" catch-all); quench-enclave keeps /enclave/ for its own
// endpoints. An app moved over that serves a path there must be told why it
// gets 404, not left with net/http's bare "404 page not found".
func TestReservedEnclavePathsSayWhy(t *testing.T) {
	env := svStart(t, nil)
	c := svClient(t)
	for _, p := range []string{"/enclave/nope", "/enclave/app/route"} {
		code, body := svGet(t, c, env.public+p)
		if code != http.StatusNotFound {
			t.Errorf("%s: %d, want 404", p, code)
		}
		if !strings.Contains(body, "not passed to the app") || !strings.Contains(body, "nitriding") {
			t.Errorf("%s: body %q does not say why", p, body)
		}
	}
}
