package kms

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"os"
	"strings"
	"sync"
	"testing"
)

// The real KMS answer (see testdata/README.md).
func vector(t testing.TB) (key *rsa.PrivateKey, ber, plaintext []byte) {
	t.Helper()
	read := func(name string) []byte {
		b, err := os.ReadFile("testdata/" + name)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	blk, _ := pem.Decode(read("enclaver-vector.key"))
	if blk == nil {
		t.Fatal("no PEM block in enclaver-vector.key")
	}
	key, err := x509.ParsePKCS1PrivateKey(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	ber, err = base64.StdEncoding.DecodeString(strings.TrimSpace(string(read("enclaver-vector.b64"))))
	if err != nil {
		t.Fatal(err)
	}
	plaintext, err = hex.DecodeString(strings.TrimSpace(string(read("enclaver-vector.plaintext.hex"))))
	if err != nil {
		t.Fatal(err)
	}
	return key, ber, plaintext
}

func TestDecryptKMSVector(t *testing.T) {
	key, ber, want := vector(t)
	if ber[0] != 0x30 || ber[1] != 0x80 {
		t.Fatalf("vector starts % x, want indefinite-length BER 30 80", ber[:2])
	}
	got, err := DecryptEnvelopedData(key, ber)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("plaintext %x, want %x", got, want)
	}
}

func TestDecryptKMSVectorWrongKey(t *testing.T) {
	_, ber, _ := vector(t)
	other := testKey(t)
	_, err := DecryptEnvelopedData(other, ber)
	if !errors.Is(err, ErrWrongKey) || !strings.Contains(err.Error(), "subject key identifier") {
		t.Errorf("other key: %v, want ErrWrongKey naming the subject key identifier", err)
	}
}

// Every proper prefix and every one-byte extension of the vector is rejected.
func TestDecryptKMSVectorTruncatedOrExtended(t *testing.T) {
	key, ber, _ := vector(t)
	for n := 0; n < len(ber); n++ {
		if _, err := DecryptEnvelopedData(key, ber[:n]); !errors.Is(err, ErrMalformed) {
			t.Fatalf("prefix of %d bytes: %v, want ErrMalformed", n, err)
		}
	}
	if _, err := DecryptEnvelopedData(key, append(bytes.Clone(ber), 0)); !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), "trailing") {
		t.Errorf("trailing byte: %v", err)
	}
}

var (
	keyOnce sync.Once
	keyVal  *rsa.PrivateKey
)

// testKey is one RSA-2048 key shared by the tests (generation is slow).
func testKey(t testing.TB) *rsa.PrivateKey {
	keyOnce.Do(func() {
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			panic(err)
		}
		keyVal = k
	})
	return keyVal
}

// envelope describes an EnvelopedData for build; the zero value, with pub,
// content key, IV and plaintext filled in by newEnvelope, is what KMS sends.
type envelope struct {
	pub        *rsa.PublicKey
	contentKey []byte
	iv         []byte
	plaintext  []byte

	indefinite    bool // BER with indefinite lengths on the outer layers, as KMS sends
	allIndefinite bool // BER with indefinite lengths on every constructed element
	segments      int  // > 0: encryptedContent split into this many OCTET STRINGs

	version, ktriVersion int    // default 2
	contentType          []byte // default id-envelopedData
	ski                  []byte // default SHA-256(SPKI)
	rid                  []byte // whole rid element; default [0] ski
	oaepParams           []byte // whole parameters element; default SHA-256/MGF1-SHA-256
	keyAlg               asn1.ObjectIdentifier
	encryptedKey         []byte // default OAEP(contentKey)
	encContentType       asn1.ObjectIdentifier
	contentAlg           asn1.ObjectIdentifier
	ivParam              []byte // whole IV parameter element; default OCTET STRING iv
	ciphertext           []byte // default AES-256-CBC(plaintext with PKCS#7 padding)
	noContent            bool
	extraRecipient       bool
	originatorInfo       bool
	unprotectedAttrs     bool
	trailing             []byte
}

func newEnvelope(t testing.TB, pub *rsa.PublicKey, plaintext []byte) *envelope {
	e := &envelope{pub: pub, plaintext: plaintext, contentKey: make([]byte, 32), iv: make([]byte, 16)}
	rand.Read(e.contentKey)
	rand.Read(e.iv)
	return e
}

// outer encodes one of the elements that KMS encodes with an indefinite
// length (ContentInfo, its [0], EnvelopedData, EncryptedContentInfo,
// encryptedContent), with an indefinite length if e.indefinite.
func (e *envelope) outer(tag byte, children ...[]byte) []byte {
	return e.encode(e.indefinite || e.allIndefinite, tag, children...)
}

