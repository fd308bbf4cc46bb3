package egressfw

import (
	"net/netip"
	"testing"

	"github.com/quenchnet/quench/tap/taptest"
)

// BenchmarkOutbound is the filter's cost for a frame of an established
// connection, the common case (no allocation).
func BenchmarkOutbound(b *testing.B) {
	f, c := newFilter(b, 0, "10.0.0.0/8:443")
	// As package enclave configures it: with the gateway (whose link
	// address the filter checks on every frame).
	f = New(Config{Policy: f.p, Subnet: subnet, Gateway: gwIP, MAC: encMAC, DNS: []netip.Addr{gwIP}, Now: c.now})
	f.Inbound(taptest.ARPReply(gwMAC, gwIP, encMAC, encIP))
	if pass, _ := f.Outbound(out("192.168.127.2:40000", "10.1.2.3:443", 7, syn)); !pass {
		b.Fatal("SYN refused")
	}
	f.Inbound(in("10.1.2.3:443", "192.168.127.2:40000", synack))
	frame := out("192.168.127.2:40000", "10.1.2.3:443", 8, ack, make([]byte, 1400)...)
	b.ReportAllocs()
	b.SetBytes(int64(len(frame)))
	for b.Loop() {
		if pass, _ := f.Outbound(frame); !pass {
			b.Fatal("refused")
		}
	}
}

// BenchmarkInbound is the cost of a frame from the host of an established
// connection.
func BenchmarkInbound(b *testing.B) {
	f, _ := newFilter(b, 0, "10.0.0.0/8:443")
	f.Outbound(out("192.168.127.2:40000", "10.1.2.3:443", 7, syn))
	frame := in("10.1.2.3:443", "192.168.127.2:40000", ack)
	b.ReportAllocs()
	for b.Loop() {
		f.Inbound(frame)
	}
}
