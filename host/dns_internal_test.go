package host

import (
	"context"
	"errors"
	"net"
	"sync/atomic"
	"testing"
)

// TestZoneNamesStayLocal checks that no query for a name in DNSZone reaches
// the upstream resolver, whatever its type, while other names do.
func TestZoneNamesStayLocal(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	var queries atomic.Int64
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			queries.Add(1)
			// Answer with an empty NXDOMAIN response to the same ID.
			if n >= 12 {
				resp := append([]byte(nil), buf[:n]...)
				resp[2] |= 0x80 // QR
				resp[3] = (resp[3] &^ 0x0f) | 3
				_, _ = pc.WriteTo(resp, from)
			}
		}
	}()
	h, err := New(Config{DNSUpstream: []string{pc.LocalAddr().String()}})
	if err != nil {
		t.Fatal(err)
	}
	r := &policyResolver{h: h, r: h.resolver()}
	ctx := context.Background()
	for _, name := range []string{"host.quench.internal.", "nothing.quench.internal", "QUENCH.INTERNAL."} {
		_, err := r.LookupIPAddr(ctx, name)
		var de *net.DNSError
		if !errors.As(err, &de) || !de.IsNotFound {
			t.Errorf("LookupIPAddr(%q) = %v, want not found", name, err)
		}
		if _, err := r.LookupMX(ctx, name); err == nil {
			t.Errorf("LookupMX(%q) succeeded", name)
		}
	}
	if n := queries.Load(); n != 0 {
		t.Fatalf("%d queries for zone names reached the upstream resolver", n)
	}
	_, _ = r.LookupIPAddr(ctx, "upstream.example.")
	if queries.Load() == 0 {
		t.Fatal("a name outside the zone did not reach the upstream resolver")
	}
}