// tlv encodes any other element, with an indefinite length only if
// e.allIndefinite and it is constructed.
func (e *envelope) tlv(tag byte, children ...[]byte) []byte {
	return e.encode(e.allIndefinite, tag, children...)
}

func (e *envelope) encode(indefinite bool, tag byte, children ...[]byte) []byte {
	content := bytes.Join(children, nil)
	if indefinite && tag&0x20 != 0 {
		out := append([]byte{tag, 0x80}, content...)
		return append(out, 0, 0)
	}
	return appendTLV(nil, tag, content)
}

func mustMarshal(t testing.TB, v any) []byte {
	t.Helper()
	b, err := asn1.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func (e *envelope) build(t testing.TB) []byte {
	t.Helper()
	or := func(v int) int {
		if v == 0 {
			return 2
		}
		return v
	}
	oid := func(o, def asn1.ObjectIdentifier) []byte {
		if o == nil {
			o = def
		}
		return mustMarshal(t, o)
	}
	sha256Alg := e.tlv(0x30, mustMarshal(t, oidSHA256), asn1.NullBytes)

	ski := e.ski
	if ski == nil {
		spki, err := x509.MarshalPKIXPublicKey(e.pub)
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(spki)
		ski = sum[:]
	}
	rid := e.rid
	if rid == nil {
		rid = appendTLV(nil, 0x80, ski)
	}
	params := e.oaepParams
	if params == nil {
		params = e.tlv(0x30,
			e.tlv(0xa0, sha256Alg),
			e.tlv(0xa1, e.tlv(0x30, mustMarshal(t, oidMGF1), sha256Alg)))
	}
	ek := e.encryptedKey
	if ek == nil {
		var err error
		ek, err = rsa.EncryptOAEP(sha256.New(), rand.Reader, e.pub, e.contentKey, nil)
		if err != nil {
			t.Fatal(err)
		}
	}
	ktri := e.tlv(0x30,
		mustMarshal(t, or(e.ktriVersion)),
		rid,
		e.tlv(0x30, oid(e.keyAlg, oidRSAESOAEP), params),
		appendTLV(nil, 0x04, ek))
	recipients := [][]byte{ktri}
	if e.extraRecipient {
		recipients = append(recipients, ktri)
	}

	ct := e.ciphertext
	if ct == nil {
		n := 16 - len(e.plaintext)%16
		padded := append(bytes.Clone(e.plaintext), bytes.Repeat([]byte{byte(n)}, n)...)
		block, err := aes.NewCipher(e.contentKey)
		if err != nil {
			t.Fatal(err)
		}
		ct = make([]byte, len(padded))
		cipher.NewCBCEncrypter(block, e.iv).CryptBlocks(ct, padded)
	}
	var content []byte
	switch {
	case e.noContent:
	case e.segments > 0:
		var segs [][]byte
		for i := range e.segments {
			segs = append(segs, appendTLV(nil, 0x04, ct[i*len(ct)/e.segments:(i+1)*len(ct)/e.segments]))
		}
		content = e.outer(0xa0, segs...)
	default:
		content = appendTLV(nil, 0x80, ct)
	}
	ivParam := e.ivParam
	if ivParam == nil {
		ivParam = appendTLV(nil, 0x04, e.iv)
	}
	eci := e.outer(0x30,
		oid(e.encContentType, oidData),
		e.tlv(0x30, oid(e.contentAlg, oidAES256CBC), ivParam),
		content)

	edFields := [][]byte{mustMarshal(t, or(e.version))}
	if e.originatorInfo {
		edFields = append(edFields, e.tlv(0xa0))
	}
	edFields = append(edFields, e.tlv(0x31, recipients...), eci)
	if e.unprotectedAttrs {
		edFields = append(edFields, e.tlv(0xa1, e.tlv(0x30, mustMarshal(t, oidData), e.tlv(0x31, asn1.NullBytes))))
	}
	contentType := e.contentType
	if contentType == nil {
		contentType = mustMarshal(t, oidEnvelopedData)
	}
	out := e.outer(0x30, contentType, e.outer(0xa0, e.outer(0x30, edFields...)))
	return append(out, e.trailing...)
}

func TestDecryptRoundTrip(t *testing.T) {
	key := testKey(t)
	for _, tc := range []struct {
		name          string
		indefinite    bool
		allIndefinite bool
		segments      int
		size          int
	}{
		{"DER", false, false, 0, 32},
		{"DER, segmented", false, false, 3, 32},
		{"BER indefinite", true, false, 0, 32},
		{"BER indefinite, segmented", true, false, 4, 1024},
		{"BER indefinite, one segment (KMS's shape)", true, false, 1, 32},
		{"BER all indefinite, segmented", false, true, 3, 100},
		{"block-aligned plaintext", true, false, 2, 64},
		{"empty plaintext", false, false, 0, 0},
		{"4096 bytes, segmented", true, false, 7, 4096},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pt := make([]byte, tc.size)
			rand.Read(pt)
			e := newEnvelope(t, &key.PublicKey, pt)
			e.indefinite, e.allIndefinite, e.segments = tc.indefinite, tc.allIndefinite, tc.segments
			ber := e.build(t)
			if (tc.indefinite || tc.allIndefinite) && ber[1] != 0x80 {
				t.Fatalf("builder produced % x, want indefinite length", ber[:2])
			}
			got, err := DecryptEnvelopedData(key, ber)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, pt) {
				t.Errorf("plaintext %x, want %x", got, pt)
			}
		})
	}
}

