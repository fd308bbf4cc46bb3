package attestation_test

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/quenchnet/quench/attestation"
	"github.com/quenchnet/quench/attestation/attestationtest"
)

// TestTransportAttestationTimeoutMessage: a server that completes the TLS
// handshake and then says nothing fails the request with one readable line
// that names ClientConfig.Timeout, and the error still matches
// context.DeadlineExceeded.
func TestTransportAttestationTimeoutMessage(t *testing.T) {
	dev := attestationtest.NewDevAttester(t, attestation.DevConfig{PCRs: map[uint][]byte{0: pcr0}})
	url := rawTLSServer(t, func(c net.Conn) { _, _ = io.Copy(io.Discard, c) })
	tr, err := attestation.NewTransport(attestation.ClientConfig{
		Options:   attestation.Options{Roots: dev.Roots(), PCRs: map[uint][]byte{0: pcr0}},
		TLSConfig: insecureTLS,
		Timeout:   200 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	_, err = get(t, tr.Client(), url+"/")
	if err == nil {
		t.Fatal("no error")
	}
	msg := err.Error()
	if !errors.Is(err, context.DeadlineExceeded) || strings.Contains(msg, `\n`) || !strings.Contains(msg, "ClientConfig.Timeout") {
		t.Errorf("err = %q; want one line naming ClientConfig.Timeout, matching context.DeadlineExceeded", msg)
	}
}
