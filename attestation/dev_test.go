package attestation_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/hf/nitrite"

	"github.com/quenchnet/quench/attestation"
	"github.com/quenchnet/quench/attestation/attestationtest"
)

func pcr(b byte) []byte { return bytes.Repeat([]byte{b}, 48) }

func TestDevAttesterDocumentsVerify(t *testing.T) {
	now := time.Date(2030, 1, 2, 3, 4, 5, 6e6, time.UTC)
	var logs bytes.Buffer
	dev, err := attestation.NewDevAttester(attestation.DevConfig{
		ModuleID: "i-0123456789abcdef0-enc0123456789abcdef",
		PCRs:     map[uint][]byte{0: pcr(0xa0), 1: pcr(0xa1), 2: pcr(0xa2), 20: pcr(0x20)},
		Now:      func() time.Time { return now },
		Logger:   slog.New(slog.NewTextHandler(&logs, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logs.String(), "level=WARN") || !strings.Contains(logs.String(), "INSECURE") {
		t.Errorf("no loud warning logged: %q", logs.String())
	}
	ud := attestation.UserData{TLSCertHash: [32]byte{1, 2, 3}, AppKeyHash: [32]byte{4, 5, 6}}.Marshal()
	req := attestation.Request{Nonce: []byte("nonce-0123456789abcd"), UserData: ud, PublicKey: []byte("public key")}
	doc, err := dev.Attest(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}

	// nitrite itself accepts it with the development root.
	nres, err := nitrite.Verify(doc, nitrite.VerifyOptions{Roots: dev.Roots(), CurrentTime: now})
	if err != nil || !nres.SignatureOK {
		t.Fatalf("nitrite.Verify with the dev root: %v (signature ok %v)", err, nres != nil && nres.SignatureOK)
	}

	res, err := attestation.Verify(doc, attestation.Options{
		Time:        now.Add(time.Second),
		Roots:       dev.Roots(),
		PCRs:        map[uint][]byte{0: pcr(0xa0), 2: pcr(0xa2), 3: zeros(48), 15: zeros(48), 20: pcr(0x20)},
		Nonce:       req.Nonce,
		MaxAge:      time.Minute,
		TLSCertHash: []byte{},
	})
	if !errors.Is(err, attestation.ErrInvalidOptions) {
		t.Fatalf("zero-length TLSCertHash: %v, want ErrInvalidOptions", err)
	}
	tlsHash := [32]byte{1, 2, 3}
	appHash := [32]byte{4, 5, 6}
	res, err = attestation.Verify(doc, attestation.Options{
		Time:        now.Add(time.Second),
		Roots:       dev.Roots(),
		PCRs:        map[uint][]byte{0: pcr(0xa0), 2: pcr(0xa2), 3: zeros(48), 15: zeros(48), 20: pcr(0x20)},
		Nonce:       req.Nonce,
		MaxAge:      time.Minute,
		TLSCertHash: tlsHash[:],
		AppKeyHash:  appHash[:],
		UserData:    ud,
	})
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	wantPCRs := map[uint][]byte{0: pcr(0xa0), 1: pcr(0xa1), 2: pcr(0xa2), 20: pcr(0x20)}
	for i := uint(3); i < 16; i++ {
		wantPCRs[i] = zeros(48)
	}
	type fields struct {
		ModuleID            string
		Timestamp           time.Time
		Digest              string
		PCRs                map[uint][]byte
		PublicKey, UserData []byte
		Nonce               []byte
		Bundle              int
		Checks              []attestation.Check
	}
	got := fields{res.ModuleID, res.Timestamp.UTC(), res.Digest, res.PCRs, res.PublicKey, res.UserData, res.Nonce, len(res.CABundle), res.Checks}
	want := fields{"i-0123456789abcdef0-enc0123456789abcdef", now.Truncate(time.Millisecond), "SHA384", wantPCRs,
		req.PublicKey, ud, req.Nonce, 2, []attestation.Check{attestation.CheckSignature, attestation.CheckChain, attestation.CheckPCRs,
			attestation.CheckNonce, attestation.CheckMaxAge, attestation.CheckUserData, attestation.CheckTLSCertHash, attestation.CheckAppKeyHash}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("result mismatch (-want +got):\n%s", diff)
	}
	if err := res.Certificate.CheckSignatureFrom(res.CABundle[1]); err != nil || res.Certificate.IsCA {
		t.Errorf("leaf not signed by the intermediate (%v) or is a CA", err)
	}
	if err := res.CABundle[1].CheckSignatureFrom(res.CABundle[0]); err != nil || !res.CABundle[0].IsCA {
		t.Errorf("intermediate not signed by the root: %v", err)
	}
}

// TestDevDocumentsNeverVerifyWithAWSRoot: the default roots (AWS) and an
// explicit AWS pool both reject development documents, whatever the time.
func TestDevDocumentsNeverVerifyWithAWSRoot(t *testing.T) {
	dev := attestationtest.NewDevAttester(t, attestation.DevConfig{})
	doc, err := dev.Attest(context.Background(), attestation.Request{Nonce: []byte("n")})
	if err != nil {
		t.Fatal(err)
	}
	for _, at := range []time.Time{time.Now(), realDocTime, time.Now().Add(100 * 24 * time.Hour)} {
		for name, roots := range map[string]*attestation.Options{
			"default": {Time: at},
			"aws":     {Time: at, Roots: attestation.AWSNitroRoots()},
		} {
			if _, err := attestation.Verify(doc, *roots); !errors.Is(err, attestation.ErrUntrustedChain) {
				t.Errorf("%s roots at %s: %v, want ErrUntrustedChain", name, at, err)
			}
		}
	}
	// Another development attester's root does not do either.
	other := attestationtest.NewDevAttester(t, attestation.DevConfig{})
	if _, err := attestation.Verify(doc, attestation.Options{Time: time.Now(), Roots: other.Roots()}); !errors.Is(err, attestation.ErrUntrustedChain) {
		t.Errorf("other dev root: %v, want ErrUntrustedChain", err)
	}
	// But its own does.
	if _, err := attestation.Verify(doc, attestation.Options{Time: time.Now(), Roots: dev.Roots()}); err != nil {
		t.Errorf("own root: %v", err)
	}
}

func TestDevAttesterValidity(t *testing.T) {
	start := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	dev := attestationtest.NewDevAttester(t, attestation.DevConfig{Now: func() time.Time { return start }, Validity: 48 * time.Hour})
	doc, err := dev.Attest(context.Background(), attestation.Request{})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		at   time.Time
		want error
	}{
		{start.Add(-59 * time.Minute), nil}, // NotBefore is one hour early, for skew
		{start.Add(47 * time.Hour), nil},
		{start.Add(-2 * time.Hour), attestation.ErrUntrustedChain},
		{start.Add(49 * time.Hour), attestation.ErrUntrustedChain},
	}
	for _, tt := range tests {
		_, err := attestation.Verify(doc, attestation.Options{Time: tt.at, Roots: dev.Roots()})
		if !errors.Is(err, tt.want) {
			t.Errorf("at %s: %v, want %v", tt.at, err, tt.want)
		}
	}
}

func TestDevAttesterMaxAge(t *testing.T) {
	stamp := time.Date(2030, 1, 1, 12, 0, 0, 0, time.UTC)
	dev := attestationtest.NewDevAttester(t, attestation.DevConfig{Now: func() time.Time { return stamp }})
	doc, err := dev.Attest(context.Background(), attestation.Request{})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		at   time.Time
		want error
	}{
		{"fresh", stamp.Add(30 * time.Second), nil},
		{"exactly max age", stamp.Add(time.Minute), nil},
		{"stale", stamp.Add(time.Minute + time.Millisecond), attestation.ErrTooOld},
		{"slightly in the future", stamp.Add(-30 * time.Second), nil},
		{"far in the future", stamp.Add(-2 * time.Minute), attestation.ErrTooOld},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := attestation.Verify(doc, attestation.Options{Time: tt.at, Roots: dev.Roots(), MaxAge: time.Minute})
			if !errors.Is(err, tt.want) {
				t.Fatalf("Verify = %v, want %v", err, tt.want)
			}
		})
	}
}

