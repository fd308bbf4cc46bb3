package attestation

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fxamacker/cbor/v2"
	"github.com/hf/nitrite"
)

func realDoc(tb testing.TB) []byte {
	tb.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "nitro-attestation-2022-07-12.b64"))
	if err != nil {
		tb.Fatal(err)
	}
	doc, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(b)))
	if err != nil {
		tb.Fatal(err)
	}
	return doc
}

// TestEncodeMatchesNSM decodes the payload of a real NSM document into the
// struct the development attester encodes, re-encodes it, and expects the
// very same bytes: field names, order, types and integer widths match NSM.
func TestEncodeMatchesNSM(t *testing.T) {
	var c coseSign1
	if err := cbor.Unmarshal(realDoc(t), &c); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(c.Protected, coseProtectedES384) {
		t.Errorf("protected header = %x, want %x", c.Protected, coseProtectedES384)
	}
	if !bytes.Equal(c.Unprotected, coseEmptyMap) {
		t.Errorf("unprotected header = %x, want %x", []byte(c.Unprotected), []byte(coseEmptyMap))
	}
	var p nsmPayload
	if err := cbor.Unmarshal(c.Payload, &p); err != nil {
		t.Fatal(err)
	}
	got, err := encodePayload(&p)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, c.Payload) {
		t.Fatalf("re-encoded payload differs from the NSM's (%d vs %d bytes)", len(got), len(c.Payload))
	}
	// The envelope too: re-wrapping the payload and signature gives the document.
	env, err := cbor.Marshal(coseSign1{Protected: c.Protected, Unprotected: c.Unprotected, Payload: c.Payload, Signature: c.Signature})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(env, realDoc(t)) {
		t.Fatal("re-encoded COSE_Sign1 differs from the NSM's")
	}
}

// p521Doc builds a document whose signing certificate has a P-521 key,
// signed (ECDSA-SHA384) by a P-384 intermediate: nitrite.Verify panics on it.
func p521Doc(t *testing.T) []byte {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	leafKey, _ := ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
	now := time.Now()
	ca := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign, SignatureAlgorithm: x509.ECDSAWithSHA384}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	leaf := &x509.Certificate{SerialNumber: big.NewInt(2), NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		SignatureAlgorithm: x509.ECDSAWithSHA384}
	leafDER, err := x509.CreateCertificate(rand.Reader, leaf, caCert, &leafKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	payload, err := encodePayload(&nsmPayload{ModuleID: "x", Digest: "SHA384", Timestamp: 1,
		PCRs: pcrMap{0: make([]byte, 48)}, Certificate: leafDER, CABundle: [][]byte{caDER}})
	if err != nil {
		t.Fatal(err)
	}
	doc, err := cbor.Marshal(coseSign1{Protected: coseProtectedES384, Unprotected: coseEmptyMap, Payload: payload, Signature: make([]byte, 96)})
	if err != nil {
		t.Fatal(err)
	}
	return doc
}

// TestP521LeafDoesNotPanic: such a document crashes nitrite.Verify before any
// trust decision; Verify must reject it instead.
func TestP521LeafDoesNotPanic(t *testing.T) {
	doc := p521Doc(t)
	func() {
		defer func() {
			if recover() == nil {
				t.Error("nitrite.Verify did not panic on a P-521 signing key; precheck may no longer be needed")
			}
		}()
		_, _ = nitrite.Verify(doc, nitrite.VerifyOptions{CurrentTime: time.Now()})
	}()
	_, err := Verify(doc, Options{Time: time.Now()})
	if !errors.Is(err, ErrBadDocument) {
		t.Fatalf("Verify = %v, want ErrBadDocument", err)
	}
}

func TestCallNitriteRecovers(t *testing.T) {
	// The backstop: even without precheck, a panic becomes an error.
	res, err := callNitrite(p521Doc(t), nitrite.VerifyOptions{CurrentTime: time.Now()})
	if res != nil || err == nil || !strings.Contains(err.Error(), "panicked") {
		t.Fatalf("callNitrite = %v, %v; want nil and a panic error", res, err)
	}
}

func TestDevAttesterCancelled(t *testing.T) {
	d, err := NewDevAttester(DevConfig{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := d.Attest(ctx, Request{}); !errors.Is(err, context.Canceled) {
		t.Fatalf("Attest = %v, want context.Canceled", err)
	}
}