// The test builder reproduces the vector's encoding, so the malformed cases
// below are variations of what KMS sends.
func TestBuilderMatchesVectorShape(t *testing.T) {
	key := testKey(t)
	e := newEnvelope(t, &key.PublicKey, make([]byte, 32))
	e.indefinite, e.segments = true, 1
	ber := e.build(t)
	_, vec, _ := vector(t)
	if len(ber) != len(vec) {
		t.Fatalf("builder output %d bytes, vector %d", len(ber), len(vec))
	}
	// Same bytes outside the key-specific parts (SKI, encrypted key, IV, ciphertext).
	if !bytes.Equal(ber[:31], vec[:31]) || !bytes.Equal(ber[65:131], vec[65:131]) || !bytes.Equal(ber[387:415], vec[387:415]) {
		t.Errorf("builder\n%x\nvector\n%x", ber, vec)
	}
}

func TestDecryptRejects(t *testing.T) {
	key := testKey(t)
	other, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	sha1Alg := mustMarshal(t, struct{ OID asn1.ObjectIdentifier }{asn1.ObjectIdentifier{1, 3, 14, 3, 2, 26}})
	sha256Alg := mustMarshal(t, struct{ OID asn1.ObjectIdentifier }{oidSHA256})
	mgf := func(hash []byte) []byte { return appendTLV(nil, 0x30, append(mustMarshal(t, oidMGF1), hash...)) }
	seq := func(parts ...[]byte) []byte { return appendTLV(nil, 0x30, bytes.Join(parts, nil)) }
	ctx := func(tag byte, b []byte) []byte { return appendTLV(nil, 0xa0|tag, b) }

	for _, tc := range []struct {
		name string
		mod  func(e *envelope)
		want error
		msg  string
	}{
		{"encrypted for another key", func(e *envelope) { e.pub = &other.PublicKey }, ErrWrongKey, "subject key identifier"},
		{"right SKI, key encrypted for another key", func(e *envelope) {
			ek, _ := rsa.EncryptOAEP(sha256.New(), rand.Reader, &other.PublicKey, e.contentKey, nil)
			e.encryptedKey = ek
		}, ErrWrongKey, "RSAES-OAEP"},
		{"content key of 16 bytes", func(e *envelope) {
			e.contentKey = e.contentKey[:16]
			e.ciphertext = make([]byte, 32)
		}, ErrMalformed, "content key of 16 bytes"},
		{"encrypted key too short", func(e *envelope) { e.encryptedKey = make([]byte, 255) }, ErrMalformed, "encryptedKey of 255 bytes"},
		{"bad padding length 0", func(e *envelope) {
			e.plaintext = append(make([]byte, 15), 0)
			e.ciphertext = encryptRaw(t, e, e.plaintext)
		}, ErrMalformed, "padding"},
		{"bad padding length 17", func(e *envelope) { e.ciphertext = encryptRaw(t, e, append(make([]byte, 15), 17)) }, ErrMalformed, "padding"},
		{"bad padding bytes", func(e *envelope) { e.ciphertext = encryptRaw(t, e, append(make([]byte, 13), 1, 3, 3)) }, ErrMalformed, "padding"},
		{"ciphertext not block multiple", func(e *envelope) { e.ciphertext = make([]byte, 33) }, ErrMalformed, "multiple of 16"},
		{"empty ciphertext", func(e *envelope) { e.ciphertext = []byte{} }, ErrMalformed, "multiple of 16"},
		{"no encrypted content", func(e *envelope) { e.noContent = true }, ErrMalformed, "no encryptedContent"},
		{"IV of 8 bytes", func(e *envelope) { e.ivParam = appendTLV(nil, 0x04, make([]byte, 8)) }, ErrMalformed, "IV of 8 bytes"},
		{"IV absent", func(e *envelope) { e.ivParam = []byte{} }, ErrMalformed, "IV"},
		{"IV not an OCTET STRING", func(e *envelope) { e.ivParam = asn1.NullBytes }, ErrMalformed, "IV"},
		{"AES-128-CBC", func(e *envelope) { e.contentAlg = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 1, 2} }, ErrUnsupported, "AES-256-CBC"},
		{"AES-256-GCM", func(e *envelope) { e.contentAlg = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 1, 46} }, ErrUnsupported, "AES-256-CBC"},
		{"encrypted content type not data", func(e *envelope) { e.encContentType = oidEnvelopedData }, ErrUnsupported, "id-data"},
		{"PKCS#1 v1.5 key encryption", func(e *envelope) {
			e.keyAlg = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 1}
			e.oaepParams = asn1.NullBytes
		}, ErrUnsupported, "RSAES-OAEP"},
		{"OAEP without parameters", func(e *envelope) { e.oaepParams = []byte{} }, ErrUnsupported, "SHA-1 defaults"},
		{"OAEP default parameters", func(e *envelope) { e.oaepParams = seq() }, ErrUnsupported, "SHA-1 default"},
		{"OAEP SHA-1", func(e *envelope) { e.oaepParams = seq(ctx(0, sha1Alg), ctx(1, mgf(sha256Alg))) }, ErrUnsupported, "RSAES-OAEP hash"},
		{"OAEP MGF1 default", func(e *envelope) { e.oaepParams = seq(ctx(0, sha256Alg)) }, ErrUnsupported, "MGF1-SHA-1 default"},
		{"OAEP MGF1-SHA-1", func(e *envelope) { e.oaepParams = seq(ctx(0, sha256Alg), ctx(1, mgf(sha1Alg))) }, ErrUnsupported, "MGF1 hash"},
		{"OAEP unknown MGF", func(e *envelope) {
			e.oaepParams = seq(ctx(0, sha256Alg), ctx(1, seq(mustMarshal(t, oidSHA256), sha256Alg)))
		}, ErrUnsupported, "mask generation"},
		{"OAEP label", func(e *envelope) {
			e.oaepParams = seq(ctx(0, sha256Alg), ctx(1, mgf(sha256Alg)), ctx(2, seq(mustMarshal(t, oidPSpecified), appendTLV(nil, 0x04, []byte("x")))))
		}, ErrUnsupported, "label"},
		{"OAEP fields out of order", func(e *envelope) { e.oaepParams = seq(ctx(1, mgf(sha256Alg)), ctx(0, sha256Alg)) }, ErrMalformed, "RSAES-OAEP parameters"},
		{"OAEP hash with extra field", func(e *envelope) {
			e.oaepParams = seq(ctx(0, seq(mustMarshal(t, oidSHA256), asn1.NullBytes, asn1.NullBytes)), ctx(1, mgf(sha256Alg)))
		}, ErrMalformed, "3 fields"},
		{"OAEP hash with parameters", func(e *envelope) {
			e.oaepParams = seq(ctx(0, seq(mustMarshal(t, oidSHA256), mustMarshal(t, 1))), ctx(1, mgf(sha256Alg)))
		}, ErrMalformed, "parameters other than NULL"},
		{"two recipients", func(e *envelope) { e.extraRecipient = true }, ErrUnsupported, "2 recipients"},
		{"issuerAndSerialNumber", func(e *envelope) {
			e.rid = seq(seq(), mustMarshal(t, 1))
			e.ktriVersion = 3 // avoid failing on the version first
		}, ErrUnsupported, "version 3"},
		{"issuerAndSerialNumber, version 2", func(e *envelope) { e.rid = seq(seq(), mustMarshal(t, 1)) }, ErrUnsupported, "issuerAndSerialNumber"},
		{"empty SKI", func(e *envelope) { e.ski = []byte{} }, ErrMalformed, "subject key identifier of 0 bytes"},
		{"long SKI", func(e *envelope) { e.ski = make([]byte, 65) }, ErrMalformed, "subject key identifier of 65 bytes"},
		{"EnvelopedData version 3", func(e *envelope) { e.version = 3 }, ErrUnsupported, "EnvelopedData version 3"},
		{"originatorInfo", func(e *envelope) { e.originatorInfo = true }, ErrUnsupported, "originatorInfo"},
		{"unprotectedAttrs", func(e *envelope) { e.unprotectedAttrs = true }, ErrUnsupported, "unprotectedAttrs"},
		{"signed data", func(e *envelope) { e.contentType = mustMarshal(t, asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 7, 2}) }, ErrUnsupported, "id-envelopedData"},
		{"trailing bytes", func(e *envelope) { e.trailing = []byte{0x04, 0x00} }, ErrMalformed, "trailing"},
		{"trailing zero bytes", func(e *envelope) { e.trailing = []byte{0, 0} }, ErrMalformed, "trailing"},
	} {
		for _, indefinite := range []bool{false, true} { // DER, or KMS's BER shape
			name := tc.name + ", DER"
			if indefinite {
				name = tc.name + ", BER"
			}
			t.Run(name, func(t *testing.T) {
				e := newEnvelope(t, &key.PublicKey, []byte("secret"))
				e.indefinite = indefinite
				tc.mod(e)
				got, err := DecryptEnvelopedData(key, e.build(t))
				if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.msg) {
					t.Fatalf("got %x, %v; want %v containing %q", got, err, tc.want, tc.msg)
				}
			})
		}
	}
}

