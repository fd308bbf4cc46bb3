package netstack

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/quenchnet/quench/internal/testutil"
)

// serveDNS answers A queries on pc from zone (names with a trailing dot)
// until the test ends; other names get NXDOMAIN.
func serveDNS(t *testing.T, pc net.PacketConn, zone map[string]netip.Addr) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		testutil.ServeDNS(pc, zone)
	}()
	t.Cleanup(func() {
		_ = pc.Close()
		<-done
	})
}

func TestResolverAndDialByName(t *testing.T) {
	p := newPair(t, wireDirect, nil)
	// b plays the DNS server at a's gateway address (a's default DNS).
	pc, err := p.b.ListenPacket("udp", ":53")
	if err != nil {
		t.Fatal(err)
	}
	serveDNS(t, pc, map[string]netip.Addr{"svc.quench.test.": addrB})
	ln, err := p.b.Listen("tcp", ":80")
	if err != nil {
		t.Fatal(err)
	}
	echo(t, ln)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	got, err := p.a.Resolver().LookupHost(ctx, "svc.quench.test")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0] != "192.168.127.2" {
		t.Fatalf("LookupHost = %v, want [192.168.127.2]", got)
	}
	c, err := p.a.Dial(ctx, "tcp", "svc.quench.test:http")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.RemoteAddr().String() != "192.168.127.2:80" {
		t.Errorf("RemoteAddr = %v", c.RemoteAddr())
	}
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}

	_, err = p.a.Dial(ctx, "tcp", "missing.quench.test:80")
	var de *net.DNSError
	if err == nil || !errors.As(err, &de) || !de.IsNotFound {
		t.Fatalf("Dial(missing) = %v; want a not-found *net.DNSError", err)
	}
}
