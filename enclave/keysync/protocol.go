package keysync

import (
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdh"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"

	"github.com/quenchnet/quench/attestation"
)

// HTTP paths, nitriding's. LeaderPath, SyncPath and HeartbeatPath are served
// by ExternalHandler for other enclaves; StatePath by StateHandler for the
// app.
const (
	LeaderPath    = "/enclave/leader"
	SyncPath      = "/enclave/sync"
	HeartbeatPath = "/enclave/heartbeat"
	StatePath     = "/enclave/state"
)

// NonceSize is the size of every nonce of the protocol (nitriding's 20
// bytes, sent as 40 hex digits).
const NonceSize = 20

// Size limits of what peers send.
const (
	// maxHeartbeatBody bounds POST /enclave/heartbeat.
	maxHeartbeatBody = 4 << 10
	// maxCertMaterial bounds the certificate chain plus private key in Keys.
	maxCertMaterial = 64 << 10
	// maxHostname bounds worker_hostname.
	maxHostname = 255
	// saltSize is the size of Keys.Salt as the leader draws it; maxSalt
	// bounds what a peer sends.
	saltSize = 32
	maxSalt  = 64
	// envelopeOverhead is what seal adds to the plaintext.
	envelopeOverhead = 1 + 32 + 16
)

// b64Len is the base64 length of n bytes.
func b64Len(n int) int { return base64.StdEncoding.EncodedLen(n) }

// maxSyncBody bounds a GET /enclave/sync response or POST /enclave/sync
// body for a state of at most maxState bytes.
func maxSyncBody(maxState int) int {
	return b64Len(attestation.MaxDocumentSize) + b64Len(maxKeysEncoded(maxState)+envelopeOverhead) + 1024
}

// syncMessage is the JSON body of GET /enclave/sync responses (Document
// only) and POST /enclave/sync requests, as in nitriding's HTTP API.
type syncMessage struct {
	Document      string `json:"document"`
	EncryptedKeys string `json:"encrypted_keys,omitempty"`
}

// decodeSyncMessage parses and bounds a sync message from a peer.
// withKeys says whether encrypted_keys must be present (POST) or absent
// (GET response).
func decodeSyncMessage(b []byte, withKeys bool, maxState int) (doc, enc []byte, err error) {
	if len(b) > maxSyncBody(maxState) {
		return nil, nil, fmt.Errorf("%w: sync message of %d bytes, at most %d", ErrTooLarge, len(b), maxSyncBody(maxState))
	}
	var m syncMessage
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, nil, fmt.Errorf("%w: sync message: %v", ErrMalformed, err)
	}
	if m.Document == "" {
		return nil, nil, fmt.Errorf("%w: sync message has no document", ErrMalformed)
	}
	if len(m.Document) > b64Len(attestation.MaxDocumentSize) {
		return nil, nil, fmt.Errorf("%w: document above %d bytes", ErrTooLarge, attestation.MaxDocumentSize)
	}
	doc, err = base64.StdEncoding.DecodeString(m.Document)
	if err != nil || len(doc) == 0 {
		return nil, nil, fmt.Errorf("%w: document: want base64 bytes: %v", ErrMalformed, err)
	}
	switch {
	case withKeys && m.EncryptedKeys == "":
		return nil, nil, fmt.Errorf("%w: sync message has no encrypted_keys", ErrMalformed)
	case !withKeys && m.EncryptedKeys != "":
		return nil, nil, fmt.Errorf("%w: unexpected encrypted_keys in the worker's answer", ErrMalformed)
	case withKeys:
		if len(m.EncryptedKeys) > b64Len(maxKeysEncoded(maxState)+envelopeOverhead) {
			return nil, nil, fmt.Errorf("%w: encrypted keys above the state limit", ErrTooLarge)
		}
		enc, err = base64.StdEncoding.DecodeString(m.EncryptedKeys)
		if err != nil || len(enc) == 0 {
			return nil, nil, fmt.Errorf("%w: encrypted_keys: want base64 bytes: %v", ErrMalformed, err)
		}
	}
	return doc, enc, nil
}

// heartbeat is the JSON body of POST /enclave/heartbeat, as in nitriding's
// HTTP API.
type heartbeat struct {
	// HashedKeys is the base64 SHA-256 of the worker's key material (see
	// Keys.Hash); empty before its first synchronisation.
	HashedKeys string `json:"hashed_keys"`
	// WorkerHostname is where the leader reaches the worker's external
	// endpoint: host or host:port. Empty: the heartbeat's source address.
	WorkerHostname string `json:"worker_hostname"`
}

