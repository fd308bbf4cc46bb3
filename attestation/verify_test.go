package attestation_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/hf/nitrite"

	"github.com/quenchnet/quench/attestation"
	"github.com/quenchnet/quench/attestation/attestationtest"
)

// The real document in testdata was produced by a debug-mode enclave on
// 2022-07-12 at 18:35:18.399 UTC; its signing certificate is valid from
// 18:35:15 to 21:35:18 that day.
var (
	realDocTime   = time.Date(2022, 7, 12, 21, 0, 0, 0, time.UTC)
	realTimestamp = time.Date(2022, 7, 12, 18, 35, 18, 399e6, time.UTC)
	realNonce     = mustHex("efdf3cd3cf76f39ef6f7cefd")
	realPCR4      = mustHex("28c7ea32aec0384948c7b6373fb6ec5402789e28000f3bb002ecb97b96a15f583db4785d9d6bb393a8245d1bd6d98832")
	realModuleID  = "i-029e0eacb65267caa-enc0181f3b11fbd2d84"
	realPublicKey = mustHex("81613310f630246dfebe8bbab763bd835a2736b9be839bb8677e9065ce3ce161")
	// The day these tests were written: the chain has long expired.
	expiredTime = time.Date(2026, 11, 23, 0, 0, 0, 0, time.UTC)
)

func mustHex(s string) []byte {
	b, err := hex.DecodeString(s)
	if err != nil {
		panic(err)
	}
	return b
}

func loadRealDoc(tb testing.TB) []byte {
	tb.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "nitro-attestation-2022-07-12.b64"))
	if err != nil {
		tb.Fatal(err)
	}
	doc, err := attestation.DecodeDocument(b)
	if err != nil {
		tb.Fatal(err)
	}
	return doc
}

func zeros(n int) []byte { return make([]byte, n) }

