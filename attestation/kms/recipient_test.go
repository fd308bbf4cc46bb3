package kms_test

import (
	"bytes"
	"context"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"testing"
	"time"

	"github.com/quenchnet/quench/attestation"
	"github.com/quenchnet/quench/attestation/kms"
)

func TestNewRecipientDevAttester(t *testing.T) {
	now := time.Now()
	dev, err := attestation.NewDevAttester(attestation.DevConfig{Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	r, err := kms.NewRecipient(context.Background(), dev)
	if err != nil {
		t.Fatal(err)
	}
	if got := r.KeyEncryptionAlgorithm(); got != "RSAES_OAEP_SHA_256" {
		t.Errorf("KeyEncryptionAlgorithm() = %q", got)
	}
	if n := r.PublicKey().N.BitLen(); n != kms.RecipientKeyBits {
		t.Errorf("key of %d bits, want %d", n, kms.RecipientKeyBits)
	}

	doc := r.AttestationDocument()
	res, err := attestation.Verify(doc, attestation.Options{Time: now, Roots: dev.Roots(), MaxAge: time.Minute})
	if err != nil {
		t.Fatalf("Verify with the dev roots: %v", err)
	}
	pub, err := x509.ParsePKIXPublicKey(res.PublicKey)
	if err != nil {
		t.Fatalf("document public_key: %v", err)
	}
	rsaPub, ok := pub.(*rsa.PublicKey)
	if !ok || !rsaPub.Equal(r.PublicKey()) {
		t.Fatalf("document public_key is %T, not the recipient's key", pub)
	}
	if len(res.PublicKey) > attestation.MaxPublicKeySize {
		t.Errorf("public key of %d bytes, more than %d", len(res.PublicKey), attestation.MaxPublicKeySize)
	}

	// KMS would refuse a development document: it does not chain to AWS.
	if _, err := attestation.Verify(doc, attestation.Options{Time: now}); !errors.Is(err, attestation.ErrUntrustedChain) {
		t.Errorf("Verify with the AWS root: %v, want ErrUntrustedChain", err)
	}

	// The returned document is a copy.
	doc[0] ^= 0xff
	if bytes.Equal(doc, r.AttestationDocument()) {
		t.Error("AttestationDocument returns the Recipient's own slice")
	}
}

func TestNewRecipientErrors(t *testing.T) {
	if _, err := kms.NewRecipient(context.Background(), nil); err == nil {
		t.Error("nil attester accepted")
	}
	failing := attesterFunc(func(context.Context, attestation.Request) ([]byte, error) {
		return nil, attestation.ErrClosed
	})
	if _, err := kms.NewRecipient(context.Background(), failing); !errors.Is(err, attestation.ErrClosed) {
		t.Errorf("failing attester: %v, want its error wrapped", err)
	}
}

type attesterFunc func(context.Context, attestation.Request) ([]byte, error)

func (f attesterFunc) Attest(ctx context.Context, req attestation.Request) ([]byte, error) {
	return f(ctx, req)
}
