package kms

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"testing"

	"github.com/quenchnet/quench/attestation"
)

// A Recipient opens envelopes addressed to its key, in DER and in KMS's
// BER shape, and no others.
func TestRecipientRoundTrip(t *testing.T) {
	dev, err := attestation.NewDevAttester(attestation.DevConfig{})
	if err != nil {
		t.Fatal(err)
	}
	r, err := NewRecipient(context.Background(), dev)
	if err != nil {
		t.Fatal(err)
	}
	dataKey := make([]byte, 32)
	rand.Read(dataKey)
	for _, form := range []struct {
		name                      string
		indefinite, allIndefinite bool
		segments                  int
	}{
		{"DER", false, false, 0},
		{"BER, KMS's shape", true, false, 1},
		{"BER, segmented", true, false, 3},
		{"BER, all indefinite, segmented", false, true, 2},
	} {
		t.Run(form.name, func(t *testing.T) {
			e := newEnvelope(t, r.PublicKey(), dataKey)
			e.indefinite, e.allIndefinite, e.segments = form.indefinite, form.allIndefinite, form.segments
			got, err := r.Decrypt(e.build(t))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, dataKey) {
				t.Errorf("got %x, want %x", got, dataKey)
			}
		})
	}

	// Not for this recipient: the vector, and an envelope for another key.
	_, vec, _ := vector(t)
	if _, err := r.Decrypt(vec); !errors.Is(err, ErrWrongKey) {
		t.Errorf("vector: %v, want ErrWrongKey", err)
	}
	e := newEnvelope(t, &testKey(t).PublicKey, dataKey)
	if _, err := r.Decrypt(e.build(t)); !errors.Is(err, ErrWrongKey) {
		t.Errorf("envelope for another key: %v, want ErrWrongKey", err)
	}
}