func TestAWSRoot(t *testing.T) {
	blk, _ := pem.Decode([]byte(attestation.AWSNitroRootPEM))
	if blk == nil {
		t.Fatal("AWSNitroRootPEM is not PEM")
	}
	sum := sha256.Sum256(blk.Bytes)
	if got := hex.EncodeToString(sum[:]); got != attestation.AWSNitroRootSHA256 {
		t.Errorf("AWS root fingerprint = %s, want %s", got, attestation.AWSNitroRootSHA256)
	}
	nb, _ := pem.Decode([]byte(nitrite.DefaultCARoots))
	if nb == nil || !bytes.Equal(nb.Bytes, blk.Bytes) {
		t.Error("AWSNitroRootPEM differs from nitrite.DefaultCARoots")
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if c.Subject.CommonName != "aws.nitro-enclaves" || !c.IsCA {
		t.Errorf("unexpected AWS root %v (CA %v)", c.Subject, c.IsCA)
	}
}

func TestVerifyRealDocument(t *testing.T) {
	doc := loadRealDoc(t)
	res, err := attestation.Verify(doc, attestation.Options{
		Time:   realDocTime,
		PCRs:   map[uint][]byte{0: zeros(48), 4: realPCR4},
		Nonce:  realNonce,
		MaxAge: 3 * time.Hour,
	})
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	type summary struct {
		ModuleID  string
		Timestamp time.Time
		Digest    string
		NumPCRs   int
		PCR4      []byte
		PublicKey []byte
		UserData  []byte
		Nonce     []byte
		Leaf      string
		Bundle    int
		Checks    []attestation.Check
	}
	got := summary{res.ModuleID, res.Timestamp.UTC(), res.Digest, len(res.PCRs), res.PCRs[4], res.PublicKey,
		res.UserData, res.Nonce, res.Certificate.Subject.CommonName, len(res.CABundle), res.Checks}
	want := summary{realModuleID, realTimestamp, "SHA384", 16, realPCR4, realPublicKey, nil, realNonce,
		"i-029e0eacb65267caa-enc0181f3b11fbd2d84.us-east-2.aws", 4,
		[]attestation.Check{attestation.CheckSignature, attestation.CheckChain, attestation.CheckPCRs, attestation.CheckNonce, attestation.CheckMaxAge}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("result mismatch (-want +got):\n%s", diff)
	}
	if got := res.CABundle[0].Subject.CommonName; got != "aws.nitro-enclaves" {
		t.Errorf("CABundle[0] = %q, want the AWS root", got)
	}
}

func TestVerifyRealDocumentRejected(t *testing.T) {
	doc := loadRealDoc(t)
	dev := attestationtest.NewDevAttester(t, attestation.DevConfig{})
	wrongPCR4 := bytes.Clone(realPCR4)
	wrongPCR4[47] ^= 1
	tests := []struct {
		name   string
		opts   attestation.Options
		want   error // sentinel
		target any   // typed error to extract, optional
		check  func(t *testing.T, err error)
	}{
		{name: "expired today", opts: attestation.Options{Time: expiredTime}, want: attestation.ErrUntrustedChain,
			check: func(t *testing.T, err error) {
				var ce x509.CertificateInvalidError
				if !errors.As(err, &ce) || ce.Reason != x509.Expired {
					t.Errorf("want x509 Expired inside, got %v", err)
				}
			}},
		{name: "before leaf validity", opts: attestation.Options{Time: time.Date(2022, 7, 12, 18, 0, 0, 0, time.UTC)}, want: attestation.ErrUntrustedChain},
		{name: "dev root only", opts: attestation.Options{Time: realDocTime, Roots: dev.Roots()}, want: attestation.ErrUntrustedChain,
			check: func(t *testing.T, err error) {
				var ue x509.UnknownAuthorityError
				if !errors.As(err, &ue) {
					t.Errorf("want x509.UnknownAuthorityError inside, got %v", err)
				}
			}},
		{name: "wrong PCR4", opts: attestation.Options{Time: realDocTime, PCRs: map[uint][]byte{0: zeros(48), 4: wrongPCR4}}, want: attestation.ErrPCRMismatch,
			check: func(t *testing.T, err error) {
				var pe *attestation.PCRMismatchError
				if !errors.As(err, &pe) || pe.Index != 4 || !bytes.Equal(pe.Got, realPCR4) || !strings.Contains(err.Error(), "PCR4") {
					t.Errorf("want PCRMismatchError for index 4, got %v", err)
				}
			}},
		{name: "PCR absent", opts: attestation.Options{Time: realDocTime, PCRs: map[uint][]byte{20: zeros(48)}}, want: attestation.ErrPCRMismatch,
			check: func(t *testing.T, err error) {
				var pe *attestation.PCRMismatchError
				if !errors.As(err, &pe) || pe.Index != 20 || pe.Got != nil {
					t.Errorf("want PCRMismatchError for absent PCR20, got %v", err)
				}
			}},
		{name: "wrong nonce", opts: attestation.Options{Time: realDocTime, Nonce: []byte("not the nonce")}, want: attestation.ErrNonceMismatch,
			check: func(t *testing.T, err error) {
				var ne *attestation.NonceMismatchError
				if !errors.As(err, &ne) || !bytes.Equal(ne.Got, realNonce) {
					t.Errorf("want NonceMismatchError with the document's nonce, got %v", err)
				}
			}},
		{name: "too old", opts: attestation.Options{Time: realDocTime, MaxAge: time.Hour}, want: attestation.ErrTooOld,
			check: func(t *testing.T, err error) {
				var te *attestation.TooOldError
				if !errors.As(err, &te) || !te.Timestamp.Equal(realTimestamp) {
					t.Errorf("want TooOldError, got %v", err)
				}
			}},
		{name: "no user data binding", opts: attestation.Options{Time: realDocTime, TLSCertHash: zeros(32)}, want: attestation.ErrUserDataMismatch},
		{name: "exact user data", opts: attestation.Options{Time: realDocTime, UserData: []byte("x")}, want: attestation.ErrUserDataMismatch},
		{name: "time required", opts: attestation.Options{}, want: attestation.ErrTimeRequired},
		{name: "bad PCR index", opts: attestation.Options{Time: realDocTime, PCRs: map[uint][]byte{32: zeros(48)}}, want: attestation.ErrInvalidOptions},
		{name: "bad PCR length", opts: attestation.Options{Time: realDocTime, PCRs: map[uint][]byte{0: zeros(47)}}, want: attestation.ErrInvalidOptions},
		{name: "bad cert hash length", opts: attestation.Options{Time: realDocTime, TLSCertHash: zeros(31)}, want: attestation.ErrInvalidOptions},
		{name: "negative max age", opts: attestation.Options{Time: realDocTime, MaxAge: -1}, want: attestation.ErrInvalidOptions},
		// An empty expected nonce would match a document without one.
		{name: "empty nonce", opts: attestation.Options{Time: realDocTime, Nonce: []byte{}}, want: attestation.ErrInvalidOptions},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, err := attestation.Verify(doc, tt.opts)
			if res != nil {
				t.Errorf("Verify returned a result with error %v", err)
			}
			if !errors.Is(err, tt.want) {
				t.Fatalf("Verify = %v, want %v", err, tt.want)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error spans lines: %q", err)
			}
			if tt.check != nil {
				tt.check(t, err)
			}
		})
	}
}

