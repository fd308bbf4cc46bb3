package kms

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"fmt"
)

// Errors of DecryptEnvelopedData (and Recipient.Decrypt). Every error it
// returns matches exactly one of them with errors.Is, and its message says
// what was wrong.
var (
	// ErrMalformed: the input is not a well-formed CMS EnvelopedData (bad
	// BER, wrong structure, trailing data, bad sizes, bad padding).
	ErrMalformed = errors.New("kms: malformed CiphertextForRecipient")
	// ErrUnsupported: well-formed, but not what KMS sends: another content
	// type, version, recipient kind, number of recipients, or algorithm.
	ErrUnsupported = errors.New("kms: unsupported CiphertextForRecipient")
	// ErrWrongKey: the envelope is not addressed to this key (its subject
	// key identifier differs) or its content key does not decrypt with it.
	ErrWrongKey = errors.New("kms: CiphertextForRecipient is not for this key")
)

// Object identifiers (RFC 5652, RFC 8017, RFC 4055, RFC 3565).
var (
	oidData           = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 7, 1}
	oidEnvelopedData  = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 7, 3}
	oidRSAESOAEP      = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 7}
	oidMGF1           = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 8}
	oidPSpecified     = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 9}
	oidSHA256         = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 2, 1}
	oidAES256CBC      = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 1, 42}
	envelopedVersion  = 2 // RFC 5652 §6.1: a KeyTransRecipientInfo v2 makes the EnvelopedData v2
	ktriVersionSKI    = 2 // RFC 5652 §6.2.1: rid = subjectKeyIdentifier
	maxSKISize        = 64
	aes256KeySize     = 32
	minRSAKeyBits     = 2048
	maxCiphertextSize = MaxEnvelopeSize
)

// DecryptEnvelopedData decrypts a CMS EnvelopedData (RFC 5652), in BER or
// DER, of exactly the shape that AWS KMS returns as CiphertextForRecipient:
// one KeyTransRecipientInfo (version 2) naming the recipient by subject key
// identifier, which must be SHA-256 of key's public key (DER
// SubjectPublicKeyInfo, as KMS computes it), the content key encrypted with
// RSAES-OAEP with SHA-256 and MGF1-SHA-256 and an empty label, and the
// content (type id-data) encrypted with AES-256-CBC, PKCS#7 padding. Anything
// else is rejected: more or fewer recipients, originatorInfo or
// unprotectedAttrs, other algorithms or parameters, trailing data, more than
// MaxEnvelopeSize bytes. key must be at least 2048 bits.
//
// The envelope is not authenticated: anyone who knows key's public key can
// make one. Trust the plaintext because the envelope arrived in KMS's answer
// over TLS, not because it decrypts.
func DecryptEnvelopedData(key *rsa.PrivateKey, ber []byte) ([]byte, error) {
	if key == nil {
		return nil, errors.New("kms: nil private key")
	}
	if bits := key.N.BitLen(); bits < minRSAKeyBits {
		return nil, fmt.Errorf("kms: RSA key of %d bits, at least %d required", bits, minRSAKeyBits)
	}
	der, err := berToDER(ber)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}

	// ContentInfo ::= SEQUENCE { contentType, [0] EXPLICIT content }
	var outer asn1.RawValue
	if err := unmarshalAll(der, &outer, "ContentInfo"); err != nil {
		return nil, err
	}
	cif, err := sequence(outer, "ContentInfo")
	if err != nil {
		return nil, err
	}
	if len(cif) != 2 || !isContext(cif[1], 0) || !cif[1].IsCompound {
		return nil, fmt.Errorf("%w: ContentInfo is not { contentType, [0] content }", ErrMalformed)
	}
	var contentType asn1.ObjectIdentifier
	if err := unmarshalAll(cif[0].FullBytes, &contentType, "ContentInfo contentType"); err != nil {
		return nil, err
	}
	if !contentType.Equal(oidEnvelopedData) {
		return nil, fmt.Errorf("%w: content type %v, want id-envelopedData %v", ErrUnsupported, contentType, oidEnvelopedData)
	}

	// EnvelopedData ::= SEQUENCE { version, originatorInfo [0] OPTIONAL,
	//   recipientInfos SET, encryptedContentInfo, unprotectedAttrs [1] OPTIONAL }
	var ed asn1.RawValue
	if err := unmarshalAll(cif[1].Bytes, &ed, "EnvelopedData"); err != nil {
		return nil, err
	}
	fields, err := sequence(ed, "EnvelopedData")
	if err != nil {
		return nil, err
	}
	if len(fields) < 3 {
		return nil, fmt.Errorf("%w: EnvelopedData has %d fields, want 3", ErrMalformed, len(fields))
	}
	if err := checkVersion(fields[0], envelopedVersion, "EnvelopedData"); err != nil {
		return nil, err
	}
	if isContext(fields[1], 0) {
		return nil, fmt.Errorf("%w: EnvelopedData has originatorInfo", ErrUnsupported)
	}
	if len(fields) > 3 {
		if isContext(fields[3], 1) {
			return nil, fmt.Errorf("%w: EnvelopedData has unprotectedAttrs", ErrUnsupported)
		}
		return nil, fmt.Errorf("%w: EnvelopedData has %d fields, want 3", ErrMalformed, len(fields))
	}
	if !isUniversal(fields[1], asn1.TagSet, true) {
		return nil, fmt.Errorf("%w: EnvelopedData recipientInfos is not a SET", ErrMalformed)
	}
	recipients, err := elements(fields[1].Bytes, "recipientInfos")
	if err != nil {
		return nil, err
	}
	if len(recipients) != 1 {
		return nil, fmt.Errorf("%w: %d recipients, want exactly 1", ErrUnsupported, len(recipients))
	}

	// Parse the content before the costly RSA step, so that malformed input
	// fails cheaply.
	iv, ciphertext, err := parseEncryptedContentInfo(fields[2])
	if err != nil {
		return nil, err
	}
	contentKey, err := decryptContentKey(key, recipients[0])
	if err != nil {
		return nil, err
	}
	return decryptAES256CBC(contentKey, iv, ciphertext)
}

