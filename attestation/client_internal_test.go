package attestation

import (
	"crypto/sha256"
	"testing"
	"time"
)

// TestTransportTrustBounded: the trust cache holds at most maxTrustedCerts
// certificates; a full cache drops the expired ones first, else the one
// that expires first.
func TestTransportTrustBounded(t *testing.T) {
	now := time.Now()
	clock := now
	tr, err := NewTransport(ClientConfig{AnyImage: true, TrustFor: time.Minute, Now: func() time.Time { return clock }})
	if err != nil {
		t.Fatal(err)
	}
	hash := func(i int) [sha256.Size]byte { return sha256.Sum256([]byte{byte(i), byte(i >> 8)}) }
	for i := range maxTrustedCerts + 100 {
		tr.trust(hash(i), now.Add(time.Duration(i)*time.Millisecond))
		if n := len(tr.trusted); n > maxTrustedCerts {
			t.Fatalf("%d certificates trusted", n)
		}
	}
	if tr.isTrusted(hash(0)) {
		t.Error("the certificate that expires first is still trusted")
	}
	if !tr.isTrusted(hash(maxTrustedCerts + 99)) {
		t.Error("the last certificate is not trusted")
	}
	clock = now.Add(2 * time.Minute)
	tr.trust(hash(-1), clock)
	if n := len(tr.trusted); n != 1 {
		t.Errorf("after all expired: %d certificates trusted, want 1", n)
	}
}
