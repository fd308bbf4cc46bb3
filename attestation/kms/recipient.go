package kms

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"fmt"

	"github.com/quenchnet/quench/attestation"
)

// RecipientKeyBits is the size of the RSA key a Recipient generates.
const RecipientKeyBits = 2048

// keyEncryptionAlgorithm is the only value KMS accepts for
// RecipientInfo.KeyEncryptionAlgorithm.
const keyEncryptionAlgorithm = "RSAES_OAEP_SHA_256"

// A Recipient is the Recipient parameter of a KMS Decrypt, GenerateDataKey
// or GenerateRandom request made from inside an enclave: a fresh RSA-2048
// key pair whose public key is bound into an attestation document, and the
// means to open the CiphertextForRecipient that KMS answers with.
//
// The private key never leaves the Recipient. The document is evidence of
// the enclave's state when it was made, so make a Recipient when it is
// needed, or replace it regularly, rather than keeping one for the life of
// the enclave (see the package documentation). A Recipient is safe for
// concurrent use.
type Recipient struct {
	key *rsa.PrivateKey
	doc []byte
}

// NewRecipient generates an RSA-2048 key and asks att for an attestation
// document whose public_key field is the key's DER SubjectPublicKeyInfo (294
// bytes, within attestation.MaxPublicKeySize). In an enclave att is
// attestation.NewNSMAttester; documents of the development attester are
// refused by KMS, since they do not chain to the AWS Nitro root.
func NewRecipient(ctx context.Context, att attestation.Attester) (*Recipient, error) {
	if att == nil {
		return nil, errors.New("kms: nil attester")
	}
	key, err := rsa.GenerateKey(rand.Reader, RecipientKeyBits)
	if err != nil {
		return nil, fmt.Errorf("kms: generating the recipient key: %w", err)
	}
	spki, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return nil, fmt.Errorf("kms: encoding the recipient key: %w", err)
	}
	doc, err := att.Attest(ctx, attestation.Request{PublicKey: spki})
	if err != nil {
		return nil, fmt.Errorf("kms: attesting the recipient key: %w", err)
	}
	return &Recipient{key: key, doc: doc}, nil
}

// AttestationDocument returns the document to send as
// Recipient.AttestationDocument (the SDK base64-encodes it). The bytes belong
// to the caller.
func (r *Recipient) AttestationDocument() []byte {
	return append([]byte(nil), r.doc...)
}

// KeyEncryptionAlgorithm returns "RSAES_OAEP_SHA_256", the value to send as
// Recipient.KeyEncryptionAlgorithm (the only one KMS accepts).
func (r *Recipient) KeyEncryptionAlgorithm() string {
	return keyEncryptionAlgorithm
}

// PublicKey returns the public key bound into the attestation document.
func (r *Recipient) PublicKey() *rsa.PublicKey {
	return &r.key.PublicKey
}

// Decrypt opens the CiphertextForRecipient of a KMS answer (raw bytes, as the
// SDK returns them) and returns the plaintext: the data key of
// GenerateDataKey, the random bytes of GenerateRandom, the plaintext of
// Decrypt. See DecryptEnvelopedData for what is checked and for the errors.
func (r *Recipient) Decrypt(ciphertextForRecipient []byte) ([]byte, error) {
	return DecryptEnvelopedData(r.key, ciphertextForRecipient)
}