// TestVerifyMaxAgeCenturies: documents stamped centuries away from
// Options.Time (a signer with a wild clock) fail MaxAge. Time.Sub saturates
// that far apart, and negating the saturated Duration overflowed, which let
// a timestamp 300 years ahead through.
func TestVerifyMaxAgeCenturies(t *testing.T) {
	start := time.Now()
	// (Centuries behind cannot be signed: the document's timestamp would be
	// before the Unix epoch. "too old" above covers that direction.)
	for _, years := range []int{1, 300} {
		t.Run(fmt.Sprintf("%d years ahead", years), func(t *testing.T) {
			calls := 0
			dev := attestationtest.NewDevAttester(t, attestation.DevConfig{
				// The first call dates the certificate chain (valid at
				// start); documents are stamped years away.
				Now: func() time.Time {
					calls++
					if calls == 1 {
						return start
					}
					return start.AddDate(years, 0, 0)
				},
			})
			doc, err := dev.Attest(context.Background(), attestation.Request{})
			if err != nil {
				t.Fatal(err)
			}
			res, err := attestation.Verify(doc, attestation.Options{Time: start, Roots: dev.Roots(), MaxAge: time.Minute})
			if !errors.Is(err, attestation.ErrTooOld) {
				t.Fatalf("Verify = %v, %v; want ErrTooOld", res, err)
			}
		})
	}
}

var flipAll = flag.Bool("flipall", false, "flip every byte of the real document's payload (~15 s)")

// flipPositions returns the payload offsets to flip: both ends of the payload
// and every 29th byte in between, which touches every field (module_id,
// digest, timestamp, each PCR, the certificate, each bundle entry, nonce,
// public key) at a fraction of the cost of all ~4300 positions (-flipall).
func flipPositions(n int) []int {
	var pos []int
	for i := 0; i < n; i++ {
		if *flipAll || i < 32 || i >= n-32 || i%29 == 3 {
			pos = append(pos, i)
		}
	}
	return pos
}

// TestVerifyRealDocumentFlippedByte flips one byte at a time in the signed
// payload (and in the protected header and signature) and expects every
// variant to be rejected, while the chain is valid.
func TestVerifyRealDocumentFlippedByte(t *testing.T) {
	doc := loadRealDoc(t)
	// 84 44 a1013822 a0 59 10ea <payload 0x10ea bytes> 58 60 <signature>
	const payloadOff, payloadLen = 10, 0x10ea
	if doc[8] != 0x10 || doc[9] != 0xea || len(doc) != payloadOff+payloadLen+2+96 {
		t.Fatalf("unexpected document layout")
	}
	positions := []int{2, 3, 4, 5} // protected header bytes
	for _, p := range flipPositions(payloadLen) {
		positions = append(positions, payloadOff+p)
	}
	for i := 0; i < 96; i += 5 { // signature
		positions = append(positions, payloadOff+payloadLen+2+i)
	}
	kinds := map[string]int{}
	mut := bytes.Clone(doc)
	for n, p := range positions {
		for _, mask := range []byte{byte(1) << (n % 8)} {
			mut[p] ^= mask
			_, err := attestation.Verify(mut, attestation.Options{Time: realDocTime})
			mut[p] ^= mask
			switch {
			case err == nil:
				t.Fatalf("document with byte %d ^ %#x verified", p, mask)
			case errors.Is(err, attestation.ErrBadSignature):
				kinds["bad signature"]++
			case errors.Is(err, attestation.ErrUntrustedChain):
				kinds["untrusted chain"]++
			case errors.Is(err, attestation.ErrBadDocument):
				kinds["bad document"]++
			default:
				t.Fatalf("byte %d ^ %#x: unclassified error %v", p, mask, err)
			}
		}
	}
	t.Logf("%d variants rejected: %v", len(positions), kinds)
	if kinds["bad signature"] == 0 || kinds["bad document"] == 0 {
		t.Errorf("expected both signature and parse failures, got %v", kinds)
	}
	if !bytes.Equal(mut, doc) {
		t.Fatal("test bug: document not restored")
	}
}

