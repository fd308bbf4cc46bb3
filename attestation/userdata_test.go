package attestation_test

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/quenchnet/quench/attestation"
)

func TestUserDataMarshal(t *testing.T) {
	u := attestation.UserData{TLSCertHash: sha256.Sum256([]byte("cert")), AppKeyHash: sha256.Sum256([]byte("key"))}
	got := u.Marshal()
	// nitriding: hashPrefix = []byte{0x12, sha256.Size}; prefix||tls||prefix||app.
	want := append(append(append([]byte{0x12, 0x20}, u.TLSCertHash[:]...), 0x12, 0x20), u.AppKeyHash[:]...)
	if !bytes.Equal(got, want) || len(got) != attestation.UserDataSize || attestation.UserDataSize != 68 {
		t.Fatalf("Marshal = %x, want %x", got, want)
	}
	if !u.HasAppKey() || (attestation.UserData{}).HasAppKey() {
		t.Error("HasAppKey wrong")
	}
}

func TestParseUserData(t *testing.T) {
	tlsHash := sha256.Sum256([]byte("cert"))
	appHash := sha256.Sum256([]byte("key"))
	legacy := append(append(append([]byte("sha256:"), tlsHash[:]...), []byte(";sha256:")...), appHash[:]...)
	tests := []struct {
		name    string
		in      []byte
		want    attestation.UserData
		wantErr bool
	}{
		{"multihash pair", attestation.UserData{TLSCertHash: tlsHash, AppKeyHash: appHash}.Marshal(), attestation.UserData{TLSCertHash: tlsHash, AppKeyHash: appHash}, false},
		{"multihash pair, no app key", attestation.UserData{TLSCertHash: tlsHash}.Marshal(), attestation.UserData{TLSCertHash: tlsHash}, false},
		{"single multihash", append([]byte{0x12, 0x20}, tlsHash[:]...), attestation.UserData{TLSCertHash: tlsHash}, false},
		{"legacy nitriding", legacy, attestation.UserData{TLSCertHash: tlsHash, AppKeyHash: appHash}, false},
		{"legacy bad separator", withByte(legacy, 7+32, ','), attestation.UserData{}, true},
		{"legacy bad prefix", append([]byte("sha512:"), legacy[7:]...), attestation.UserData{}, true},
		{"sha2-512 multihash header", append([]byte{0x13, 0x20}, tlsHash[:]...), attestation.UserData{}, true},
		{"bad second header", append(append([]byte{0x12, 0x20}, tlsHash[:]...), append([]byte{0x12, 0x21}, appHash[:]...)...), attestation.UserData{}, true},
		{"nil", nil, attestation.UserData{}, true},
		{"raw hash", tlsHash[:], attestation.UserData{}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := attestation.ParseUserData(tt.in)
			if tt.wantErr {
				if !errors.Is(err, attestation.ErrBadUserData) {
					t.Fatalf("ParseUserData = %v, want ErrBadUserData", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func withByte(b []byte, i int, v byte) []byte {
	b = bytes.Clone(b)
	b[i] = v
	return b
}
