package attestation

import (
	"context"
	"fmt"
)

// Limits of the Nitro Secure Module on the optional fields of an attestation
// request. Attesters reject larger requests with ErrBadRequest before
// talking to the device.
const (
	MaxNonceSize     = 512
	MaxUserDataSize  = 512
	MaxPublicKeySize = 1024
)

// MaxDocumentSize bounds the size of an attestation document that Verify and
// DecodeDocument accept. NSM documents are below 12 KiB (the NSM driver's
// response buffer is 0x3000 bytes); anything larger is rejected unread.
const MaxDocumentSize = 16 << 10

// Request is what an attestation document should carry besides the
// measurements. Every field is optional; nil fields are encoded as CBOR null,
// as the NSM does.
type Request struct {
	// Nonce is the verifier's challenge, at most MaxNonceSize bytes.
	Nonce []byte
	// UserData is application data bound into the document, at most
	// MaxUserDataSize bytes. quench puts a UserData (TLS certificate hash
	// and application key hash) here; see UserData.Marshal.
	UserData []byte
	// PublicKey is a public key bound into the document, at most
	// MaxPublicKeySize bytes (the NSM does not interpret it).
	PublicKey []byte
}

func (r Request) validate() error {
	switch {
	case len(r.Nonce) > MaxNonceSize:
		return fmt.Errorf("%w: nonce is %d bytes, at most %d allowed", ErrBadRequest, len(r.Nonce), MaxNonceSize)
	case len(r.UserData) > MaxUserDataSize:
		return fmt.Errorf("%w: user data is %d bytes, at most %d allowed", ErrBadRequest, len(r.UserData), MaxUserDataSize)
	case len(r.PublicKey) > MaxPublicKeySize:
		return fmt.Errorf("%w: public key is %d bytes, at most %d allowed", ErrBadRequest, len(r.PublicKey), MaxPublicKeySize)
	}
	return nil
}

// An Attester produces signed Nitro attestation documents.
//
// Invariants every implementation keeps:
//   - Attest is safe for concurrent use.
//   - The returned bytes are an untagged COSE_Sign1 structure (ES384) over the
//     NSM CBOR payload, exactly as /dev/nsm returns it, and belong to the
//     caller.
//   - A Request outside the NSM limits fails with ErrBadRequest.
//   - After Close (for attesters that have one), Attest returns ErrClosed.
//
// Implementations: NSMAttester (the real device, Linux only) and DevAttester
// (an insecure, self-signed development attester). Pick one explicitly in
// configuration; nothing in quench falls back from one to the other.
type Attester interface {
	Attest(ctx context.Context, req Request) ([]byte, error)
}