// TestUnprotectedHeaderNotSigned documents why the flip test leaves byte 6
// alone: COSE does not sign the unprotected header, so a document with a
// different one still verifies. Verify exposes nothing from that header.
func TestUnprotectedHeaderNotSigned(t *testing.T) {
	doc := loadRealDoc(t)
	if doc[6] != 0xa0 {
		t.Fatal("unexpected layout")
	}
	mut := append(append(bytes.Clone(doc[:6]), 0xa1, 0x01, 0x01), doc[7:]...) // {1: 1}
	if _, err := attestation.Verify(mut, attestation.Options{Time: realDocTime}); err != nil {
		t.Fatalf("document with another unprotected header: %v", err)
	}
}

func TestVerifyOversized(t *testing.T) {
	_, err := attestation.Verify(make([]byte, attestation.MaxDocumentSize+1), attestation.Options{Time: realDocTime})
	if !errors.Is(err, attestation.ErrBadDocument) {
		t.Fatalf("Verify = %v, want ErrBadDocument", err)
	}
}

func TestVerifyWrapsNitriteSentinels(t *testing.T) {
	tests := []struct {
		name string
		doc  []byte
		want error
	}{
		{"not CBOR", []byte("hello"), nitrite.ErrBadCOSESign1Structure},
		{"empty array", []byte{0x84, 0x40, 0xa0, 0x40, 0x40}, nitrite.ErrCOSESign1EmptyProtectedSection},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := attestation.Verify(tt.doc, attestation.Options{Time: realDocTime})
			if !errors.Is(err, tt.want) || !errors.Is(err, attestation.ErrBadDocument) {
				t.Fatalf("Verify = %v, want %v and ErrBadDocument", err, tt.want)
			}
		})
	}
}

func TestDecodeDocument(t *testing.T) {
	raw := loadRealDoc(t)
	b64 := base64.StdEncoding.EncodeToString(raw)
	tests := []struct {
		name    string
		in      []byte
		wantErr bool
	}{
		{"raw", raw, false},
		{"base64 with newline", []byte(b64 + "\n"), false},
		{"base64 surrounded by spaces", []byte("  \r\n" + b64 + " \n"), false},
		{"raw std", []byte(base64.RawStdEncoding.EncodeToString(raw)), false},
		{"url", []byte(base64.URLEncoding.EncodeToString(raw)), false},
		{"empty", nil, true},
		{"blank", []byte(" \n"), true},
		{"garbage", []byte("%%%%"), true},
		{"too large raw", append([]byte{0x84}, make([]byte, attestation.MaxDocumentSize)...), true},
		{"too large text", bytes.Repeat([]byte("A"), 3*attestation.MaxDocumentSize), true},
		{"too large decoded", []byte(base64.StdEncoding.EncodeToString(make([]byte, attestation.MaxDocumentSize+3))), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := attestation.DecodeDocument(tt.in)
			if tt.wantErr {
				if !errors.Is(err, attestation.ErrBadDocument) {
					t.Fatalf("DecodeDocument = %v, want ErrBadDocument", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, raw) {
				t.Fatal("decoded document differs")
			}
		})
	}
}

func TestLoadRoots(t *testing.T) {
	dir := t.TempDir()
	dev := attestationtest.NewDevAttester(t, attestation.DevConfig{})
	path := filepath.Join(dir, "roots.pem")
	// A bundle with the AWS root and the dev root: both documents verify.
	if err := os.WriteFile(path, append([]byte(attestation.AWSNitroRootPEM), dev.RootPEM()...), 0o600); err != nil {
		t.Fatal(err)
	}
	pool, err := attestation.LoadRoots(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := attestation.Verify(loadRealDoc(t), attestation.Options{Time: realDocTime, Roots: pool}); err != nil {
		t.Errorf("real document with bundle: %v", err)
	}
	doc, err := dev.Attest(context.Background(), attestation.Request{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := attestation.Verify(doc, attestation.Options{Time: time.Now(), Roots: pool}); err != nil {
		t.Errorf("dev document with bundle: %v", err)
	}

	empty := filepath.Join(dir, "empty.pem")
	_ = os.WriteFile(empty, []byte("no pem here"), 0o600)
	if _, err := attestation.LoadRoots(empty); err == nil {
		t.Error("LoadRoots of a file without certificates succeeded")
	}
	if _, err := attestation.LoadRoots(filepath.Join(dir, "missing")); err == nil {
		t.Error("LoadRoots of a missing file succeeded")
	}
}
