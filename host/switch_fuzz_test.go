package host

import (
	"encoding/binary"
	"log/slog"
	"net"
	"net/netip"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/quenchnet/quench/tap"
	"github.com/quenchnet/quench/tap/taptest"
)

// idlePort attaches a stream of peer to e whose writer never runs: what
// the switch queues for it stays in its fwd queue for inspection.
func idlePort(t *testing.T, e *switchEndpoint, peer string) *port {
	t.Helper()
	a, z := net.Pipe()
	t.Cleanup(func() { _ = a.Close(); _ = z.Close() })
	c, err := tap.NewConn(a, tap.Config{})
	if err != nil {
		t.Fatal(err)
	}
	return e.attachPeer(c, peer, peer)
}

// FuzzSwitchFromEnclave feeds the switch arbitrary frames from one
// enclave stream (the attacker) while another (the victim) owns its MAC
// and 192.168.127.2, and checks the isolation invariants: the victim keeps
// its addresses, and every frame queued for it is IPv4 or ARP from a MAC
// the attacker owns, never from the victim's or the host's addresses. The
// input is a sequence of frames, each prefixed by its length (2 bytes, big
// endian).
func FuzzSwitchFromEnclave(f *testing.F) {
	victimMAC := net.HardwareAddr(DefaultEnclaveMAC)
	attackerMAC := net.HardwareAddr{0x02, 0, 0, 0, 0, 0xaa}
	victimIP, attackerIP := netip.MustParseAddr("192.168.127.2"), netip.MustParseAddr("192.168.127.3")
	gw := netip.MustParseAddr("192.168.127.1")
	frames := func(fs ...[]byte) []byte {
		var b []byte
		for _, fr := range fs {
			b = binary.BigEndian.AppendUint16(b, uint16(len(fr)))
			b = append(b, fr...)
		}
		return b
	}
	bcast := net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	f.Add(frames(taptest.ARPRequest(attackerMAC, attackerIP, gw)))
	f.Add(frames(taptest.ARPRequest(attackerMAC, victimIP, gw), taptest.ARPReply(attackerMAC, gw, victimMAC, victimIP)))
	f.Add(frames(taptest.UDPv4Frame(victimMAC, attackerMAC, netip.AddrPortFrom(victimIP, 1), netip.AddrPortFrom(victimIP, 2), []byte("x"))))
	f.Add(frames(taptest.UDPv4Frame(bcast, attackerMAC, netip.MustParseAddrPort("0.0.0.0:68"), netip.MustParseAddrPort("255.255.255.255:67"), make([]byte, 240))))
	f.Add(frames(taptest.EthernetFrame(victimMAC, attackerMAC, 0x86dd, make([]byte, 48)), taptest.EthernetFrame(victimMAC, victimMAC, 0x0800, nil)))
	f.Add(frames(taptest.UDPv4Frame(victimMAC, attackerMAC, netip.AddrPortFrom(attackerIP, 1), netip.AddrPortFrom(victimIP, 2), []byte("ok"))))

	cfg := Config{
		Subnet:         netip.MustParsePrefix("192.168.127.0/24"),
		GatewayIP:      gw,
		HostLoopbackIP: netip.MustParseAddr("192.168.127.254"),
	}
	cfg.isolationDefaults()
	f.Fuzz(func(t *testing.T, data []byte) {
		e := newSwitch(tap.DefaultMTU, DefaultGatewayMAC, nil, -1, slog.New(slog.DiscardHandler))
		e.isolate(cfg)
		victim, attacker := idlePort(t, e, "victim"), idlePort(t, e, "attacker")
		e.rx(victim, taptest.ARPRequest(victimMAC, victimIP, gw))
		if e.macs[tcpip.LinkAddress(victimMAC)] != victim || e.ips[addr(victimIP)] != victim {
			t.Fatal("the victim does not own its addresses")
		}
		for len(data) >= 2 {
			n := min(int(binary.BigEndian.Uint16(data)), len(data)-2)
			e.rx(attacker, data[2:2+n])
			data = data[2+n:]
		}
		if e.macs[tcpip.LinkAddress(victimMAC)] != victim || e.ips[addr(victimIP)] != victim {
			t.Fatal("the attacker took the victim's MAC or IP address")
		}
		for _, fr := range victim.fwd {
			eth := header.Ethernet(fr)
			if e.macs[eth.SourceAddress()] != attacker {
				t.Fatalf("frame queued for the victim from MAC %s, not one the attacker owns", eth.SourceAddress())
			}
			var src tcpip.Address
			switch eth.Type() {
			case header.IPv4ProtocolNumber:
				src = header.IPv4(fr[header.EthernetMinimumSize:]).SourceAddress()
			case header.ARPProtocolNumber:
				a := header.ARP(fr[header.EthernetMinimumSize:])
				if tcpip.LinkAddress(a.HardwareAddressSender()) != eth.SourceAddress() {
					t.Fatal("ARP queued for the victim names another sender MAC than its frame's")
				}
				src = tcpip.AddrFromSlice(a.ProtocolAddressSender())
			default:
				t.Fatalf("frame of ethertype %#04x queued for the victim", uint16(eth.Type()))
			}
			if src == addr(victimIP) || e.hostOwned[src] {
				t.Fatalf("frame queued for the victim from address %s", src)
			}
		}
	})
}
