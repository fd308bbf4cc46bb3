// Package attestationtest provides test doubles for package attestation: a
// fake Nitro Secure Module (FakeNSM, an attestation.NSMSession backed by a
// DevAttester), and helpers that build a development attester and an HTTPS
// test server serving attestation documents that bind its own certificate.
//
// Everything here is insecure by design and meant for tests and simulations
// only. FakeNSM implements attestation.NSMSession.
package attestationtest
