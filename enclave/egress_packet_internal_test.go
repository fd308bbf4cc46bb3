package enclave

import (
	"net/netip"
	"testing"

	"github.com/quenchnet/quench/policy"
)

// TestPolicedPacketConnPeersBounded: the peers a policed PacketConn may
// answer are bounded; the oldest is forgotten first.
func TestPolicedPacketConnPeersBounded(t *testing.T) {
	p, err := policy.Parse([]string{"10.0.0.1:53/udp"})
	if err != nil {
		t.Fatal(err)
	}
	c := newPolicedPacketConn(nil, p)
	peer := func(i int) netip.AddrPort {
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 51, byte(i >> 8), byte(i)}), 1000)
	}
	for i := range maxPacketPeers + 10 {
		c.remember(peer(i))
		c.remember(peer(i)) // twice: counted once
	}
	if len(c.peers) != maxPacketPeers {
		t.Fatalf("%d peers remembered, want %d", len(c.peers), maxPacketPeers)
	}
	for i := range 10 {
		if c.allowed(peer(i)) {
			t.Errorf("peer %d still answered after %d newer ones", i, maxPacketPeers)
		}
	}
	if !c.allowed(peer(maxPacketPeers+9)) || !c.allowed(peer(10)) {
		t.Error("recent peers forgotten")
	}
	if !c.allowed(netip.MustParseAddrPort("10.0.0.1:53")) || c.allowed(netip.MustParseAddrPort("10.0.0.1:54")) {
		t.Error("policy not applied")
	}
}
