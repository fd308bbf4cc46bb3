// Command quench is the client tool of quench.
//
//	quench verify https://HOST[:PORT] [flags]   fetch an attestation document over TLS and verify it
//	quench verify --doc FILE [flags]            verify a stored document (base64 or raw CBOR)
//	quench fetch https://HOST/PATH --pcr N=HEX  send a request over a connection verified first
//
// Exit status: 0 when every requested check passed, 1 when verification (or
// fetching) failed, with a one-line reason on stderr, 2 on usage errors.
// The work is done by package attestation; this command only parses flags
// and prints results.
package main
