package attestation

import (
	"bytes"
	"crypto/sha256"
	"fmt"
)

// UserData is the content quench (like nitriding) puts in the user_data field
// of its attestation documents: the SHA-256 of the enclave's TLS certificate
// (DER) and, optionally, the SHA-256 of an application key. See the package
// documentation for the byte layout.
type UserData struct {
	// TLSCertHash is the SHA-256 of the DER encoding of the TLS certificate
	// the enclave serves (the leaf). See CertHash.
	TLSCertHash [sha256.Size]byte
	// AppKeyHash is the SHA-256 of an application public key, or all zero
	// when the application registered none.
	AppKeyHash [sha256.Size]byte
}

// Multihash header of a SHA2-256 digest: code 0x12, length 0x20.
var multihashSHA256 = [2]byte{0x12, sha256.Size}

// legacy nitriding layout: "sha256:" digest ";" "sha256:" digest (raw digests).
const (
	legacyHashPrefix = "sha256:"
	legacySeparator  = ";"
)

// Sizes of the user-data layouts ParseUserData accepts.
const (
	// UserDataSize is the size of UserData.Marshal's output (multihash layout).
	UserDataSize = 68 // two multihashes: 2 × (2-byte header + 32-byte SHA-256)
	// userDataTLSOnlySize is a single multihash (TLS certificate only).
	userDataTLSOnlySize = len(multihashSHA256) + sha256.Size // 34
	// userDataLegacySize is nitriding's older "sha256:" layout.
	userDataLegacySize = 2*(len(legacyHashPrefix)+sha256.Size) + len(legacySeparator) // 79
)

// CertHash returns the SHA-256 of a DER-encoded certificate, the value bound
// in UserData.TLSCertHash. For a *x509.Certificate c, pass c.Raw; for a
// tls.Certificate, pass Certificate[0].
func CertHash(der []byte) [sha256.Size]byte { return sha256.Sum256(der) }

// Marshal returns the 68-byte multihash layout used by current nitriding:
//
//	0x12 0x20 || TLSCertHash (32 bytes) || 0x12 0x20 || AppKeyHash (32 bytes)
//
// AppKeyHash is always present (all zero when unset), as nitriding does.
func (u UserData) Marshal() []byte {
	b := make([]byte, 0, UserDataSize)
	b = append(b, multihashSHA256[:]...)
	b = append(b, u.TLSCertHash[:]...)
	b = append(b, multihashSHA256[:]...)
	b = append(b, u.AppKeyHash[:]...)
	return b
}

// HasAppKey reports whether AppKeyHash is set (not all zero).
func (u UserData) HasAppKey() bool { return u.AppKeyHash != [sha256.Size]byte{} }

// ParseUserData decodes user data in any layout nitriding has produced:
//   - 68 bytes: two SHA2-256 multihashes (TLS certificate, application key);
//   - 34 bytes: one SHA2-256 multihash (TLS certificate only);
//   - 79 bytes: the older "sha256:<32 bytes>;sha256:<32 bytes>" layout.
//
// Anything else fails with ErrBadUserData.
func ParseUserData(b []byte) (UserData, error) {
	var u UserData
	switch len(b) {
	case UserDataSize, userDataTLSOnlySize:
		for i, dst := range []*[sha256.Size]byte{&u.TLSCertHash, &u.AppKeyHash} {
			if i == 1 && len(b) == userDataTLSOnlySize {
				break
			}
			mh := b[i*userDataTLSOnlySize : (i+1)*userDataTLSOnlySize]
			if !bytes.Equal(mh[:2], multihashSHA256[:]) {
				return UserData{}, fmt.Errorf("%w: multihash %d has header %x, want %x (sha2-256)", ErrBadUserData, i, mh[:2], multihashSHA256)
			}
			copy(dst[:], mh[2:])
		}
		return u, nil
	case userDataLegacySize:
		p := len(legacyHashPrefix)
		second := p + sha256.Size + len(legacySeparator)
		if string(b[:p]) != legacyHashPrefix ||
			string(b[p+sha256.Size:second]) != legacySeparator ||
			string(b[second:second+p]) != legacyHashPrefix {
			return UserData{}, fmt.Errorf("%w: 79 bytes but not sha256:<hash>;sha256:<hash>", ErrBadUserData)
		}
		copy(u.TLSCertHash[:], b[p:p+sha256.Size])
		copy(u.AppKeyHash[:], b[second+p:])
		return u, nil
	}
	return UserData{}, fmt.Errorf("%w: %d bytes (want %d, %d or %d)", ErrBadUserData, len(b), UserDataSize, userDataTLSOnlySize, userDataLegacySize)
}
