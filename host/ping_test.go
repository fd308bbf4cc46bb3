package host_test

import (
	"net/netip"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/quenchnet/quench/host"
)

// TestPingOnlyWhatAnswers: the host's stack takes packets for every
// address (it is the enclave's way out), and gVisor answers an ICMP echo
// request to any of them itself: from inside the enclave, every address
// answered ping, reachable or not (gvisor-tap-vsock#428), which misleads
// whoever checks the enclave's network with ping. ICMP is not forwarded,
// so an echo request to an address the host does not own now gets
// "communication administratively prohibited" from the gateway; the
// gateway and the host loopback address still answer.
func TestPingOnlyWhatAnswers(t *testing.T) {
	h, path := startHost(t, host.Config{})
	c := connectRaw(t, path)
	me := netip.MustParseAddr("192.168.127.2")
	gw := netip.MustParseAddr("192.168.127.1")
	type answer struct {
		from tcpip.Address
		typ  header.ICMPv4Type
		code header.ICMPv4Code
	}
	answers := make(chan answer, 16)
	go func() {
		for {
			f, err := c.Next()
			if err != nil {
				return
			}
			if header.Ethernet(f).Type() != header.IPv4ProtocolNumber {
				continue
			}
			ip := header.IPv4(f[header.EthernetMinimumSize:])
			if ip.Protocol() != uint8(header.ICMPv4ProtocolNumber) {
				continue
			}
			ic := header.ICMPv4(ip.Payload())
			answers <- answer{from: ip.SourceAddress(), typ: ic.Type(), code: ic.Code()}
		}
	}()
	// The gateway learns the enclave's MAC from its ARP request, as from
	// any enclave's first frame, and can answer.
	if _, err := c.WriteFrames([][]byte{arpRequest(enclaveMAC, me, gw)}, 0); err != nil {
		t.Fatal(err)
	}
	ask := func(dst netip.Addr, seq uint16) (answer, bool) {
		t.Helper()
		if _, err := c.WriteFrames([][]byte{icmpEcho(enclaveMAC, me, dst, seq)}, 0); err != nil {
			t.Fatal(err)
		}
		select {
		case a := <-answers:
			return a, true
		case <-time.After(3 * time.Second):
			return answer{}, false
		}
	}
	for i, dst := range []netip.Addr{gw, netip.MustParseAddr("192.168.127.254")} {
		a, ok := ask(dst, uint16(i))
		if !ok || a.typ != header.ICMPv4EchoReply || a.from != tcpip.AddrFrom4(dst.As4()) {
			t.Errorf("ping %s: %+v, %v; want an echo reply from it", dst, a, ok)
		}
	}
	for i, dst := range []netip.Addr{netip.MustParseAddr("203.0.113.7"), netip.MustParseAddr("10.1.2.3")} {
		a, ok := ask(dst, uint16(10+i))
		if !ok || a.typ != header.ICMPv4DstUnreachable || a.code != header.ICMPv4AdminProhibited || a.from != tcpip.AddrFrom4(gw.As4()) {
			t.Errorf("ping %s: %+v, %v; want destination unreachable (administratively prohibited) from the gateway", dst, a, ok)
		}
	}
	if n := h.Stats().ICMPEchoRefused; n != 2 {
		t.Errorf("ICMPEchoRefused = %d, want 2", n)
	}
}
