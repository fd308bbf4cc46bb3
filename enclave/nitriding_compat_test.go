package enclave_test

import (
	"net/http"
	"strings"
	"testing"

	"github.com/quenchnet/quench/enclave"
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

// TestIndexShowsSourceURL: with the annotation source_url (quench-enclave
// -appurl, nitriding-daemon's flag), the index page names the code as
// nitriding's does (handlers.go formatIndexPage: "It runs the following
// code: URL").
func TestIndexShowsSourceURL(t *testing.T) {
	env := svStart(t, func(c *enclave.Config) {
		c.Annotations = map[string]string{enclave.AnnotationSourceURL: "https://github.com/foo/bar"}
	})
	code, body := svGet(t, svClient(t), env.public+enclave.IndexPath)
	if code != http.StatusOK || !strings.Contains(body, "This host runs inside an AWS Nitro Enclave") ||
		!strings.Contains(body, "It runs the following code: https://github.com/foo/bar") {
		t.Errorf("index: %d %q", code, body)
	}
}
