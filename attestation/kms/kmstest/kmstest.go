// Package kmstest seals data the way AWS KMS does for a Recipient, so that
// programs using package kms (or quench-enclave's /enclave/kms endpoints)
// can be tested without KMS.
//
// With quench-enclave -dev-attester, the key to seal to is the public_key
// field of the document POST /enclave/kms/recipient answers with
// (attestation_document, base64): attestation.Verify with the roots written
// by -dev-root-out (attestation.LoadRoots) returns it in Result.PublicKey, a
// DER SubjectPublicKeyInfo for x509.ParsePKIXPublicKey. Send Seal's output,
// base64-encoded, as ciphertext_for_recipient to POST /enclave/kms/decrypt.
package kmstest

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"
	"fmt"
)

var (
	oidData          = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 7, 1}
	oidEnvelopedData = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 7, 3}
	oidRSAESOAEP     = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 7}
	oidMGF1          = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 8}
	oidSHA256        = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 2, 1}
	oidAES256CBC     = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 1, 42}
)

type algorithm struct {
	Algorithm  asn1.ObjectIdentifier
	Parameters asn1.RawValue `asn1:"optional"`
}

type oaepParams struct {
	Hash algorithm `asn1:"explicit,tag:0"`
	MGF  algorithm `asn1:"explicit,tag:1"`
}

type keyTransRecipientInfo struct {
	Version      int
	SKI          []byte `asn1:"tag:0"`
	KeyAlgorithm algorithm
	EncryptedKey []byte
}

type encryptedContentInfo struct {
	ContentType      asn1.ObjectIdentifier
	ContentAlgorithm algorithm
	EncryptedContent []byte `asn1:"tag:0"`
}

type envelopedData struct {
	Version              int
	RecipientInfos       []keyTransRecipientInfo `asn1:"set"`
	EncryptedContentInfo encryptedContentInfo
}

type contentInfo struct {
	ContentType asn1.ObjectIdentifier
	Content     envelopedData `asn1:"explicit,tag:0"`
}

// Seal returns plaintext sealed to pub as KMS's CiphertextForRecipient is:
// a CMS EnvelopedData (DER) with one recipient named by the SHA-256 of its
// public key, the content key encrypted with RSAES-OAEP-SHA-256 and the
// content with AES-256-CBC. (KMS sends BER with indefinite lengths; package
// kms reads both.)
func Seal(pub *rsa.PublicKey, plaintext []byte) ([]byte, error) {
	spki, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, err
	}
	ski := sha256.Sum256(spki)
	key := make([]byte, 32)
	iv := make([]byte, aes.BlockSize)
	if _, err := rand.Read(key); err != nil {
		return nil, err
	}
	if _, err := rand.Read(iv); err != nil {
		return nil, err
	}
	encKey, err := rsa.EncryptOAEP(sha256.New(), rand.Reader, pub, key, nil)
	if err != nil {
		return nil, err
	}
	pad := aes.BlockSize - len(plaintext)%aes.BlockSize
	padded := append(append([]byte(nil), plaintext...), make([]byte, pad)...)
	for i := len(plaintext); i < len(padded); i++ {
		padded[i] = byte(pad)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	cipher.NewCBCEncrypter(block, iv).CryptBlocks(padded, padded)

	sha256Alg := algorithm{Algorithm: oidSHA256}
	sha256DER, err := asn1.Marshal(sha256Alg)
	if err != nil {
		return nil, err
	}
	params, err := asn1.Marshal(oaepParams{Hash: sha256Alg, MGF: algorithm{Algorithm: oidMGF1, Parameters: asn1.RawValue{FullBytes: sha256DER}}})
	if err != nil {
		return nil, err
	}
	ivDER, err := asn1.Marshal(iv)
	if err != nil {
		return nil, err
	}
	out, err := asn1.Marshal(contentInfo{
		ContentType: oidEnvelopedData,
		Content: envelopedData{
			Version: 2,
			RecipientInfos: []keyTransRecipientInfo{{
				Version:      2,
				SKI:          ski[:],
				KeyAlgorithm: algorithm{Algorithm: oidRSAESOAEP, Parameters: asn1.RawValue{FullBytes: params}},
				EncryptedKey: encKey,
			}},
			EncryptedContentInfo: encryptedContentInfo{
				ContentType:      oidData,
				ContentAlgorithm: algorithm{Algorithm: oidAES256CBC, Parameters: asn1.RawValue{FullBytes: ivDER}},
				EncryptedContent: padded,
			},
		},
	})
	if err != nil {
		return nil, fmt.Errorf("kmstest: %w", err)
	}
	return out, nil
}
