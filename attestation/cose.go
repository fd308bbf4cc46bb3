package attestation

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha512"
	"fmt"
	"slices"

	"github.com/fxamacker/cbor/v2"
)

// nsmPayload is the CBOR map the NSM signs, with its fields in the order the
// NSM emits them. The field types are the ones nitrite.Document decodes.
type nsmPayload struct {
	ModuleID    string   `cbor:"module_id"`
	Digest      string   `cbor:"digest"`
	Timestamp   uint64   `cbor:"timestamp"` // milliseconds since the Unix epoch
	PCRs        pcrMap   `cbor:"pcrs"`
	Certificate []byte   `cbor:"certificate"` // DER of the signing (leaf) certificate
	CABundle    [][]byte `cbor:"cabundle"`    // DER, root first, then intermediates
	PublicKey   []byte   `cbor:"public_key"`  // nil encodes as CBOR null
	UserData    []byte   `cbor:"user_data"`
	Nonce       []byte   `cbor:"nonce"`
}

// pcrMap encodes with its keys in ascending order, as the NSM does (a Go map
// would otherwise be encoded in random order).
type pcrMap map[uint][]byte

// MarshalCBOR implements cbor.Marshaler.
func (m pcrMap) MarshalCBOR() ([]byte, error) {
	if m == nil {
		return []byte{0xf6}, nil
	}
	keys := make([]uint, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var buf bytes.Buffer
	buf.Grow(len(m) * 52)
	head, err := cbor.Marshal(cborMapHeader(len(m)))
	if err != nil {
		return nil, err
	}
	buf.Write(head)
	for _, k := range keys {
		kb, err := cbor.Marshal(k)
		if err != nil {
			return nil, err
		}
		vb, err := cbor.Marshal(m[k])
		if err != nil {
			return nil, err
		}
		buf.Write(kb)
		buf.Write(vb)
	}
	return buf.Bytes(), nil
}

// cborMapHeader marshals to a CBOR map header with n pairs and no content.
type cborMapHeader int

// MarshalCBOR implements cbor.Marshaler: major type 5 with length n.
func (n cborMapHeader) MarshalCBOR() ([]byte, error) {
	// Encode n as an unsigned integer, then switch the major type from 0 to 5.
	b, err := cbor.Marshal(uint64(n))
	if err != nil {
		return nil, err
	}
	b[0] |= 5 << 5
	return b, nil
}

// coseProtectedES384 is the serialized protected header {1: -35} (alg: ES384),
// byte for byte what the NSM emits.
var coseProtectedES384 = []byte{0xa1, 0x01, 0x38, 0x22}

// coseEmptyMap is the unprotected header the NSM emits: an empty map.
var coseEmptyMap = cbor.RawMessage{0xa0}

// coseSign1 is an untagged COSE_Sign1 structure (RFC 8152 section 4.2).
type coseSign1 struct {
	_           struct{} `cbor:",toarray"`
	Protected   []byte
	Unprotected cbor.RawMessage
	Payload     []byte
	Signature   []byte
}

// sigStructure is the Sig_structure that a COSE_Sign1 signature covers.
type sigStructure struct {
	_           struct{} `cbor:",toarray"`
	Context     string
	Protected   []byte
	ExternalAAD []byte
	Payload     []byte
}

// signCOSE wraps payload in a COSE_Sign1 signed with ES384 by key (P-384).
func signCOSE(key *ecdsa.PrivateKey, payload []byte) ([]byte, error) {
	tbs, err := cbor.Marshal(sigStructure{
		Context:     "Signature1",
		Protected:   coseProtectedES384,
		ExternalAAD: []byte{},
		Payload:     payload,
	})
	if err != nil {
		return nil, fmt.Errorf("attestation: encode Sig_structure: %w", err)
	}
	digest := sha512.Sum384(tbs)
	r, s, err := ecdsa.Sign(rand.Reader, key, digest[:])
	if err != nil {
		return nil, fmt.Errorf("attestation: sign document: %w", err)
	}
	size := (key.Curve.Params().BitSize + 7) / 8
	sig := make([]byte, 2*size)
	r.FillBytes(sig[:size])
	s.FillBytes(sig[size:])
	doc, err := cbor.Marshal(coseSign1{
		Protected:   coseProtectedES384,
		Unprotected: coseEmptyMap,
		Payload:     payload,
		Signature:   sig,
	})
	if err != nil {
		return nil, fmt.Errorf("attestation: encode COSE_Sign1: %w", err)
	}
	return doc, nil
}

// encodePayload encodes p as the NSM does.
func encodePayload(p *nsmPayload) ([]byte, error) {
	b, err := cbor.Marshal(p)
	if err != nil {
		return nil, fmt.Errorf("attestation: encode payload: %w", err)
	}
	return b, nil
}

func nilIfEmpty(b []byte) []byte {
	if len(b) == 0 {
		return nil
	}
	return b
}
