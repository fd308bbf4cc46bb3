package attestation_test

import (
	"crypto/tls"
	"encoding/base64"
	"net"
	"testing"

	"github.com/quenchnet/quench/attestation/attestationtest"
)

func encodeB64(b []byte) []byte {
	return []byte(base64.StdEncoding.EncodeToString(b))
}

// selfSigned returns a fresh self-signed certificate for 127.0.0.1.
func selfSigned(tb testing.TB) tls.Certificate { return attestationtest.SelfSignedCert(tb) }

// closedAddr returns a loopback address on which nothing listens.
func closedAddr(tb testing.TB) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}
