package host_test

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/quenchnet/quench/host"
)

// TestNATOrphanAtZeroWindow: an enclave opens NAT connections to a server
// that sends a little more than the enclave's receive buffer and closes,
// half-closes its own side and never reads. The host's relay then ends
// (both directions are done) with data still queued towards the enclave,
// whose window stays at zero while its stack answers every probe. gVisor
// kept such a closed connection, and its send buffer, for good, outside
// the NAT connection limit: an enclave could make the host hold any number
// of them. A closed connection now gets a user timeout and is reset after
// ethlink.OrphanTimeout without progress, as Linux gives up on orphans.
func TestNATOrphanAtZeroWindow(t *testing.T) {
	defer host.SetOrphanTimeout(time.Second)()
	srv, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	// Past the enclave's receive buffer (1 MiB), so that bytes stay queued
	// at the host, and well within that window plus the host's send
	// buffer (1 MiB), so that the relay can queue them all and end. With
	// 1.5 MiB the relay sometimes could not: the enclave's window, net of
	// gVisor's per-segment overhead, was under half a MiB, the relay's
	// write blocked, and the connection, alive, was never closed (the
	// race-enabled suite on 2 cores, after 60 s).
	payload := make([]byte, 1<<20+128<<10)
	go func() {
		for {
			c, err := srv.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = c.Write(payload)
			}()
		}
	}()
	h, path := startHost(t, host.Config{})
	addr := "192.168.127.254:" + portOf(t, srv.Addr())
	e := l4Enclave(t, path, addr)
	before := h.StackTCPConnected()
	const n = 4
	for range n {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		c, err := e.Dial(ctx, "tcp", addr)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close() // never read; closed when the test ends
		if err := c.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
			t.Fatal(err)
		}
	}
	// The relays end once they queued the server's bytes; the orphans
	// must go within a few orphan timeouts (gVisor's backoff between
	// window probes), not stay.
	// 60 s: the slack is for a loaded machine (20 s was missed once with
	// three packages' tests at once on 2 cores); without the timeout they
	// stay for good.
	deadline := time.Now().Add(60 * time.Second)
	for h.StackTCPConnected() > before {
		if time.Now().After(deadline) {
			t.Fatalf("the host's stack still holds %d connected TCP endpoints (%d before the enclave's connections) 60 s later", h.StackTCPConnected(), before)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func portOf(t *testing.T, a net.Addr) string {
	_, p, err := net.SplitHostPort(a.String())
	if err != nil {
		t.Fatal(err)
	}
	return p
}
