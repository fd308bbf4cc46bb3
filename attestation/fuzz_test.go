package attestation_test

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/quenchnet/quench/attestation"
)

// FuzzVerify feeds arbitrary documents to Verify under two policies (the real
// AWS document's and a development document's). Verify must not panic, must
// return exactly one of a result or an error, and every error must match one
// of the documented sentinels. Inputs are capped by MaxDocumentSize inside
// Verify, which bounds memory per input.
func FuzzVerify(f *testing.F) {
	devTime := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	dev, err := attestation.NewDevAttester(attestation.DevConfig{Now: func() time.Time { return devTime }})
	if err != nil {
		f.Fatal(err)
	}
	certHash := [32]byte{1}
	devNonce := bytes.Repeat([]byte{0x5a}, attestation.NonceSize)
	devDoc, err := dev.Attest(context.Background(), attestation.Request{
		Nonce: devNonce, UserData: attestation.UserData{TLSCertHash: certHash}.Marshal(), PublicKey: []byte("pk"),
	})
	if err != nil {
		f.Fatal(err)
	}
	real := loadRealDoc(f)
	f.Add(real)
	f.Add(devDoc)
	f.Add(real[:len(real)/2])
	f.Add(devDoc[:100])
	f.Add([]byte{0x84, 0x44, 0xa1, 0x01, 0x38, 0x22, 0xa0, 0x41, 0xa0, 0x40})

	policies := []attestation.Options{
		{Time: realDocTime, PCRs: map[uint][]byte{4: realPCR4}, Nonce: realNonce, MaxAge: 3 * time.Hour},
		{Time: devTime, Roots: dev.Roots(), Nonce: devNonce, TLSCertHash: certHash[:], AppKeyHash: make([]byte, 32), MaxAge: time.Minute},
	}
	sentinels := []error{
		attestation.ErrBadDocument, attestation.ErrUntrustedChain, attestation.ErrBadSignature,
		attestation.ErrPCRMismatch, attestation.ErrNonceMismatch, attestation.ErrTooOld, attestation.ErrUserDataMismatch,
	}
	f.Fuzz(func(t *testing.T, doc []byte) {
		for _, opts := range policies {
			res, err := attestation.Verify(doc, opts)
			if (res == nil) == (err == nil) {
				t.Fatalf("Verify returned result %v and error %v", res != nil, err)
			}
			if err == nil {
				if res.Certificate == nil || len(res.PCRs) == 0 || res.Digest != "SHA384" {
					t.Fatalf("incomplete result %+v", res)
				}
				continue
			}
			matched := false
			for _, s := range sentinels {
				matched = matched || errors.Is(err, s)
			}
			if !matched {
				t.Fatalf("error matches no sentinel: %v", err)
			}
		}
	})
}

func FuzzDecodeDocument(f *testing.F) {
	real := loadRealDoc(f)
	f.Add(real)
	f.Add(encodeB64(real))
	f.Add([]byte(" \n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		doc, err := attestation.DecodeDocument(in)
		if err != nil {
			if !errors.Is(err, attestation.ErrBadDocument) {
				t.Fatalf("error %v is not ErrBadDocument", err)
			}
			return
		}
		if len(doc) > attestation.MaxDocumentSize || len(doc) == 0 {
			t.Fatalf("decoded %d bytes", len(doc))
		}
	})
}

func FuzzParseUserData(f *testing.F) {
	f.Add(attestation.UserData{TLSCertHash: [32]byte{1}, AppKeyHash: [32]byte{2}}.Marshal())
	f.Add(append([]byte("sha256:"), make([]byte, 72)...))
	f.Add(append([]byte{0x12, 0x20}, make([]byte, 32)...))
	f.Fuzz(func(t *testing.T, in []byte) {
		u, err := attestation.ParseUserData(in)
		if err != nil {
			if !errors.Is(err, attestation.ErrBadUserData) {
				t.Fatalf("error %v is not ErrBadUserData", err)
			}
			return
		}
		if len(in) == attestation.UserDataSize && !bytes.Equal(u.Marshal(), in) {
			t.Fatalf("Marshal(Parse(%x)) = %x", in, u.Marshal())
		}
	})
}

func FuzzParseNonce(f *testing.F) {
	f.Add(strings.Repeat("ab", 20))
	f.Add("")
	f.Add(strings.Repeat("g", 40))
	f.Fuzz(func(t *testing.T, s string) {
		b, err := attestation.ParseNonce(s)
		if err != nil {
			return
		}
		if len(b) != attestation.NonceSize || hex.EncodeToString(b) != strings.ToLower(s) {
			t.Fatalf("ParseNonce(%q) = %x", s, b)
		}
	})
}
