package attestation_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/quenchnet/quench/attestation"
	"github.com/quenchnet/quench/attestation/attestationtest"
)

// bodyServer answers every request with body, over TLS.
func bodyServer(t *testing.T, body string) *httptest.Server {
	t.Helper()
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte(body))
	}))
	t.Cleanup(srv.Close)
	return srv
}

func TestVerifyRemoteConfig(t *testing.T) {
	dev := attestationtest.NewDevAttester(t, attestation.DevConfig{})
	config := []byte(`{"network":"tap","egress":["kms.us-east-1.amazonaws.com:443"]}`)
	srv := attestationtest.NewConfigServer(t, dev, config, nil)
	cfg := attestation.RemoteConfig{
		Options:   attestation.Options{Time: time.Now(), Roots: dev.Roots(), MaxAge: time.Minute},
		TLSConfig: insecureTLS,
	}
	for _, u := range []string{srv.URL, srv.URL + "/", srv.URL + attestation.ConfigPath} {
		res, got, err := attestation.VerifyRemoteConfig(context.Background(), u, cfg)
		if err != nil {
			t.Fatalf("VerifyRemoteConfig(%s): %v", u, err)
		}
		if string(got) != string(config) {
			t.Errorf("config %s, want %s", got, config)
		}
		for _, c := range []attestation.Check{attestation.CheckNonce, attestation.CheckTLSCertHash, attestation.CheckPublicKey, attestation.CheckMaxAge} {
			if !slices.Contains(res.Checks, c) {
				t.Errorf("check %s did not run: %v", c, res.Checks)
			}
		}
	}

	bad := cfg
	bad.Options.PublicKey = []byte{1}
	if _, _, err := attestation.VerifyRemoteConfig(context.Background(), srv.URL, bad); !errors.Is(err, attestation.ErrInvalidOptions) {
		t.Errorf("with Options.PublicKey set: %v, want ErrInvalidOptions", err)
	}
}

// TestVerifyRemoteConfigFailures: a configuration that is not the one the
// document binds, answers that are not a configuration response, and an
// oversized body are refused; nothing but verified bytes is returned.
func TestVerifyRemoteConfigFailures(t *testing.T) {
	dev := attestationtest.NewDevAttester(t, attestation.DevConfig{})
	config := []byte(`{"egress":["kms.us-east-1.amazonaws.com:443"]}`)
	cfg := attestation.RemoteConfig{
		Options:   attestation.Options{Time: time.Now(), Roots: dev.Roots()},
		TLSConfig: insecureTLS,
	}
	for _, tc := range []struct {
		name string
		srv  *httptest.Server
		want error
		text string
	}{
		{"config swapped by a relay", attestationtest.NewConfigServer(t, dev, []byte(`{"egress":null}`), config), attestation.ErrPublicKeyMismatch, "public key mismatch"},
		{"attestation document only", bodyServer(t, "bm90IGEgZG9j"), attestation.ErrBadDocument, "not JSON"},
		{"no attestation", bodyServer(t, `{"config":{"egress":null}}`), attestation.ErrBadDocument, "was a nonce sent"},
		{"attestation not base64", bodyServer(t, `{"config":{},"attestation":"!!"}`), attestation.ErrBadDocument, ""},
		{"too large", bodyServer(t, `{"config":"`+strings.Repeat("a", 1<<20)+`"}`), nil, "larger than"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res, got, err := attestation.VerifyRemoteConfig(context.Background(), tc.srv.URL, cfg)
			if err == nil || res != nil || got != nil {
				t.Fatalf("verified: %v, %s, %v", res, got, err)
			}
			if tc.want != nil && !errors.Is(err, tc.want) {
				t.Errorf("error %v, want %v", err, tc.want)
			}
			if !strings.Contains(err.Error(), tc.text) {
				t.Errorf("error %q does not say %q", err, tc.text)
			}
		})
	}
}

// TestVerifyPublicKey: Options.PublicKey is compared byte for byte and
// must not be empty.
func TestVerifyPublicKey(t *testing.T) {
	dev := attestationtest.NewDevAttester(t, attestation.DevConfig{})
	key := []byte("the key")
	doc, err := dev.Attest(context.Background(), attestation.Request{PublicKey: key})
	if err != nil {
		t.Fatal(err)
	}
	opts := attestation.Options{Time: time.Now(), Roots: dev.Roots(), PublicKey: key}
	if res, err := attestation.Verify(doc, opts); err != nil || !slices.Contains(res.Checks, attestation.CheckPublicKey) {
		t.Fatalf("Verify: %v", err)
	}
	opts.PublicKey = []byte("another key")
	if _, err := attestation.Verify(doc, opts); !errors.Is(err, attestation.ErrPublicKeyMismatch) {
		t.Errorf("another key: %v", err)
	}
	opts.PublicKey = []byte{}
	if _, err := attestation.Verify(doc, opts); !errors.Is(err, attestation.ErrInvalidOptions) {
		t.Errorf("empty key: %v", err)
	}
	doc, _ = dev.Attest(context.Background(), attestation.Request{})
	opts.PublicKey = key
	if _, err := attestation.Verify(doc, opts); !errors.Is(err, attestation.ErrPublicKeyMismatch) {
		t.Errorf("document without a key: %v", err)
	}
}