func TestDevAttesterConfigErrors(t *testing.T) {
	tests := []struct {
		name string
		cfg  attestation.DevConfig
	}{
		{"PCR index", attestation.DevConfig{PCRs: map[uint][]byte{32: pcr(1)}}},
		{"PCR length", attestation.DevConfig{PCRs: map[uint][]byte{0: zeros(32)}}},
		{"negative validity", attestation.DevConfig{Validity: -time.Hour}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := attestation.NewDevAttester(tt.cfg); err == nil || !strings.HasPrefix(err.Error(), "attestation: ") {
				t.Fatalf("NewDevAttester = %v, want a prefixed error", err)
			}
		})
	}
}

func TestAttestRequestLimits(t *testing.T) {
	dev := attestationtest.NewDevAttester(t, attestation.DevConfig{})
	nsm, err := attestation.NewNSMAttester(attestation.NSMConfig{Session: attestationtest.NewFakeNSM(dev)})
	if err != nil {
		t.Fatal(err)
	}
	defer nsm.Close()
	tests := []struct {
		name string
		req  attestation.Request
		ok   bool
	}{
		{"all at limits", attestation.Request{Nonce: zeros(attestation.MaxNonceSize), UserData: zeros(attestation.MaxUserDataSize), PublicKey: zeros(attestation.MaxPublicKeySize)}, true},
		{"nonce", attestation.Request{Nonce: zeros(attestation.MaxNonceSize + 1)}, false},
		{"user data", attestation.Request{UserData: zeros(attestation.MaxUserDataSize + 1)}, false},
		{"public key", attestation.Request{PublicKey: zeros(attestation.MaxPublicKeySize + 1)}, false},
	}
	for _, tt := range tests {
		for name, a := range map[string]attestation.Attester{"dev": dev, "nsm": nsm} {
			t.Run(name+"/"+tt.name, func(t *testing.T) {
				doc, err := a.Attest(context.Background(), tt.req)
				if tt.ok {
					if err != nil {
						t.Fatal(err)
					}
					if _, err := attestation.Verify(doc, attestation.Options{Time: time.Now(), Roots: dev.Roots(), Nonce: tt.req.Nonce}); err != nil {
						t.Fatal(err)
					}
					return
				}
				if !errors.Is(err, attestation.ErrBadRequest) {
					t.Fatalf("Attest = %v, want ErrBadRequest", err)
				}
			})
		}
	}
}

