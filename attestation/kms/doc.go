// Package kms lets a Go program in a Nitro Enclave receive secrets from AWS
// KMS sealed to the enclave, with the AWS SDK of its choice: it makes the
// Recipient parameter of KMS's Decrypt, GenerateDataKey and GenerateRandom
// requests, and opens the CiphertextForRecipient that KMS answers with.
// Enclaver offers the same as a KMS proxy; here it is a library, and quench
// does not depend on the AWS SDK.
//
// # How it works
//
// [NewRecipient] generates an RSA-2048 key in the enclave and asks an
// [attestation.Attester] (the NSM) for a document whose public_key field is
// the key's DER SubjectPublicKeyInfo. The program sends
// [Recipient.AttestationDocument] and [Recipient.KeyEncryptionAlgorithm]
// ("RSAES_OAEP_SHA_256") as the request's Recipient. KMS checks the
// document's signature (it must chain to the AWS Nitro root, so documents
// of the development attester are refused) and its measurements against the
// key policy, and instead of the plaintext returns CiphertextForRecipient: a
// CMS EnvelopedData (RFC 5652) for that public key, which
// [Recipient.Decrypt] opens. The shape KMS sends, and the only one accepted
// (in BER with indefinite lengths, as KMS sends it, or in DER): one
// KeyTransRecipientInfo, version 2, naming the key by subject key identifier
// (SHA-256 of the SubjectPublicKeyInfo); the content key encrypted with
// RSAES-OAEP, SHA-256 and MGF1-SHA-256; the content encrypted with
// AES-256-CBC, possibly split into several OCTET STRINGs.
// [DecryptEnvelopedData] does this for any RSA key of at least 2048 bits.
//
// # Key policy
//
// KMS releases the secret to the enclave only if the key policy says so.
// Condition the enclave's statement on the measurements, with
// StringEqualsIgnoreCase and the hex values nitro-cli prints:
// kms:RecipientAttestation:ImageSha384 (the image digest, which is PCR0) or
// kms:RecipientAttestation:PCR0, and as needed kms:RecipientAttestation:PCR1,
// PCR2, PCR3 (IAM role of the parent instance), PCR8 (signing certificate)
// and so on. The enclave's AWS credentials come from the parent instance, so
// the host can make the same calls: no statement may allow these operations
// to that role without a RecipientAttestation condition, or the host gets
// the plaintext by leaving the Recipient out. Documents of an enclave in
// debug mode carry all-zero PCRs; do not allow those values.
//
// # Freshness and lifetime
//
// An attestation document is evidence of the enclave's state when it was
// made; the AWS pages consulted for this package do not say how old a
// document KMS accepts. So make a [Recipient] just before the requests that
// use it, or replace it regularly, rather than keeping one for the life of the
// enclave; a new one costs an RSA key generation and one attestation. The
// private key lives in the Go heap, unexported; Go gives no way to erase it
// reliably, so let a Recipient go when it is no longer needed.
//
// # Trust
//
// An EnvelopedData is not authenticated: anyone who knows the public key can
// make one that decrypts. The plaintext is KMS's because it arrived in KMS's
// answer over TLS, which the program terminates inside the enclave; it is
// secret because only this enclave holds the private key. Nor is the
// content's integrity protected (AES-CBC, no MAC): do not let whoever
// supplied an envelope learn whether it decrypted, unless it is KMS, or
// altered copies of a genuine envelope become a padding oracle on its
// plaintext. Errors say nothing of the decrypted bytes.
//
// # Hostile input
//
// CiphertextForRecipient crosses the host, so [DecryptEnvelopedData] treats
// it as hostile: at most [MaxEnvelopeSize] bytes, nesting at most 24 deep,
// lengths checked against the input, no trailing data, exactly one
// recipient, algorithms and parameters checked before the RSA step, the IV
// 16 bytes, the ciphertext a positive multiple of 16 bytes and its PKCS#7
// padding checked strictly (1 to 16 bytes, all equal). Errors match
// [ErrMalformed], [ErrUnsupported] or [ErrWrongKey] and say what was wrong.
//
// # Why not a CMS library
//
// github.com/smallstep/pkcs7, the maintained Go PKCS#7 package, cannot read
// KMS's answer: in an experiment with v0.2.3 and the test vector, Parse
// failed ("asn1: structure error: tags don't match ... issuerAndSerial")
// because it requires recipients named by issuer and serial number, and
// Decrypt only selects recipients that way; so this package decodes the one
// shape KMS sends with encoding/asn1, after a small, strict BER-to-DER
// normaliser.
//
// # What is tested, and the gap
//
// The tests decrypt a real KMS answer (testdata, from enclaver's crypto/cms
// tests, MIT licence) to the expected data key; decrypt envelopes that the
// tests build (DER, KMS's BER shape, every element indefinite, content in
// several OCTET STRINGs, for keys from NewRecipient); reject each malformed
// case (wrong key, every truncation, trailing bytes, bad padding, wrong
// algorithms or parameters, two recipients, issuerAndSerialNumber, absurd
// lengths, excessive nesting); and check that a Recipient made with the
// development attester yields a document that [attestation.Verify] accepts
// with the development roots and whose public_key is the Recipient's key.
// FuzzDecrypt, seeded with the vector, checks that no input panics or
// yields more than it was given. No real KMS and no NSM were available: that
// KMS accepts documents from [attestation.NSMAttester] with this public key
// is not tested here, and only one real KMS answer is (whose SKI is SHA-256
// of the SubjectPublicKeyInfo; should KMS change that, Decrypt fails closed
// with ErrWrongKey).
package kms
