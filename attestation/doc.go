// Package attestation produces and verifies AWS Nitro Enclave attestation
// documents that bind an enclave's TLS certificate to its measured image, so
// a client can check that it speaks TLS to the enclave image it audited.
//
// # Producing documents
//
// An [Attester] turns a [Request] (nonce, user data, public key) into a signed
// document. [NSMAttester] asks the Nitro Secure Module (/dev/nsm, Linux only);
// it is also an io.Reader of NSM randomness, which [SeedEntropy] feeds to the
// kernel pool at enclave start. [DevAttester] signs documents in exactly the
// NSM format with a certificate chain it generates (root → intermediate →
// leaf, ECDSA P-384); it is insecure, chosen only by explicit configuration,
// and its root ([DevAttester.RootPEM], [DevAttester.WriteRootPEM]) must be
// given to verifiers. [NewHandler] serves documents over HTTP at [Path]
// (GET /enclave/attestation?nonce=<40 hex digits>, answered with the base64
// document), as nitriding does.
//
// # Verifying documents
//
// [Verify] checks a document with github.com/hf/nitrite (COSE signature,
// certificate chain to the AWS Nitro root or [Options.Roots] at the
// explicit [Options.Time]) and then the policy in [Options]: expected PCRs,
// nonce, maximum age, and the user-data binding. Each failed check has a
// sentinel error and a typed error ([PCRMismatchError], [NonceMismatchError],
// [TooOldError], [UserDataMismatchError], [BadDocumentError], [ChainError]);
// nitrite's sentinel errors (for example nitrite.ErrBadSignature) remain
// matchable with errors.Is. [VerifyRemote] fetches a document from a running
// enclave over one TLS connection and checks that the document binds the
// certificate presented on that very connection.
//
// # Clients of enclave apps
//
// [NewTransport] gives an http.RoundTripper ([Transport.Client] an
// http.Client) for talking to an enclave app rather than checking it once:
// every new TLS connection is verified before the caller's first request
// goes over it (a document with a fresh nonce fetched on that connection,
// the policy in [ClientConfig.Options], PCRs required, and the binding of
// the certificate presented); a connection that fails fails the request,
// with nothing of it sent. A verified certificate is trusted for new
// connections for [ClientConfig.TrustFor]. This is what makes the TLS
// session with the enclave worth its attestation: checking a document and
// then sending requests over an ordinary client trusts whichever server
// answers those later connections. Against an enclave with the development
// attester ([DevAttester], -dev-attester), pass the root it wrote
// (-dev-root-out; [LoadRoots]) as Options.Roots and set [ClientConfig.AnyImage]: its documents
// report all-zero PCRs, which pin no image; enclave certificates are usually
// self-signed, so ClientConfig.TLSConfig sets InsecureSkipVerify (the document
// binds the certificate). The command quench fetch does the same for one
// request from a shell.
//
// # Document format
//
// A document is an untagged COSE_Sign1 array [protected, unprotected,
// payload, signature] with protected header {1: -35} (ES384), an empty
// unprotected map, and a 96-byte signature r||s. The payload is a CBOR map,
// in this order: module_id (text), digest (text, "SHA384"), timestamp
// (unsigned, milliseconds since the Unix epoch), pcrs (map of unsigned index
// to 48-byte value), certificate (DER of the signing certificate), cabundle
// (array of DER certificates, root first), public_key, user_data, nonce
// (byte strings, or null when absent).
//
// # User data layout
//
// quench writes the layout of current nitriding (brave/nitriding-daemon
// AttestationHashes.Serialize), so that nitriding's clients, such as Brave's
// browser verifier, accept quench documents. It is two SHA2-256 multihashes,
// 68 bytes:
//
//	0x12 0x20 | SHA-256(TLS certificate, DER) [32] | 0x12 0x20 | SHA-256(application key) [32]
//
// 0x12 is the multihash code of sha2-256 and 0x20 the digest length. The
// TLS certificate is the leaf the enclave serves; the application key hash is
// all zero when the application registered none. [ParseUserData] also accepts
// a single multihash (34 bytes, certificate only) and nitriding's older
// 79-byte layout "sha256:" <32 bytes> ";" "sha256:" <32 bytes> (raw digests).
// See [UserData].
//
// # Platform
//
// Everything but the NSM device and entropy seeding is platform-neutral. On
// operating systems other than Linux, opening the NSM and [SeedEntropy] fail
// with errors wrapping errors.ErrUnsupported; on Linux without /dev/nsm,
// [NewNSMAttester] fails with [ErrNoNSM].
//
// Package attestationtest holds a fake NSM ([NSMSession] implementation) and
// test helpers. *NSMAttester implements io.Reader.
package attestation
