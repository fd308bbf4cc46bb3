package enclave_test

import (
	"crypto/sha256"
	"encoding/base64"
	"io"
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

// TestNitridingHandlerCases replays nitriding-daemon's own handler tests
// (handlers_test.go TestHashHandler, TestAttestationHandler,
// TestGetStateHandler/TestPutStateHandler's "sync disabled" cases, and
// util.go getNonceFromReq: hex of either case, exactly 20 bytes) against
// quench's servers: the status codes a nitriding app or client sees.
func TestNitridingHandlerCases(t *testing.T) {
	env := svStart(t, nil)
	c := svClient(t)
	valid := base64.StdEncoding.EncodeToString(make([]byte, sha256.Size))
	do := func(cl *http.Client, method, u, body string) (int, string) {
		t.Helper()
		req, err := http.NewRequest(method, u, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp, err := cl.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	for _, tc := range []struct {
		name, method, path, body string
		want                     int
	}{
		{"hash: not base64", http.MethodPost, enclave.HashPath, "foo", http.StatusBadRequest},
		{"hash: wrong size", http.MethodPost, enclave.HashPath, "AAAAAAAAAAAAAA==", http.StatusBadRequest},
		{"hash: valid", http.MethodPost, enclave.HashPath, valid, http.StatusOK},
		{"hash: valid with newline", http.MethodPost, enclave.HashPath, valid + "\n", http.StatusOK},
		{"hash: GET", http.MethodGet, enclave.HashPath, "", http.StatusMethodNotAllowed},
		{"state GET, sync off", http.MethodGet, enclave.StatePath, "", http.StatusForbidden},
		{"state PUT, sync off", http.MethodPut, enclave.StatePath, "appKeys", http.StatusForbidden},
		{"ready", http.MethodGet, enclave.ReadyPath, "", http.StatusOK},
	} {
		if got, body := do(http.DefaultClient, tc.method, env.intBase+tc.path, tc.body); got != tc.want {
			t.Errorf("internal %s: %d %q, want %d", tc.name, got, body, tc.want)
		}
	}
	for _, tc := range []struct {
		name, method, query string
		want                int
	}{
		{"POST", http.MethodPost, "?nonce=" + strings.Repeat("00", 20), http.StatusMethodNotAllowed},
		{"no nonce", http.MethodGet, "", http.StatusBadRequest},
		{"foobar", http.MethodGet, "?nonce=foobar", http.StatusBadRequest},
		{"21 bytes", http.MethodGet, "?nonce=" + strings.Repeat("00", 21), http.StatusBadRequest},
		{"19 bytes", http.MethodGet, "?nonce=" + strings.Repeat("00", 19), http.StatusBadRequest},
		{"zeros", http.MethodGet, "?nonce=" + strings.Repeat("00", 20), http.StatusOK},
		{"upper case", http.MethodGet, "?nonce=" + strings.Repeat("AB", 20), http.StatusOK},
	} {
		got, body := do(c, tc.method, env.public+enclave.AttestationPath+tc.query, "")
		if got != tc.want {
			t.Errorf("attestation %s: %d %q, want %d", tc.name, got, body, tc.want)
			continue
		}
		if got == http.StatusOK {
			// fmt.Fprintln(w, b64Doc): standard base64 and a newline.
			if !strings.HasSuffix(body, "\n") {
				t.Errorf("attestation %s: no trailing newline", tc.name)
			}
			if _, err := base64.StdEncoding.DecodeString(strings.TrimSuffix(body, "\n")); err != nil {
				t.Errorf("attestation %s: %v", tc.name, err)
			}
		}
	}
	if got, body := do(c, http.MethodGet, env.public+enclave.IndexPath, ""); got != http.StatusOK || !strings.HasPrefix(body, "This host runs inside an AWS Nitro Enclave") {
		t.Errorf("index: %d %q", got, body)
	}
}

// TestNoApp: serving without an app (quench-enclave -fqdn without -app-url,
// as nitriding-daemon without -appwebsrv) shows "none" as the app in
// /enclave/config, not "in-process", and answers other paths 404.
func TestNoApp(t *testing.T) {
	env := svStart(t, func(c *enclave.Config) { c.Handler = enclave.NoApp; c.AppURL = nil })
	c := svClient(t)
	code, body := svGet(t, c, env.public+enclave.ConfigPath)
	if code != http.StatusOK || !strings.Contains(body, `"app":"none"`) {
		t.Errorf("config: %d %q", code, body)
	}
	if code, body := svGet(t, c, env.public+"/x"); code != http.StatusNotFound || !strings.Contains(body, "no app") {
		t.Errorf("/x: %d %q", code, body)
	}
}
