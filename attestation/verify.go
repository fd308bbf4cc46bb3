package attestation

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/fxamacker/cbor/v2"
	"github.com/hf/nitrite"
)

// Options is the verification policy for Verify. Only Time is required; every
// other check runs only when its field is set.
type Options struct {
	// Time is the instant at which the certificate chain must be valid and
	// from which MaxAge is measured. Required: Verify fails with
	// ErrTimeRequired when it is zero, rather than reading the clock.
	Time time.Time

	// Roots are the trusted roots. Default (nil): the AWS Nitro Enclaves
	// root G1 only (AWSNitroRoots). Pass DevAttester.Roots to accept
	// development documents.
	Roots *x509.CertPool

	// PCRs are expected measurements, by PCR index (0 to 31); values are 32,
	// 48 or 64 bytes. Only the listed indices are compared; a listed index
	// absent from the document is a mismatch. Default: none checked.
	PCRs map[uint][]byte

	// Nonce, when non-nil, must equal the document's nonce byte for byte;
	// it must not be empty (an empty nonce would match a document that has
	// none, which proves nothing about freshness). Default (nil): not
	// checked.
	Nonce []byte

	// MaxAge, when positive, bounds the distance between the document's
	// timestamp and Time, in either direction (a timestamp ahead of Time
	// means the two clocks disagree by that much). Default (0): not checked.
	MaxAge time.Duration

	// TLSCertHash, when non-nil, must be the SHA-256 (32 bytes) of the TLS
	// certificate the document's user data binds (see UserData and
	// CertHash). Default (nil): not checked.
	TLSCertHash []byte

	// AppKeyHash, when non-nil, must be the SHA-256 (32 bytes) of the
	// application key the document's user data binds. Default: not checked.
	AppKeyHash []byte

	// UserData, when non-nil, must equal the document's user_data byte for
	// byte (for layouts other than UserData); an empty non-nil UserData
	// requires a document without user data. Default: not checked.
	UserData []byte

	// PublicKey, when non-nil, must equal the document's public_key byte
	// for byte; it must not be empty. quench puts the SHA-256 of its
	// configuration there in /enclave/config's documents (see
	// VerifyRemoteConfig). Default: not checked.
	PublicKey []byte
}

func (o *Options) validate() error {
	if o.Time.IsZero() {
		return ErrTimeRequired
	}
	for i, v := range o.PCRs {
		if i > maxPCRIndex {
			return fmt.Errorf("%w: PCR index %d out of range [0, %d]", ErrInvalidOptions, i, maxPCRIndex)
		}
		if n := len(v); n != 32 && n != 48 && n != 64 {
			return fmt.Errorf("%w: PCR%d value is %d bytes, want 32, 48 or 64", ErrInvalidOptions, i, n)
		}
	}
	if o.TLSCertHash != nil && len(o.TLSCertHash) != sha256.Size {
		return fmt.Errorf("%w: TLSCertHash is %d bytes, want %d", ErrInvalidOptions, len(o.TLSCertHash), sha256.Size)
	}
	if o.AppKeyHash != nil && len(o.AppKeyHash) != sha256.Size {
		return fmt.Errorf("%w: AppKeyHash is %d bytes, want %d", ErrInvalidOptions, len(o.AppKeyHash), sha256.Size)
	}
	if o.Nonce != nil && len(o.Nonce) == 0 {
		return fmt.Errorf("%w: empty Nonce (leave it nil to skip the nonce check)", ErrInvalidOptions)
	}
	if o.PublicKey != nil && len(o.PublicKey) == 0 {
		return fmt.Errorf("%w: empty PublicKey (leave it nil to skip the public key check)", ErrInvalidOptions)
	}
	if o.MaxAge < 0 {
		return fmt.Errorf("%w: negative MaxAge %s", ErrInvalidOptions, o.MaxAge)
	}
	return nil
}

// Check names one verification step, as listed in Result.Checks.
type Check string

// The checks Verify can run, in the order it runs them.
const (
	CheckSignature   Check = "signature"         // COSE_Sign1 signature by the document's certificate
	CheckChain       Check = "certificate_chain" // certificate chain to Options.Roots at Options.Time
	CheckPCRs        Check = "pcrs"              // Options.PCRs
	CheckNonce       Check = "nonce"             // Options.Nonce
	CheckMaxAge      Check = "max_age"           // Options.MaxAge
	CheckUserData    Check = "user_data"         // Options.UserData
	CheckTLSCertHash Check = "tls_cert_hash"     // Options.TLSCertHash
	CheckAppKeyHash  Check = "app_key_hash"      // Options.AppKeyHash
	CheckPublicKey   Check = "public_key"        // Options.PublicKey
)

