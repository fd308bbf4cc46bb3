// Package e2e holds quench's end-to-end tests: real binaries, a network
// namespace standing in for the enclave, a unix socket standing in for
// VSOCK, and the stock gvisor-tap-vsock peers for interoperability. The
// tests need root and skip, saying why, otherwise.
package e2e
