package kmstest_test

import (
	"bytes"
	"context"
	"testing"

	"github.com/quenchnet/quench/attestation"
	"github.com/quenchnet/quench/attestation/kms"
	"github.com/quenchnet/quench/attestation/kms/kmstest"
)

func TestSealOpens(t *testing.T) {
	att, err := attestation.NewDevAttester(attestation.DevConfig{})
	if err != nil {
		t.Fatal(err)
	}
	r, err := kms.NewRecipient(context.Background(), att)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []int{0, 1, 15, 16, 32, 4096} {
		plain := bytes.Repeat([]byte{byte(n)}, n)
		sealed, err := kmstest.Seal(r.PublicKey(), plain)
		if err != nil {
			t.Fatal(err)
		}
		got, err := r.Decrypt(sealed)
		if err != nil || !bytes.Equal(got, plain) {
			t.Fatalf("%d bytes: Decrypt = %x, %v", n, got, err)
		}
	}
}
