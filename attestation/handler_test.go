package attestation_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/quenchnet/quench/attestation"
	"github.com/quenchnet/quench/attestation/attestationtest"
)

type failingAttester struct{ err error }

func (f failingAttester) Attest(context.Context, attestation.Request) ([]byte, error) {
	return nil, f.err
}

func TestHandler(t *testing.T) {
	dev := attestationtest.NewDevAttester(t, attestation.DevConfig{})
	certHash := [32]byte{9, 9, 9}
	ud := attestation.UserData{TLSCertHash: certHash}.Marshal()
	nonceHex := strings.Repeat("ab", attestation.NonceSize)
	tests := []struct {
		name       string
		method     string
		target     string
		cfg        attestation.HandlerConfig
		wantStatus int
		wantBody   string // substring
		wantLog    string // substring
	}{
		{name: "ok", method: "GET", target: "/enclave/attestation?nonce=" + nonceHex, wantStatus: 200},
		{name: "ok upper case", method: "GET", target: "/enclave/attestation?nonce=" + strings.ToUpper(nonceHex), wantStatus: 200},
		{name: "HEAD", method: "HEAD", target: "/enclave/attestation?nonce=" + nonceHex, wantStatus: 200},
		{name: "no nonce", method: "GET", target: "/enclave/attestation", wantStatus: 400, wantBody: "missing nonce"},
		{name: "short nonce", method: "GET", target: "/enclave/attestation?nonce=abcd", wantStatus: 400, wantBody: "4 characters, want 40 hex digits"},
		{name: "long nonce", method: "GET", target: "/enclave/attestation?nonce=" + nonceHex + "00", wantStatus: 400, wantBody: "bad nonce"},
		{name: "not hex", method: "GET", target: "/enclave/attestation?nonce=" + strings.Repeat("zz", 20), wantStatus: 400, wantBody: "want 40 hex digits"},
		{name: "POST", method: "POST", target: "/enclave/attestation?nonce=" + nonceHex, wantStatus: 405},
		{name: "attester fails", method: "GET", target: "/enclave/attestation?nonce=" + nonceHex,
			cfg:        attestation.HandlerConfig{Attester: failingAttester{errors.New("nsm on fire")}},
			wantStatus: 500, wantBody: "failed to obtain attestation document", wantLog: "nsm on fire"},
		{name: "user data fails", method: "GET", target: "/enclave/attestation?nonce=" + nonceHex,
			cfg: attestation.HandlerConfig{Attester: dev, UserData: func() ([]byte, error) {
				return nil, errors.New("no certificate yet")
			}},
			wantStatus: 500, wantLog: "no certificate yet"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var logs bytes.Buffer
			cfg := tt.cfg
			if cfg.Attester == nil {
				cfg = attestation.HandlerConfig{
					Attester:  dev,
					UserData:  func() ([]byte, error) { return ud, nil },
					PublicKey: func() ([]byte, error) { return []byte("pk"), nil },
				}
			}
			cfg.Logger = slog.New(slog.NewTextHandler(&logs, nil))
			h, err := attestation.NewHandler(cfg)
			if err != nil {
				t.Fatal(err)
			}
			rec := httptest.NewRecorder()
			h(rec, httptest.NewRequest(tt.method, tt.target, nil))
			res := rec.Result()
			body := rec.Body.String()
			if res.StatusCode != tt.wantStatus {
				t.Fatalf("status = %d (%q), want %d", res.StatusCode, body, tt.wantStatus)
			}
			if !strings.Contains(body, tt.wantBody) {
				t.Errorf("body = %q, want it to contain %q", body, tt.wantBody)
			}
			if tt.wantLog != "" && !strings.Contains(logs.String(), tt.wantLog) {
				t.Errorf("log = %q, want it to contain %q", logs.String(), tt.wantLog)
			}
			if cc := res.Header.Get("Cache-Control"); cc != "no-store" {
				t.Errorf("Cache-Control = %q", cc)
			}
			if tt.wantStatus == 405 && res.Header.Get("Allow") == "" {
				t.Error("405 without Allow")
			}
			if tt.wantStatus != 200 || tt.method != "GET" {
				return
			}
			if !strings.HasSuffix(body, "\n") {
				t.Error("body does not end with a newline")
			}
			doc, err := base64.StdEncoding.DecodeString(strings.TrimSuffix(body, "\n"))
			if err != nil {
				t.Fatalf("body is not standard base64: %v", err)
			}
			nonce, _ := hex.DecodeString(nonceHex)
			r, err := attestation.Verify(doc, attestation.Options{Time: time.Now(), Roots: dev.Roots(), Nonce: nonce, TLSCertHash: certHash[:]})
			if err != nil {
				t.Fatal(err)
			}
			if string(r.PublicKey) != "pk" {
				t.Errorf("public key = %q", r.PublicKey)
			}
		})
	}
}

func TestNewHandlerNeedsAttester(t *testing.T) {
	if _, err := attestation.NewHandler(attestation.HandlerConfig{}); err == nil {
		t.Fatal("NewHandler without an attester succeeded")
	}
}

func TestHandlerOnChi(t *testing.T) {
	dev := attestationtest.NewDevAttester(t, attestation.DevConfig{})
	h, err := attestation.NewHandler(attestation.HandlerConfig{Attester: dev})
	if err != nil {
		t.Fatal(err)
	}
	r := chi.NewRouter()
	r.Get(attestation.Path, h)
	rec := httptest.NewRecorder()
	r.ServeHTTP(rec, httptest.NewRequest("GET", attestation.Path+"?nonce="+strings.Repeat("01", 20), nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("status %d: %s", rec.Code, rec.Body)
	}
	doc, err := attestation.DecodeDocument(rec.Body.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := attestation.Verify(doc, attestation.Options{Time: time.Now(), Roots: dev.Roots(), Nonce: bytes.Repeat([]byte{1}, 20)}); err != nil {
		t.Fatal(err)
	}
}

func TestParseNonce(t *testing.T) {
	good := strings.Repeat("0f", 20)
	if b, err := attestation.ParseNonce(good); err != nil || len(b) != 20 || b[0] != 0x0f {
		t.Fatalf("ParseNonce(%q) = %x, %v", good, b, err)
	}
	for _, s := range []string{"", "0f", good + "0", good[:39] + "g", " " + good[1:]} {
		if _, err := attestation.ParseNonce(s); err == nil {
			t.Errorf("ParseNonce(%q) succeeded", s)
		}
	}
}
