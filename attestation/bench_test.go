package attestation_test

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/hf/nitrite"

	"github.com/quenchnet/quench/attestation"
)

// benchDev returns a development attester (silent) and a typical request: a
// 20-byte nonce and the 68-byte user data.
func benchDev(b *testing.B) (*attestation.DevAttester, attestation.Request) {
	b.Helper()
	dev, err := attestation.NewDevAttester(attestation.DevConfig{})
	if err != nil {
		b.Fatal(err)
	}
	return dev, attestation.Request{
		Nonce:    bytes.Repeat([]byte{1}, attestation.NonceSize),
		UserData: attestation.UserData{TLSCertHash: [32]byte{2}}.Marshal(),
	}
}

func reportDocsPerSec(b *testing.B) {
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "docs/s")
}

// BenchmarkDevAttest: documents produced per second by the development
// attester (CBOR encoding + one ECDSA P-384 signature).
func BenchmarkDevAttest(b *testing.B) {
	dev, req := benchDev(b)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := dev.Attest(ctx, req); err != nil {
			b.Fatal(err)
		}
	}
	reportDocsPerSec(b)
}

func BenchmarkDevAttestParallel(b *testing.B) {
	dev, req := benchDev(b)
	ctx := context.Background()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := dev.Attest(ctx, req); err != nil {
				b.Error(err)
				return
			}
		}
	})
	reportDocsPerSec(b)
}

// BenchmarkVerify: documents verified per second, with the full policy
// (PCRs, nonce, freshness, user-data binding where the document has one).
// The AWS document has a 4-certificate bundle, the development one 2.
func BenchmarkVerify(b *testing.B) {
	dev, req := benchDev(b)
	devDoc, err := dev.Attest(context.Background(), req)
	if err != nil {
		b.Fatal(err)
	}
	cases := []struct {
		name string
		doc  []byte
		opts attestation.Options
	}{
		{"aws", loadRealDoc(b), attestation.Options{Time: realDocTime, PCRs: map[uint][]byte{0: zeros(48), 4: realPCR4}, Nonce: realNonce, MaxAge: 3 * time.Hour}},
		{"dev", devDoc, attestation.Options{Time: time.Now(), Roots: dev.Roots(), PCRs: map[uint][]byte{0: zeros(48)}, Nonce: req.Nonce,
			MaxAge: time.Hour, TLSCertHash: make([]byte, 32)}},
	}
	cases[1].opts.TLSCertHash[0] = 2
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			if _, err := attestation.Verify(c.doc, c.opts); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				if _, err := attestation.Verify(c.doc, c.opts); err != nil {
					b.Fatal(err)
				}
			}
			reportDocsPerSec(b)
		})
	}
}

// BenchmarkNitriteVerify is the reference point for BenchmarkVerify/aws:
// nitrite.Verify alone on the same document (no precheck, no policy).
func BenchmarkNitriteVerify(b *testing.B) {
	doc := loadRealDoc(b)
	opts := nitrite.VerifyOptions{Roots: attestation.AWSNitroRoots(), CurrentTime: realDocTime}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := nitrite.Verify(doc, opts); err != nil {
			b.Fatal(err)
		}
	}
	reportDocsPerSec(b)
}

func BenchmarkVerifyParallel(b *testing.B) {
	doc := loadRealDoc(b)
	opts := attestation.Options{Time: realDocTime, Nonce: realNonce}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := attestation.Verify(doc, opts); err != nil {
				b.Error(err)
				return
			}
		}
	})
	reportDocsPerSec(b)
}