// decodeHeartbeat parses a worker's heartbeat.
func decodeHeartbeat(b []byte) (hash []byte, hostport string, err error) {
	if len(b) > maxHeartbeatBody {
		return nil, "", fmt.Errorf("%w: heartbeat of %d bytes, at most %d", ErrTooLarge, len(b), maxHeartbeatBody)
	}
	var hb heartbeat
	if err := json.Unmarshal(b, &hb); err != nil {
		return nil, "", fmt.Errorf("%w: heartbeat: %v", ErrMalformed, err)
	}
	if hb.HashedKeys != "" {
		hash, err = base64.StdEncoding.DecodeString(hb.HashedKeys)
		if err != nil || len(hash) != sha256.Size {
			return nil, "", fmt.Errorf("%w: hashed_keys: want the base64 of a SHA-256", ErrMalformed)
		}
	}
	if hb.WorkerHostname != "" {
		if err := checkHostPort(hb.WorkerHostname); err != nil {
			return nil, "", fmt.Errorf("%w: worker_hostname: %v", ErrMalformed, err)
		}
	}
	return hash, hb.WorkerHostname, nil
}

// checkHostPort accepts host or host:port (IPv6 in brackets with a port).
func checkHostPort(s string) error {
	if len(s) > maxHostname {
		return fmt.Errorf("%d characters, at most %d", len(s), maxHostname)
	}
	host := s
	if h, p, err := net.SplitHostPort(s); err == nil {
		n, err := strconv.ParseUint(p, 10, 16)
		if err != nil || n == 0 {
			return fmt.Errorf("bad port %q", p)
		}
		host = h
	}
	if host == "" || strings.ContainsAny(host, "/?#@ \t\r\n%\\") {
		return fmt.Errorf("%q is not a host name", s)
	}
	return nil
}

// Keys is the key material a leader hands to its workers.
type Keys struct {
	// CertChain is the TLS certificate chain (DER, leaf first) of the
	// public server; empty when the leader syncs no certificate (ACME).
	CertChain [][]byte `json:"cert_chain,omitempty"`
	// CertKey is the certificate's private key, PKCS#8 DER.
	CertKey []byte `json:"cert_key,omitempty"`
	// State is the app's opaque state (PUT /enclave/state).
	State []byte `json:"state,omitempty"`
	// Salt is random bytes the leader draws once (New) and hands out with
	// the rest. Hash covers it: workers show Hash in heartbeats, which the
	// host can read, and without a secret in it the hash of the state
	// (with ACME, of all the key material) could be matched against
	// guesses offline.
	Salt []byte `json:"salt,omitempty"`
}

// maxKeysEncoded bounds the JSON encoding of Keys with maxState bytes of
// state (base64 grows it by 4/3).
func maxKeysEncoded(maxState int) int {
	return b64Len(maxCertMaterial) + b64Len(maxState) + b64Len(maxSalt) + 256
}

// Hash is the SHA-256 over an unambiguous encoding of k (each field and
// certificate length-prefixed), as workers report it in heartbeats. Without
// a Salt it can be matched against guesses of the other fields.
func (k *Keys) Hash() [sha256.Size]byte {
	h := sha256.New()
	var n [8]byte
	put := func(b []byte) {
		binary.BigEndian.PutUint64(n[:], uint64(len(b)))
		h.Write(n[:])
		h.Write(b)
	}
	binary.BigEndian.PutUint64(n[:], uint64(len(k.CertChain)))
	h.Write(n[:])
	for _, c := range k.CertChain {
		put(c)
	}
	put(k.CertKey)
	put(k.State)
	put(k.Salt)
	var out [sha256.Size]byte
	h.Sum(out[:0])
	return out
}

// keysFromCertificate fills CertChain and CertKey from c (nil: none).
func keysFromCertificate(c *tls.Certificate, state []byte) (*Keys, error) {
	k := &Keys{State: state}
	if c == nil || len(c.Certificate) == 0 {
		return k, nil
	}
	der, err := x509.MarshalPKCS8PrivateKey(c.PrivateKey)
	if err != nil {
		return nil, fmt.Errorf("keysync: certificate key: %w", err)
	}
	k.CertChain, k.CertKey = c.Certificate, der
	return k, nil
}

