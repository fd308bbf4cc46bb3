package enclave_test

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/quenchnet/quench/enclave"
	"github.com/quenchnet/quench/host"
	"github.com/quenchnet/quench/internal/testutil"
)

// TestUserspaceFullDuplexEgress sends 4 MiB both ways at once at MTU 1500
// from a userspace enclave, through quench-host's NAT, to an echo server on
// the host whose reads wait for its writes (io.Copy on one connection).
// Through the relay that is a cycle (the host stack's reader waits for the
// echo server, which waits for the host stack's writes to be acknowledged by
// the enclave), the shape gVisor's zero-window bug can deadlock
// (docs/bench/userspace.md, "Full-duplex stall"). In practice the kernel's
// socket buffers between the relay and the echo server absorb it: in 500
// runs, with and without the links' workaround, none stalled and the host's
// link never had to fix an ACK. The test stays as the full-duplex check of
// the NAT path.
func TestUserspaceFullDuplexEgress(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	testutil.Echo(t, ln)
	sock := usSocket(t)
	h := startTestHost(t, sock, host.Config{MTU: 1500, DNSUpstream: []string{usFakeUpstreamDNS(t)}})
	e := usEnclave(t, sock, func(c *enclave.Config) { c.MTU = 1500 })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := e.Dial(ctx, "tcp", fmt.Sprintf("192.168.127.254:%d", ln.Addr().(*net.TCPAddr).Port))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	if err := testutil.EchoRoundTrip(c, bytes.Repeat([]byte("0123456789abcdef"), 1<<18)); err != nil {
		t.Fatalf("%v (host: %+v)", err, h.Stats())
	}
	t.Logf("ACKs fixed by quench-host's link: %d", h.Stats().ZeroWindowACKsFixed)
}