// decryptContentKey checks a KeyTransRecipientInfo and decrypts its
// encryptedKey with key.
//
//	KeyTransRecipientInfo ::= SEQUENCE { version, rid, keyEncryptionAlgorithm, encryptedKey }
func decryptContentKey(key *rsa.PrivateKey, ri asn1.RawValue) ([]byte, error) {
	if ri.Class == asn1.ClassContextSpecific {
		return nil, fmt.Errorf("%w: recipient is not a KeyTransRecipientInfo (CHOICE [%d])", ErrUnsupported, ri.Tag)
	}
	fields, err := sequence(ri, "KeyTransRecipientInfo")
	if err != nil {
		return nil, err
	}
	if len(fields) != 4 {
		return nil, fmt.Errorf("%w: KeyTransRecipientInfo has %d fields, want 4", ErrMalformed, len(fields))
	}
	if err := checkVersion(fields[0], ktriVersionSKI, "KeyTransRecipientInfo"); err != nil {
		return nil, err
	}

	// rid: [0] IMPLICIT SubjectKeyIdentifier (OCTET STRING).
	rid := fields[1]
	if !isContext(rid, 0) || rid.IsCompound {
		return nil, fmt.Errorf("%w: recipient not named by subject key identifier (issuerAndSerialNumber is not supported)", ErrUnsupported)
	}
	if n := len(rid.Bytes); n == 0 || n > maxSKISize {
		return nil, fmt.Errorf("%w: subject key identifier of %d bytes", ErrMalformed, n)
	}
	spki, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return nil, fmt.Errorf("kms: encoding the public key: %w", err)
	}
	want := sha256.Sum256(spki)
	if !bytes.Equal(rid.Bytes, want[:]) {
		return nil, fmt.Errorf("%w: subject key identifier %x, this key's is %x", ErrWrongKey, rid.Bytes, want)
	}

	if err := checkOAEP(fields[2]); err != nil {
		return nil, err
	}

	ek := fields[3]
	if !isUniversal(ek, asn1.TagOctetString, false) {
		return nil, fmt.Errorf("%w: encryptedKey is not an OCTET STRING", ErrMalformed)
	}
	if len(ek.Bytes) != key.Size() {
		return nil, fmt.Errorf("%w: encryptedKey of %d bytes, want %d for this key", ErrMalformed, len(ek.Bytes), key.Size())
	}
	contentKey, err := rsa.DecryptOAEP(sha256.New(), nil, key, ek.Bytes, nil)
	if err != nil {
		return nil, fmt.Errorf("%w: RSAES-OAEP decryption of the content key failed", ErrWrongKey)
	}
	if len(contentKey) != aes256KeySize {
		return nil, fmt.Errorf("%w: content key of %d bytes, want %d (AES-256)", ErrMalformed, len(contentKey), aes256KeySize)
	}
	return contentKey, nil
}