// Result is a verified attestation document. Verify returns one only when
// every requested check passed.
type Result struct {
	ModuleID  string
	Timestamp time.Time // millisecond precision
	Digest    string    // "SHA384"
	PCRs      map[uint][]byte

	// Certificate signed the document; CABundle is the bundle from the
	// document, in its order (root first, as the NSM writes it).
	Certificate *x509.Certificate
	CABundle    []*x509.Certificate

	PublicKey []byte // nil when absent
	UserData  []byte // nil when absent
	Nonce     []byte // nil when absent

	// Checks lists the checks that ran (and passed), in order.
	Checks []Check
}

// Verify checks an attestation document (raw COSE_Sign1 bytes, see
// DecodeDocument) against opts, on top of nitrite.Verify: signature,
// certificate chain to opts.Roots at opts.Time, then the policy checks that
// opts asks for. It returns a Result only if every check passed; otherwise
// the error matches one sentinel (ErrBadDocument, ErrUntrustedChain,
// ErrBadSignature, ErrPCRMismatch, ErrNonceMismatch, ErrTooOld,
// ErrUserDataMismatch, ErrPublicKeyMismatch, ErrTimeRequired,
// ErrInvalidOptions) and nitrite's own
// sentinels stay matchable with errors.Is.
//
// Certificate revocation is not checked (Nitro publishes no CRLs).
func Verify(doc []byte, opts Options) (*Result, error) {
	if err := opts.validate(); err != nil {
		return nil, err
	}
	if len(doc) > MaxDocumentSize {
		return nil, &BadDocumentError{Err: fmt.Errorf("%d bytes, more than %d", len(doc), MaxDocumentSize)}
	}
	if err := precheck(doc); err != nil {
		return nil, err
	}
	roots := opts.Roots
	if roots == nil {
		roots = AWSNitroRoots()
	}
	nres, err := callNitrite(doc, nitrite.VerifyOptions{Roots: roots, CurrentTime: opts.Time})
	switch {
	case nres == nil && err != nil:
		return nil, &BadDocumentError{Err: err}
	case nres == nil:
		return nil, &BadDocumentError{Err: errors.New("nitrite returned no result")}
	case errors.Is(err, nitrite.ErrBadSignature) || (err == nil && !nres.SignatureOK):
		return nil, fmt.Errorf("attestation: document signature invalid: %w", nitrite.ErrBadSignature)
	case err != nil:
		return nil, &ChainError{Err: err, BadSignature: !nres.SignatureOK}
	}
	d := nres.Document
	if d.Timestamp > math.MaxInt64 {
		return nil, &BadDocumentError{Err: fmt.Errorf("timestamp %d out of range", d.Timestamp)}
	}
	res := &Result{
		ModuleID:  d.ModuleID,
		Timestamp: time.UnixMilli(int64(d.Timestamp)),
		Digest:    d.Digest,
		PCRs:      d.PCRs,
		PublicKey: d.PublicKey,
		UserData:  d.UserData,
		Nonce:     d.Nonce,
		Checks:    []Check{CheckSignature, CheckChain},
	}
	if len(nres.Certificates) > 0 {
		res.Certificate = nres.Certificates[0]
		res.CABundle = nres.Certificates[1:]
	}

	if opts.PCRs != nil {
		idx := make([]uint, 0, len(opts.PCRs))
		for i := range opts.PCRs {
			idx = append(idx, i)
		}
		slices.Sort(idx)
		for _, i := range idx {
			got, ok := d.PCRs[i]
			if !ok {
				got = nil
			}
			if !ok || !bytes.Equal(got, opts.PCRs[i]) {
				return nil, &PCRMismatchError{Index: i, Want: opts.PCRs[i], Got: got}
			}
		}
		res.Checks = append(res.Checks, CheckPCRs)
	}
	if opts.Nonce != nil {
		if !bytes.Equal(d.Nonce, opts.Nonce) {
			return nil, &NonceMismatchError{Want: opts.Nonce, Got: d.Nonce}
		}
		res.Checks = append(res.Checks, CheckNonce)
	}
	if opts.MaxAge > 0 {
		// Compare instants, not a Duration between them: Time.Sub saturates
		// for timestamps centuries apart, and negating the saturated value
		// overflows.
		if res.Timestamp.Before(opts.Time.Add(-opts.MaxAge)) || res.Timestamp.After(opts.Time.Add(opts.MaxAge)) {
			return nil, &TooOldError{Timestamp: res.Timestamp, At: opts.Time, MaxAge: opts.MaxAge}
		}
		res.Checks = append(res.Checks, CheckMaxAge)
	}
	if opts.UserData != nil {
		if !bytes.Equal(d.UserData, opts.UserData) {
			return nil, &UserDataMismatchError{Field: "user_data", Want: opts.UserData, Got: d.UserData}
		}
		res.Checks = append(res.Checks, CheckUserData)
	}
	if opts.TLSCertHash != nil || opts.AppKeyHash != nil {
		ud, perr := ParseUserData(d.UserData)
		if opts.TLSCertHash != nil {
			if perr != nil {
				return nil, &UserDataMismatchError{Field: "tls_cert_hash", Want: opts.TLSCertHash, Reason: perr.Error()}
			}
			if !bytes.Equal(ud.TLSCertHash[:], opts.TLSCertHash) {
				return nil, &UserDataMismatchError{Field: "tls_cert_hash", Want: opts.TLSCertHash, Got: ud.TLSCertHash[:]}
			}
			res.Checks = append(res.Checks, CheckTLSCertHash)
		}
		if opts.AppKeyHash != nil {
			if perr != nil {
				return nil, &UserDataMismatchError{Field: "app_key_hash", Want: opts.AppKeyHash, Reason: perr.Error()}
			}
			if len(d.UserData) == userDataTLSOnlySize {
				return nil, &UserDataMismatchError{Field: "app_key_hash", Want: opts.AppKeyHash}
			}
			if !bytes.Equal(ud.AppKeyHash[:], opts.AppKeyHash) {
				return nil, &UserDataMismatchError{Field: "app_key_hash", Want: opts.AppKeyHash, Got: ud.AppKeyHash[:]}
			}
			res.Checks = append(res.Checks, CheckAppKeyHash)
		}
	}
	if opts.PublicKey != nil {
		if !bytes.Equal(d.PublicKey, opts.PublicKey) {
			return nil, fmt.Errorf("%w: want %s, got %s", ErrPublicKeyMismatch, hexOrNone(opts.PublicKey), hexOrNone(d.PublicKey))
		}
		res.Checks = append(res.Checks, CheckPublicKey)
	}
	return res, nil
}