func TestDevAttesterWriteRootPEM(t *testing.T) {
	var logs bytes.Buffer
	dev, err := attestation.NewDevAttester(attestation.DevConfig{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "dev-root.pem")
	if err := dev.WriteRootPEM(path); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logs.String(), path) {
		t.Errorf("writing the root was not logged: %q", logs.String())
	}
	b, _ := os.ReadFile(path)
	if !bytes.Equal(b, dev.RootPEM()) {
		t.Fatal("file differs from RootPEM")
	}
	roots, err := attestation.LoadRoots(path)
	if err != nil {
		t.Fatal(err)
	}
	doc, err := dev.Attest(context.Background(), attestation.Request{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := attestation.Verify(doc, attestation.Options{Time: time.Now(), Roots: roots}); err != nil {
		t.Fatal(err)
	}
	if err := dev.WriteRootPEM(filepath.Join(t.TempDir(), "missing", "dir", "root.pem")); err == nil {
		t.Error("WriteRootPEM into a missing directory succeeded")
	}
}

// TestDevAttesterConcurrent runs Attest from several goroutines (for -race)
// and checks every document verifies with its own nonce.
func TestDevAttesterConcurrent(t *testing.T) {
	dev := attestationtest.NewDevAttester(t, attestation.DevConfig{})
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := range 8 {
		wg.Go(func() {
			nonce := []byte{byte(i)}
			doc, err := dev.Attest(context.Background(), attestation.Request{Nonce: nonce})
			if err == nil {
				_, err = attestation.Verify(doc, attestation.Options{Time: time.Now(), Roots: dev.Roots(), Nonce: nonce})
			}
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
}