// checkOAEP requires RSAES-OAEP with SHA-256, MGF1 with SHA-256 and, if
// given, an empty pSpecified label (RFC 4055 §4.1). The defaults (SHA-1) are
// refused, so the hash and mask generation parameters must be present.
func checkOAEP(alg asn1.RawValue) error {
	ai, err := parseAlgorithm(alg.FullBytes, "keyEncryptionAlgorithm")
	if err != nil {
		return err
	}
	if !ai.Algorithm.Equal(oidRSAESOAEP) {
		return fmt.Errorf("%w: key encryption algorithm %v, want RSAES-OAEP %v", ErrUnsupported, ai.Algorithm, oidRSAESOAEP)
	}
	if ai.Parameters == nil {
		return fmt.Errorf("%w: RSAES-OAEP without parameters (SHA-1 defaults), want SHA-256", ErrUnsupported)
	}
	// RSAES-OAEP-params ::= SEQUENCE { hashAlgorithm [0], maskGenAlgorithm [1], pSourceAlgorithm [2] }
	var pv asn1.RawValue
	if err := unmarshalAll(ai.Parameters, &pv, "RSAES-OAEP parameters"); err != nil {
		return err
	}
	params, err := sequence(pv, "RSAES-OAEP parameters")
	if err != nil {
		return err
	}
	var hash, mgf, psource *asn1.RawValue
	last := -1
	for i := range params {
		p := &params[i]
		if p.Class != asn1.ClassContextSpecific || !p.IsCompound || p.Tag > 2 || p.Tag <= last {
			return fmt.Errorf("%w: unexpected field in RSAES-OAEP parameters", ErrMalformed)
		}
		last = p.Tag
		switch p.Tag {
		case 0:
			hash = p
		case 1:
			mgf = p
		case 2:
			psource = p
		}
	}
	if hash == nil {
		return fmt.Errorf("%w: RSAES-OAEP hash is the SHA-1 default, want SHA-256", ErrUnsupported)
	}
	if err := checkSHA256(hash.Bytes, "RSAES-OAEP hash"); err != nil {
		return err
	}
	if mgf == nil {
		return fmt.Errorf("%w: RSAES-OAEP mask generation is the MGF1-SHA-1 default, want MGF1-SHA-256", ErrUnsupported)
	}
	mai, err := parseAlgorithm(mgf.Bytes, "RSAES-OAEP mask generation algorithm")
	if err != nil {
		return err
	}
	if !mai.Algorithm.Equal(oidMGF1) {
		return fmt.Errorf("%w: RSAES-OAEP mask generation %v, want MGF1 %v", ErrUnsupported, mai.Algorithm, oidMGF1)
	}
	if err := checkSHA256(mai.Parameters, "MGF1 hash"); err != nil {
		return err
	}
	if psource != nil {
		pai, err := parseAlgorithm(psource.Bytes, "RSAES-OAEP label source")
		if err != nil {
			return err
		}
		var label []byte
		if !pai.Algorithm.Equal(oidPSpecified) {
			return fmt.Errorf("%w: RSAES-OAEP label source %v, want pSpecified %v", ErrUnsupported, pai.Algorithm, oidPSpecified)
		}
		if err := unmarshalAll(pai.Parameters, &label, "RSAES-OAEP label"); err != nil {
			return err
		}
		if len(label) != 0 {
			return fmt.Errorf("%w: RSAES-OAEP label of %d bytes, want empty", ErrUnsupported, len(label))
		}
	}
	return nil
}

