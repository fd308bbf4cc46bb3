package attestation

import (
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/hf/nitrite"
)

// Sentinel errors. Every error returned by [Verify] matches one of the
// "check" sentinels below with [errors.Is] (a ChainError also matches
// ErrBadSignature when both failed); the typed errors
// ([PCRMismatchError], [NonceMismatchError], ...) carry the details and can be
// extracted with [errors.As]. None of them is retryable with the same inputs:
// a document that failed a check must not be used.
var (
	// ErrTimeRequired is returned by Verify when Options.Time is zero. The
	// verification time is never taken implicitly from the clock.
	ErrTimeRequired = errors.New("attestation: verification time is required (Options.Time is zero)")

	// ErrInvalidOptions is returned by Verify when Options are malformed
	// (a PCR index above 31, a PCR value of the wrong length, a hash that
	// is not 32 bytes). The document was not examined.
	ErrInvalidOptions = errors.New("attestation: invalid verify options")

	// ErrBadDocument means the bytes are not a well-formed Nitro attestation
	// document (COSE_Sign1 over the NSM CBOR payload), or are larger than
	// MaxDocumentSize. nitrite's parse errors (nitrite.ErrBadCOSESign1Structure,
	// nitrite.ErrMandatoryFieldsMissing, ...) are wrapped as well.
	ErrBadDocument = errors.New("attestation: malformed attestation document")

	// ErrUntrustedChain means the document's certificate chain does not lead
	// to a trusted root at Options.Time (expired, not yet valid, unknown
	// root). The crypto/x509 error is wrapped too.
	ErrUntrustedChain = errors.New("attestation: certificate chain not trusted")

	// ErrBadSignature is nitrite's own sentinel: the COSE signature does not
	// verify with the document's signing certificate. It is the same value as
	// nitrite.ErrBadSignature, so either can be used with errors.Is.
	ErrBadSignature = nitrite.ErrBadSignature

	// ErrPCRMismatch: an expected PCR differs or is absent. See PCRMismatchError.
	ErrPCRMismatch = errors.New("attestation: PCR mismatch")

	// ErrNonceMismatch: the document's nonce is not the expected one. See
	// NonceMismatchError.
	ErrNonceMismatch = errors.New("attestation: nonce mismatch")

	// ErrTooOld: the document's timestamp is further than Options.MaxAge from
	// Options.Time. See TooOldError.
	ErrTooOld = errors.New("attestation: document not fresh")

	// ErrUserDataMismatch: the document's user data does not bind the expected
	// TLS certificate hash, application key hash or exact bytes. See
	// UserDataMismatchError.
	ErrUserDataMismatch = errors.New("attestation: user data mismatch")

	// ErrPublicKeyMismatch: the document's public_key is not
	// Options.PublicKey (for /enclave/config: not the hash of the
	// configuration served with it).
	ErrPublicKeyMismatch = errors.New("attestation: public key mismatch")

	// ErrBadUserData is returned by ParseUserData for bytes in none of the
	// known layouts.
	ErrBadUserData = errors.New("attestation: user data not in a known layout")

	// ErrBadRequest is returned by Attest when a Request exceeds the NSM
	// limits (MaxNonceSize, MaxUserDataSize, MaxPublicKeySize).
	ErrBadRequest = errors.New("attestation: invalid attestation request")

	// ErrNoNSM means /dev/nsm does not exist: the process is not running in a
	// Nitro Enclave (or the nsm driver is not loaded). The os error is
	// wrapped too.
	ErrNoNSM = errors.New("attestation: /dev/nsm not found (not running in a Nitro Enclave?)")

	// ErrClosed is returned by an Attester used after Close.
	ErrClosed = errors.New("attestation: attester closed")

	// ErrEntropyNotCredited is returned by SeedEntropy when the bytes were
	// mixed into the kernel pool but could not be credited as entropy
	// (RNDADDENTROPY needs CAP_SYS_ADMIN). The caller may carry on: the
	// pool is no weaker than before.
	ErrEntropyNotCredited = errors.New("attestation: entropy mixed in but not credited")
)

// BadDocumentError reports a malformed document. It matches ErrBadDocument and
// the wrapped cause (for example nitrite.ErrBadDigest) with errors.Is.
type BadDocumentError struct {
	Err error // the cause; never nil
}

func (e *BadDocumentError) Error() string {
	return "attestation: malformed attestation document: " + e.Err.Error()
}