// encryptRaw encrypts padded (already a block multiple) as is, so tests can
// write bad padding.
func encryptRaw(t testing.TB, e *envelope, padded []byte) []byte {
	block, err := aes.NewCipher(e.contentKey)
	if err != nil {
		t.Fatal(err)
	}
	ct := make([]byte, len(padded))
	cipher.NewCBCEncrypter(block, e.iv).CryptBlocks(ct, padded)
	return ct
}

func TestDecryptRejectsBadInputAndKeys(t *testing.T) {
	key, ber, _ := vector(t)
	small, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		key  *rsa.PrivateKey
		in   []byte
		want string
	}{
		{"nil key", nil, ber, "nil private key"},
		{"1024-bit key", small, ber, "at least 2048"},
		{"empty", key, nil, "empty"},
		{"oversized", key, append(bytes.Clone(ber), make([]byte, MaxEnvelopeSize)...), "more than"},
		{"absurd length", key, []byte{0x30, 0x84, 0x7f, 0xff, 0xff, 0xff, 0x06}, "claims"},
		{"not a sequence", key, []byte{0x04, 0x01, 0x00}, "ContentInfo is not a SEQUENCE"},
		{"two elements in ContentInfo's [0]", key, appendTLV(nil, 0x30, append(mustMarshal(t, oidEnvelopedData), appendTLV(nil, 0xa0, []byte{0x30, 0x00, 0x05, 0x00})...)), "EnvelopedData: 2 bytes of trailing data"},
		{"EnvelopedData not a SEQUENCE", key, appendTLV(nil, 0x30, append(mustMarshal(t, oidEnvelopedData), appendTLV(nil, 0xa0, []byte{0x31, 0x00})...)), "EnvelopedData is not a SEQUENCE"},
		{"ContentInfo without content", key, mustMarshal(t, struct{ OID asn1.ObjectIdentifier }{oidEnvelopedData}), "ContentInfo is not"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := DecryptEnvelopedData(tc.key, tc.in); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

// Bad padding is one error, whatever the decrypted bytes: its message must
// not carry them (the last byte was printed as the "length"), since whoever
// sees the errors of envelopes it altered would read plaintext from them, one
// byte per request, rather than guess it as a padding oracle does.
func TestDecryptBadPaddingSaysNothingOfThePlaintext(t *testing.T) {
	key := testKey(t)
	var msgs []string
	for _, last := range []byte{0, 17, 0x20, 0x7f, 0xa5, 0xff} {
		e := newEnvelope(t, &key.PublicKey, nil)
		e.ciphertext = encryptRaw(t, e, append(bytes.Repeat([]byte{last}, 15), last))
		_, err := DecryptEnvelopedData(key, e.build(t))
		if !errors.Is(err, ErrMalformed) {
			t.Fatalf("last byte %#x: %v, want ErrMalformed", last, err)
		}
		msgs = append(msgs, err.Error())
	}
	for _, pt := range [][]byte{append(make([]byte, 13), 1, 3, 3), append(make([]byte, 15), 2)} {
		e := newEnvelope(t, &key.PublicKey, nil)
		e.ciphertext = encryptRaw(t, e, pt)
		_, err := DecryptEnvelopedData(key, e.build(t))
		if err == nil {
			t.Fatalf("%x: no error", pt)
		}
		msgs = append(msgs, err.Error())
	}
	for _, m := range msgs[1:] {
		if m != msgs[0] {
			t.Fatalf("bad padding gives different errors: %q", msgs)
		}
	}
}