// checkSHA256 requires der to be the AlgorithmIdentifier of SHA-256, with
// NULL or absent parameters (RFC 4055 §2.1 allows both).
func checkSHA256(der []byte, what string) error {
	ai, err := parseAlgorithm(der, what)
	if err != nil {
		return err
	}
	if !ai.Algorithm.Equal(oidSHA256) {
		return fmt.Errorf("%w: %s %v, want SHA-256 %v", ErrUnsupported, what, ai.Algorithm, oidSHA256)
	}
	if p := ai.Parameters; p != nil && !bytes.Equal(p, asn1.NullBytes) {
		return fmt.Errorf("%w: %s has parameters other than NULL", ErrMalformed, what)
	}
	return nil
}

// parseEncryptedContentInfo returns the IV and the ciphertext.
//
//	EncryptedContentInfo ::= SEQUENCE { contentType, contentEncryptionAlgorithm,
//	  encryptedContent [0] IMPLICIT OCTET STRING OPTIONAL }
func parseEncryptedContentInfo(eci asn1.RawValue) (iv, ciphertext []byte, err error) {
	fields, err := sequence(eci, "EncryptedContentInfo")
	if err != nil {
		return nil, nil, err
	}
	if len(fields) == 2 {
		return nil, nil, fmt.Errorf("%w: EncryptedContentInfo has no encryptedContent", ErrMalformed)
	}
	if len(fields) != 3 {
		return nil, nil, fmt.Errorf("%w: EncryptedContentInfo has %d fields, want 3", ErrMalformed, len(fields))
	}
	var ct asn1.ObjectIdentifier
	if err := unmarshalAll(fields[0].FullBytes, &ct, "EncryptedContentInfo contentType"); err != nil {
		return nil, nil, err
	}
	if !ct.Equal(oidData) {
		return nil, nil, fmt.Errorf("%w: encrypted content type %v, want id-data %v", ErrUnsupported, ct, oidData)
	}
	ai, err := parseAlgorithm(fields[1].FullBytes, "contentEncryptionAlgorithm")
	if err != nil {
		return nil, nil, err
	}
	if !ai.Algorithm.Equal(oidAES256CBC) {
		return nil, nil, fmt.Errorf("%w: content encryption algorithm %v, want AES-256-CBC %v", ErrUnsupported, ai.Algorithm, oidAES256CBC)
	}
	if err := unmarshalAll(ai.Parameters, &iv, "AES-256-CBC IV"); err != nil {
		return nil, nil, err
	}
	if len(iv) != aes.BlockSize {
		return nil, nil, fmt.Errorf("%w: AES-256-CBC IV of %d bytes, want %d", ErrMalformed, len(iv), aes.BlockSize)
	}

	enc := fields[2]
	if !isContext(enc, 0) {
		return nil, nil, fmt.Errorf("%w: encryptedContent is not [0]", ErrMalformed)
	}
	if enc.IsCompound {
		// Segmented: [0] IMPLICIT holding OCTET STRINGs (the normaliser has
		// already flattened any nested constructed OCTET STRING).
		segs, err := elements(enc.Bytes, "encryptedContent")
		if err != nil {
			return nil, nil, err
		}
		for _, s := range segs {
			if !isUniversal(s, asn1.TagOctetString, false) {
				return nil, nil, fmt.Errorf("%w: encryptedContent segment is not an OCTET STRING", ErrMalformed)
			}
			ciphertext = append(ciphertext, s.Bytes...)
		}
	} else {
		ciphertext = enc.Bytes
	}
	if n := len(ciphertext); n == 0 || n%aes.BlockSize != 0 || n > maxCiphertextSize {
		return nil, nil, fmt.Errorf("%w: encrypted content of %d bytes, want a positive multiple of %d", ErrMalformed, n, aes.BlockSize)
	}
	return iv, ciphertext, nil
}