// callNitrite runs nitrite.Verify and turns a panic inside it into an error.
// nitrite is a decoder of hostile bytes pinned at an old version; one panic
// is known (see precheck) and this is the backstop for others.
func callNitrite(doc []byte, o nitrite.VerifyOptions) (res *nitrite.Result, err error) {
	defer func() {
		if r := recover(); r != nil {
			res, err = nil, fmt.Errorf("nitrite panicked: %v", r)
		}
	}()
	return nitrite.Verify(doc, o)
}

// precheck rejects documents that would make nitrite panic: nitrite.Verify
// panics ("unknown ECDSA curve name P-521") when the signing certificate has
// a P-521 key, before any trust decision, so any such document would crash
// a verifier. Documents that do not parse are left for nitrite to report.
func precheck(doc []byte) error {
	var c coseSign1
	if cbor.Unmarshal(doc, &c) != nil {
		return nil
	}
	var p struct {
		Certificate []byte `cbor:"certificate"`
	}
	if cbor.Unmarshal(c.Payload, &p) != nil {
		return nil
	}
	cert, err := x509.ParseCertificate(p.Certificate)
	if err != nil {
		return nil
	}
	k, ok := cert.PublicKey.(*ecdsa.PublicKey)
	if !ok {
		return nil // nitrite rejects non-ECDSA keys itself
	}
	switch k.Curve {
	case elliptic.P224(), elliptic.P256(), elliptic.P384():
		return nil
	}
	return &BadDocumentError{Err: fmt.Errorf("signing certificate key is on curve %s; only P-224, P-256 and P-384 are supported", k.Curve.Params().Name)}
}

// DecodeDocument accepts a document as stored or served: raw COSE_Sign1 bytes,
// or their base64 encoding (standard or URL alphabet, padded or not,
// surrounded by whitespace, as GET /enclave/attestation returns it). The
// result is at most MaxDocumentSize bytes.
func DecodeDocument(data []byte) ([]byte, error) {
	if len(data) > 2*MaxDocumentSize {
		return nil, &BadDocumentError{Err: fmt.Errorf("%d bytes, more than %d", len(data), 2*MaxDocumentSize)}
	}
	if len(data) > 0 && (data[0] == 0x84 || data[0] == 0xd2) {
		// CBOR array of 4 (untagged COSE_Sign1) or tag 18: raw bytes.
		// Neither byte can start base64 text.
		if len(data) > MaxDocumentSize {
			return nil, &BadDocumentError{Err: fmt.Errorf("%d bytes, more than %d", len(data), MaxDocumentSize)}
		}
		return data, nil
	}
	text := bytes.TrimSpace(data)
	if len(text) == 0 {
		return nil, &BadDocumentError{Err: errors.New("empty input")}
	}
	var firstErr error
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		doc, err := enc.DecodeString(string(text))
		if err == nil {
			if len(doc) > MaxDocumentSize {
				return nil, &BadDocumentError{Err: fmt.Errorf("%d bytes, more than %d", len(doc), MaxDocumentSize)}
			}
			return doc, nil
		}
		if firstErr == nil {
			firstErr = err
		}
	}
	return nil, &BadDocumentError{Err: fmt.Errorf("neither CBOR nor base64: %w", firstErr)}
}