// Unwrap returns ErrBadDocument and the cause.
func (e *BadDocumentError) Unwrap() []error { return []error{ErrBadDocument, e.Err} }

// ChainError reports a certificate chain that does not verify at the given
// time. It matches ErrUntrustedChain, the crypto/x509 error, and also
// ErrBadSignature when the COSE signature was bad as well.
type ChainError struct {
	Err          error // the crypto/x509 error; never nil
	BadSignature bool  // the COSE signature did not verify either
}

func (e *ChainError) Error() string {
	s := "attestation: certificate chain not trusted: " + e.Err.Error()
	if e.BadSignature {
		s += " (and the document signature is invalid)"
	}
	return s
}

// Unwrap returns ErrUntrustedChain, the x509 error and, if the signature was
// bad too, ErrBadSignature.
func (e *ChainError) Unwrap() []error {
	errs := []error{ErrUntrustedChain, e.Err}
	if e.BadSignature {
		errs = append(errs, ErrBadSignature)
	}
	return errs
}

// PCRMismatchError names the first expected PCR (lowest index) that differs.
type PCRMismatchError struct {
	Index uint
	Want  []byte
	Got   []byte // nil when the document has no such PCR
}

func (e *PCRMismatchError) Error() string {
	if e.Got == nil {
		return fmt.Sprintf("attestation: PCR%d mismatch: want %s, document has no PCR%d", e.Index, hex.EncodeToString(e.Want), e.Index)
	}
	return fmt.Sprintf("attestation: PCR%d mismatch: want %s, got %s", e.Index, hex.EncodeToString(e.Want), hex.EncodeToString(e.Got))
}

// Unwrap returns ErrPCRMismatch.
func (e *PCRMismatchError) Unwrap() error { return ErrPCRMismatch }

// NonceMismatchError reports a document whose nonce is not the expected one.
type NonceMismatchError struct {
	Want, Got []byte
}

func (e *NonceMismatchError) Error() string {
	return fmt.Sprintf("attestation: nonce mismatch: want %s, got %s", hexOrNone(e.Want), hexOrNone(e.Got))
}

// Unwrap returns ErrNonceMismatch.
func (e *NonceMismatchError) Unwrap() error { return ErrNonceMismatch }

// TooOldError reports a document whose timestamp is not within MaxAge of the
// verification time.
type TooOldError struct {
	Timestamp time.Time     // the document's timestamp
	At        time.Time     // Options.Time
	MaxAge    time.Duration // Options.MaxAge
}

func (e *TooOldError) Error() string {
	age := e.At.Sub(e.Timestamp)
	if age < 0 {
		return fmt.Sprintf("attestation: document timestamp %s is %s in the future of %s (max age %s)",
			e.Timestamp.UTC().Format(time.RFC3339Nano), -age, e.At.UTC().Format(time.RFC3339), e.MaxAge)
	}
	return fmt.Sprintf("attestation: document is %s old at %s (timestamp %s, max age %s)",
		age, e.At.UTC().Format(time.RFC3339), e.Timestamp.UTC().Format(time.RFC3339Nano), e.MaxAge)
}

// Unwrap returns ErrTooOld.
func (e *TooOldError) Unwrap() error { return ErrTooOld }

// UserDataMismatchError reports user data that does not bind what the
// verifier expected.
type UserDataMismatchError struct {
	Field  string // "tls_cert_hash", "app_key_hash" or "user_data"
	Want   []byte
	Got    []byte // nil when the field is absent
	Reason string // set when the user data could not be parsed
}

func (e *UserDataMismatchError) Error() string {
	if e.Reason != "" {
		return fmt.Sprintf("attestation: user data does not bind %s %s: %s", e.Field, hexOrNone(e.Want), e.Reason)
	}
	return fmt.Sprintf("attestation: user data mismatch: %s want %s, got %s", e.Field, hexOrNone(e.Want), hexOrNone(e.Got))
}

// Unwrap returns ErrUserDataMismatch.
func (e *UserDataMismatchError) Unwrap() error { return ErrUserDataMismatch }

// NSMError is an error code returned by the Nitro Secure Module itself
// (for example "InvalidArgument" or "InputTooLarge").
type NSMError struct {
	Code string
}

func (e *NSMError) Error() string { return "attestation: NSM returned error " + e.Code }

func hexOrNone(b []byte) string {
	if b == nil {
		return "(none)"
	}
	return hex.EncodeToString(b)
}