// decryptAES256CBC decrypts and removes PKCS#7 padding (RFC 5652 §6.3),
// checking it strictly. The check reads the whole last block in constant
// time and bad padding is one error, which says nothing of the decrypted
// bytes: the envelope is not authenticated, so whoever sees the outcome of
// envelopes it altered has a padding oracle, and must get no more.
func decryptAES256CBC(key, iv, ciphertext []byte) ([]byte, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	out := make([]byte, len(ciphertext))
	cipher.NewCBCDecrypter(block, iv).CryptBlocks(out, ciphertext)
	pad := int(out[len(out)-1])
	good := subtle.ConstantTimeLessOrEq(1, pad) & subtle.ConstantTimeLessOrEq(pad, aes.BlockSize)
	for i := 1; i <= aes.BlockSize; i++ {
		inPad := subtle.ConstantTimeLessOrEq(i, pad)
		good &= subtle.ConstantTimeByteEq(out[len(out)-i], byte(pad)) | (inPad ^ 1)
	}
	if good != 1 {
		return nil, fmt.Errorf("%w: bad padding", ErrMalformed)
	}
	return out[:len(out)-pad], nil
}

// algorithmIdentifier is an AlgorithmIdentifier; Parameters is the DER of
// the parameters, nil when absent.
type algorithmIdentifier struct {
	Algorithm  asn1.ObjectIdentifier
	Parameters []byte
}

// parseAlgorithm decodes der as AlgorithmIdentifier ::= SEQUENCE {
// algorithm OBJECT IDENTIFIER, parameters ANY OPTIONAL } and, unlike
// encoding/asn1 with a struct, rejects further elements.
func parseAlgorithm(der []byte, what string) (algorithmIdentifier, error) {
	var v asn1.RawValue
	if err := unmarshalAll(der, &v, what); err != nil {
		return algorithmIdentifier{}, err
	}
	f, err := sequence(v, what)
	if err != nil {
		return algorithmIdentifier{}, err
	}
	if len(f) < 1 || len(f) > 2 {
		return algorithmIdentifier{}, fmt.Errorf("%w: %s has %d fields, want 1 or 2", ErrMalformed, what, len(f))
	}
	var ai algorithmIdentifier
	if err := unmarshalAll(f[0].FullBytes, &ai.Algorithm, what+" algorithm"); err != nil {
		return algorithmIdentifier{}, err
	}
	if len(f) == 2 {
		ai.Parameters = f[1].FullBytes
	}
	return ai, nil
}

// unmarshalAll decodes der into v and rejects trailing bytes.
func unmarshalAll(der []byte, v any, what string) error {
	rest, err := asn1.Unmarshal(der, v)
	if err != nil {
		return fmt.Errorf("%w: %s: %v", ErrMalformed, what, err)
	}
	if len(rest) != 0 {
		return fmt.Errorf("%w: %s: %d bytes of trailing data", ErrMalformed, what, len(rest))
	}
	return nil
}

// sequence returns the elements of a universal SEQUENCE.
func sequence(v asn1.RawValue, what string) ([]asn1.RawValue, error) {
	if !isUniversal(v, asn1.TagSequence, true) {
		return nil, fmt.Errorf("%w: %s is not a SEQUENCE", ErrMalformed, what)
	}
	return elements(v.Bytes, what)
}

// elements splits the contents of a constructed element. The count is
// bounded by the input size (at least 2 bytes per element).
func elements(b []byte, what string) ([]asn1.RawValue, error) {
	var out []asn1.RawValue
	for len(b) > 0 {
		var v asn1.RawValue
		rest, err := asn1.Unmarshal(b, &v)
		if err != nil {
			return nil, fmt.Errorf("%w: %s: %v", ErrMalformed, what, err)
		}
		out = append(out, v)
		b = rest
	}
	return out, nil
}

func checkVersion(v asn1.RawValue, want int, what string) error {
	var got int
	if err := unmarshalAll(v.FullBytes, &got, what+" version"); err != nil {
		return err
	}
	if got != want {
		return fmt.Errorf("%w: %s version %d, want %d", ErrUnsupported, what, got, want)
	}
	return nil
}

func isUniversal(v asn1.RawValue, tag int, compound bool) bool {
	return v.Class == asn1.ClassUniversal && v.Tag == tag && v.IsCompound == compound
}

func isContext(v asn1.RawValue, tag int) bool {
	return v.Class == asn1.ClassContextSpecific && v.Tag == tag
}