// decodeKeys parses decrypted key material and checks its limits.
func decodeKeys(b []byte, maxState int) (*Keys, error) {
	if len(b) > maxKeysEncoded(maxState) {
		return nil, fmt.Errorf("%w: key material of %d bytes", ErrTooLarge, len(b))
	}
	var k Keys
	if err := json.Unmarshal(b, &k); err != nil {
		return nil, fmt.Errorf("%w: key material: %v", ErrMalformed, err)
	}
	if len(k.State) > maxState {
		return nil, fmt.Errorf("%w: state of %d bytes, at most %d", ErrTooLarge, len(k.State), maxState)
	}
	if len(k.Salt) > maxSalt {
		return nil, fmt.Errorf("%w: salt of %d bytes, at most %d", ErrTooLarge, len(k.Salt), maxSalt)
	}
	n := len(k.CertKey)
	for _, c := range k.CertChain {
		n += len(c)
	}
	if n > maxCertMaterial {
		return nil, fmt.Errorf("%w: certificate material of %d bytes", ErrTooLarge, n)
	}
	if (len(k.CertChain) == 0) != (len(k.CertKey) == 0) {
		return nil, fmt.Errorf("%w: certificate without key or key without certificate", ErrMalformed)
	}
	return &k, nil
}

// Certificate returns the TLS certificate in k, checked to match its key;
// nil when k carries none.
func (k *Keys) Certificate() (*tls.Certificate, error) {
	if len(k.CertChain) == 0 {
		return nil, nil
	}
	leaf, err := x509.ParseCertificate(k.CertChain[0])
	if err != nil {
		return nil, fmt.Errorf("%w: certificate: %v", ErrMalformed, err)
	}
	key, err := x509.ParsePKCS8PrivateKey(k.CertKey)
	if err != nil {
		return nil, fmt.Errorf("%w: certificate key: %v", ErrMalformed, err)
	}
	pub, ok := key.(interface{ Public() crypto.PublicKey })
	if !ok {
		return nil, fmt.Errorf("%w: certificate key of type %T", ErrMalformed, key)
	}
	eq, ok := pub.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !eq.Equal(leaf.PublicKey) {
		return nil, fmt.Errorf("%w: certificate and key do not match", ErrMalformed)
	}
	return &tls.Certificate{Certificate: k.CertChain, PrivateKey: key, Leaf: leaf}, nil
}

// Wire encryption of the key material: an ephemeral X25519 key of the
// leader, HKDF-SHA256 over the shared secret (info binds both public keys)
// giving an AES-256-GCM key and nonce, both used once. Envelope:
//
//	version (1) | leader's ephemeral public key (32) | AES-GCM ciphertext+tag
const (
	envelopeVersion = 1
	hkdfLabel       = "quench keysync v1"
)

func deriveAEAD(shared, ephPub, workerPub []byte) (cipher.AEAD, []byte, error) {
	info := append(append([]byte(hkdfLabel), ephPub...), workerPub...)
	km, err := hkdf.Key(sha256.New, shared, nil, string(info), 32+12)
	if err != nil {
		return nil, nil, err
	}
	block, err := aes.NewCipher(km[:32])
	if err != nil {
		return nil, nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, nil, err
	}
	return aead, km[32:], nil
}

// seal encrypts plaintext to the worker's X25519 public key.
func seal(workerPub *ecdh.PublicKey, plaintext, aad []byte) ([]byte, error) {
	eph, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	shared, err := eph.ECDH(workerPub)
	if err != nil {
		return nil, err
	}
	ephPub := eph.PublicKey().Bytes()
	aead, nonce, err := deriveAEAD(shared, ephPub, workerPub.Bytes())
	if err != nil {
		return nil, err
	}
	out := make([]byte, 0, 1+len(ephPub)+len(plaintext)+aead.Overhead())
	out = append(out, envelopeVersion)
	out = append(out, ephPub...)
	return aead.Seal(out, nonce, plaintext, aad), nil
}

// errDecrypt is what open returns for any bad envelope.
var errDecrypt = errors.New("keysync: cannot decrypt the key material")

// open decrypts an envelope made by seal for priv.
func open(priv *ecdh.PrivateKey, envelope, aad []byte) ([]byte, error) {
	if len(envelope) < envelopeOverhead || envelope[0] != envelopeVersion {
		return nil, errDecrypt
	}
	ephPub := envelope[1:33]
	pub, err := ecdh.X25519().NewPublicKey(ephPub)
	if err != nil {
		return nil, errDecrypt
	}
	shared, err := priv.ECDH(pub)
	if err != nil {
		return nil, errDecrypt
	}
	aead, nonce, err := deriveAEAD(shared, ephPub, priv.PublicKey().Bytes())
	if err != nil {
		return nil, errDecrypt
	}
	pt, err := aead.Open(nil, nonce, envelope[33:], aad)
	if err != nil {
		return nil, errDecrypt
	}
	return pt, nil
}

// syncAAD binds both nonces of one synchronisation to its ciphertext.
func syncAAD(workerNonce, leaderNonce []byte) []byte {
	return append(append([]byte(hkdfLabel+" aad"), workerNonce...), leaderNonce...)
}
