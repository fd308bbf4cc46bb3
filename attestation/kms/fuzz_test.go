package kms

import (
	"bytes"
	"testing"
)

// FuzzDecrypt feeds hostile bytes to DecryptEnvelopedData with the vector's
// key: it must not panic, and what it returns is bounded by its input. The
// BER normaliser must never grow its input and must be idempotent.
func FuzzDecrypt(f *testing.F) {
	key, ber, _ := vector(f)
	f.Add(ber)
	for _, form := range []struct {
		indefinite, allIndefinite bool
		segments                  int
	}{{false, false, 0}, {true, false, 1}, {true, false, 3}, {false, true, 2}} {
		e := newEnvelope(f, &key.PublicKey, []byte("fuzz seed plaintext"))
		e.indefinite, e.allIndefinite, e.segments = form.indefinite, form.allIndefinite, form.segments
		f.Add(e.build(f))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		pt, err := DecryptEnvelopedData(key, in)
		if err == nil && len(pt) >= len(in) {
			t.Fatalf("%d bytes of plaintext from %d bytes of input", len(pt), len(in))
		}
		der, err := berToDER(in)
		if err != nil {
			return
		}
		if len(der) > len(in) {
			t.Fatalf("normaliser grew %d bytes to %d", len(in), len(der))
		}
		again, err := berToDER(der)
		if err != nil || !bytes.Equal(again, der) {
			t.Fatalf("normaliser not idempotent: %x -> %x -> %x, %v", in, der, again, err)
		}
	})
}
