package netstack

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

// serveDNS answers A queries on pc from zone (names with a trailing dot)
// until pc is closed; other names get NXDOMAIN.
func serveDNS(t *testing.T, pc net.PacketConn, zone map[string]netip.Addr) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			var p dnsmessage.Parser
			h, err := p.Start(buf[:n])
			if err != nil {
				continue
			}
			q, err := p.Question()
			if err != nil {
				continue
			}
			b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: h.ID, Response: true, Authoritative: true})
			b.EnableCompression()
			a, ok := zone[strings.ToLower(q.Name.String())]
			if !ok {
				b = dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: h.ID, Response: true, RCode: dnsmessage.RCodeNameError})
			}
			_ = b.StartQuestions()
			_ = b.Question(q)
			if ok && q.Type == dnsmessage.TypeA {
				_ = b.StartAnswers()
				_ = b.AResource(dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: 60}, dnsmessage.AResource{A: a.As4()})
			}
			msg, err := b.Finish()
			if err != nil {
				continue
			}
			_, _ = pc.WriteTo(msg, from)
		}
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
