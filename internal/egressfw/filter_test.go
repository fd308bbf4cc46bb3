package egressfw

import (
	"encoding/binary"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"

	"github.com/quenchnet/quench/policy"
	"github.com/quenchnet/quench/tap/taptest"
)

var (
	encMAC = net.HardwareAddr{0x5a, 0x94, 0xef, 0xe4, 0x0c, 0xee}
	gwMAC  = net.HardwareAddr{0x5a, 0x94, 0xef, 0xe4, 0x0c, 0xdd}
	encIP  = netip.MustParseAddr("192.168.127.2")
	gwIP   = netip.MustParseAddr("192.168.127.1")
	subnet = netip.MustParsePrefix("192.168.127.2/24")
)

// clock is a settable clock for Config.Now.
type clock struct{ t time.Time }

func (c *clock) now() time.Time          { return c.t }
func (c *clock) advance(d time.Duration) { c.t = c.t.Add(d) }

func newFilter(t testing.TB, max int, rules ...string) (*Filter, *clock) {
	t.Helper()
	p, err := policy.Parse(rules)
	if err != nil {
		t.Fatal(err)
	}
	c := &clock{t: time.Unix(1_800_000_000, 0)}
	return New(Config{Policy: p, Subnet: subnet, DNS: []netip.Addr{gwIP}, MaxFlows: max, Now: c.now}), c
}

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

// out builds a TCP segment from the enclave; in one from the host.
func out(src, dst string, seq uint32, flags uint8, payload ...byte) []byte {
	return taptest.TCPv4Frame(gwMAC, encMAC, taptest.TCPSegment{Src: ap(src), Dst: ap(dst), Seq: seq, Flags: flags, Payload: payload})
}

func in(src, dst string, flags uint8) []byte {
	return taptest.TCPv4Frame(encMAC, gwMAC, taptest.TCPSegment{Src: ap(src), Dst: ap(dst), Flags: flags})
}

const (
	syn    = taptest.TCPFlagSYN
	ack    = taptest.TCPFlagACK
	synack = syn | ack
	fin    = taptest.TCPFlagFIN | ack
	rst    = taptest.TCPFlagRST
)

func mustPass(t *testing.T, f *Filter, frame []byte, what string) {
	t.Helper()
	if pass, reply := f.Outbound(frame); !pass || reply != nil {
		t.Fatalf("%s: pass=%v reply=%x, want passed", what, pass, reply)
	}
}

func mustDrop(t *testing.T, f *Filter, frame []byte, what string) []byte {
	t.Helper()
	pass, reply := f.Outbound(frame)
	if pass {
		t.Fatalf("%s: passed, want refused", what)
	}
	return reply
}

// checkReply checks that reply is a well-formed IPv4 frame back to the
// sender of frame (addresses swapped, checksums valid) and returns its
// transport part.
func checkReply(t *testing.T, frame, reply []byte, proto uint8) []byte {
	t.Helper()
	pk, ok := parseIPv4(reply)
	if !ok || pk.l4 == nil {
		t.Fatalf("reply %x is not an IPv4 frame", reply)
	}
	orig, _ := parseIPv4(frame)
	if string(reply[0:6]) != string(frame[6:12]) || string(reply[6:12]) != string(frame[0:6]) {
		t.Errorf("reply's MACs %x → %x, want %x → %x", reply[6:12], reply[0:6], frame[0:6], frame[6:12])
	}
	if pk.src != orig.dst || pk.dst != orig.src || pk.proto != proto {
		t.Errorf("reply %v → %v proto %d, want %v → %v proto %d", pk.src, pk.dst, pk.proto, orig.dst, orig.src, proto)
	}
	if checksum.Checksum(pk.ip[:20], 0) != 0xffff {
		t.Errorf("reply's IPv4 checksum is wrong")
	}
	if proto != protoICMP {
		var ph [12]byte
		copy(ph[0:4], pk.src[:])
		copy(ph[4:8], pk.dst[:])
		ph[9] = proto
		binary.BigEndian.PutUint16(ph[10:], uint16(len(pk.l4)))
		if checksum.Checksum(pk.l4, checksum.Checksum(ph[:], 0)) != 0xffff {
			t.Errorf("reply's transport checksum is wrong")
		}
	} else if checksum.Checksum(pk.l4, 0) != 0xffff {
		t.Errorf("reply's ICMP checksum is wrong")
	}
	return pk.l4
}

func TestTCPRefusedWithReset(t *testing.T) {
	f, _ := newFilter(t, 0, "10.0.0.0/8:443")
	mustPass(t, f, out("192.168.127.2:40000", "10.1.2.3:443", 7, syn), "SYN to an allowed destination")

	frame := out("192.168.127.2:40001", "10.1.2.3:80", 1000, syn, 'h', 'i')
	reply := mustDrop(t, f, frame, "SYN to a port the rule does not list")
	if reply == nil {
		t.Fatal("no reset for a refused SYN")
	}
	tcp := checkReply(t, frame, reply, protoTCP)
	if sp, dp := binary.BigEndian.Uint16(tcp[0:]), binary.BigEndian.Uint16(tcp[2:]); sp != 80 || dp != 40001 {
		t.Errorf("reset's ports %d → %d, want 80 → 40001", sp, dp)
	}
	if tcp[13] != tcpRST|tcpACK {
		t.Errorf("reset's flags %#x, want RST|ACK", tcp[13])
	}
	if got := binary.BigEndian.Uint32(tcp[8:]); got != 1000+1+2 {
		t.Errorf("reset acknowledges %d, want %d (the SYN and its 2 bytes of data)", got, 1003)
	}
	mustDrop(t, f, out("192.168.127.2:40002", "11.0.0.1:443", 1, syn), "SYN outside the CIDR")
	if s := f.Stats(); s.TCP != 2 || s.Flows != 1 {
		t.Errorf("stats %+v, want 2 TCP refusals and 1 flow", s)
	}
}

func TestTCPFlows(t *testing.T) {
	f, c := newFilter(t, 0, "10.0.0.0/8:443")
	if reply := mustDrop(t, f, out("192.168.127.2:40000", "10.9.9.9:80", 7, synack), "SYN-ACK nobody asked for"); reply != nil {
		t.Error("a stray SYN-ACK was answered")
	}

	// A connection the host opens into the enclave, from a peer the policy
	// does not allow: handshake, data both ways, idle for a day less a
	// minute, FIN both ways, then gone after TCPOpenTimeout.
	local, peer := "192.168.127.2:8080", "203.0.113.9:5555"
	f.Inbound(in(peer, local, syn))
	mustPass(t, f, out(local, peer, 1, synack), "SYN-ACK")
	f.Inbound(in(peer, local, ack))
	mustPass(t, f, out(local, peer, 2, ack, 'x'), "data")
	c.advance(TCPIdleTimeout - time.Minute)
	mustPass(t, f, out(local, peer, 3, ack, 'x'), "data after a long idle")
	mustPass(t, f, out(local, peer, 4, fin), "FIN")
	f.Inbound(in(peer, local, fin))
	mustPass(t, f, out(local, peer, 5, ack), "last ACK")
	c.advance(TCPOpenTimeout + time.Second)
	if reply := mustDrop(t, f, out(local, peer, 5, ack), "ACK after the closed flow expired"); reply == nil {
		t.Error("a segment of no flow to a destination not allowed did not reset its socket")
	}

	// A connection whose handshake never completes lasts TCPOpenTimeout.
	peer = "203.0.113.9:5556"
	f.Inbound(in(peer, local, syn))
	mustPass(t, f, out(local, peer, 1, synack), "SYN-ACK")
	c.advance(TCPOpenTimeout + time.Second)
	mustDrop(t, f, out(local, peer, 2, ack, 'x'), "data on a half-open flow that expired")

	// A reset ends a flow at once, from either side.
	peer = "203.0.113.9:5557"
	f.Inbound(in(peer, local, syn))
	mustPass(t, f, out(local, peer, 1, synack), "SYN-ACK")
	f.Inbound(in(peer, local, ack))
	f.Inbound(in(peer, local, rst))
	mustDrop(t, f, out(local, peer, 2, ack, 'x'), "data after the peer's reset")
	peer = "203.0.113.9:5558"
	f.Inbound(in(peer, local, syn))
	mustPass(t, f, out(local, peer, 1, synack), "SYN-ACK")
	f.Inbound(in(peer, local, ack))
	mustPass(t, f, out(local, peer, 2, rst), "the enclave's reset")
	mustDrop(t, f, out(local, peer, 2, ack, 'x'), "data after the enclave's reset")
}

// Connections older than the filter (quench-enclave restarted, the
// program's socket lived on) or whose flow expired are picked up mid-stream
// when the policy allows their destination or the host spoke on them first
// (a connection into the enclave); any other is reset in the enclave, so
// the program fails at once instead of after its retransmissions.
func TestTCPMidStream(t *testing.T) {
	f, _ := newFilter(t, 0, "10.0.0.0/8:443")
	mustPass(t, f, out("192.168.127.2:40000", "10.1.2.3:443", 7, ack, 'x'), "data to an allowed destination")
	mustPass(t, f, out("192.168.127.2:40000", "10.1.2.3:443", 8, fin), "its FIN")
	if s := f.Stats(); s.Flows != 1 {
		t.Errorf("%d flows, want the one picked up", s.Flows)
	}

	frame := taptest.TCPv4Frame(gwMAC, encMAC, taptest.TCPSegment{Src: ap("192.168.127.2:40001"), Dst: ap("11.1.2.3:443"), Seq: 7, Ack: 4242, Flags: ack, Payload: []byte("secret")})
	reply := mustDrop(t, f, frame, "data to a destination not allowed")
	if reply == nil {
		t.Fatal("no reset for the program's socket")
	}
	tcp := checkReply(t, frame, reply, protoTCP)
	if tcp[13] != tcpRST || binary.BigEndian.Uint32(tcp[4:]) != 4242 {
		t.Errorf("reset flags %#x seq %d, want RST with seq 4242 (the segment's ACK)", tcp[13], binary.BigEndian.Uint32(tcp[4:]))
	}

	// A connection into the enclave that outlived the filter: the host's
	// next segment comes first.
	local, peer := "192.168.127.2:8080", "203.0.113.9:6000"
	f.Inbound(in(peer, local, ack))
	mustPass(t, f, out(local, peer, 1, ack, 'o', 'k'), "reply on a connection the host spoke on")
	mustPass(t, f, out(local, peer, 2, ack, 'o', 'k'), "and the next")
	// Not on another port of the same peer.
	if reply := mustDrop(t, f, out(local, "203.0.113.9:6001", 1, ack, 'x'), "data to another port of the peer"); reply == nil {
		t.Error("no reset for the program's socket")
	}
}

func TestTCPInbound(t *testing.T) {
	f, c := newFilter(t, 0, "10.0.0.0/8:443")
	// A connection the host opens into the enclave: its replies pass,
	// whatever the policy says about the peer.
	mustDrop(t, f, out("192.168.127.2:8080", "203.0.113.9:5555", 1, synack), "SYN-ACK before the SYN")
	f.Inbound(in("203.0.113.9:5555", "192.168.127.2:8080", syn))
	mustPass(t, f, out("192.168.127.2:8080", "203.0.113.9:5555", 1, synack), "SYN-ACK to an inbound SYN")
	f.Inbound(in("203.0.113.9:5555", "192.168.127.2:8080", ack))
	c.advance(time.Hour)
	mustPass(t, f, out("192.168.127.2:8080", "203.0.113.9:5555", 2, ack, 'o', 'k'), "reply an hour later")
	// The same peer on another port is not part of it.
	if reply := mustDrop(t, f, out("192.168.127.2:8080", "203.0.113.9:5556", 1, ack), "another port of the peer"); reply == nil {
		t.Error("the program's socket was not reset")
	}
	if s := f.Stats(); s.TCP != 0 {
		t.Errorf("stray segments counted as refused connections: %+v", s)
	}
}

func TestUDP(t *testing.T) {
	f, c := newFilter(t, 0, "10.0.0.5:5000/udp")
	udp := func(src, dst string, payload string) []byte {
		return taptest.UDPv4Frame(gwMAC, encMAC, ap(src), ap(dst), []byte(payload))
	}
	mustPass(t, f, udp("192.168.127.2:4000", "10.0.0.5:5000", "hi"), "datagram to an allowed destination")
	frame := udp("192.168.127.2:4000", "10.0.0.6:5000", "secret")
	reply := mustDrop(t, f, frame, "datagram to another address")
	if reply == nil {
		t.Fatal("no ICMP error for a refused datagram")
	}
	icmp := checkReply(t, frame, reply, protoICMP)
	if icmp[0] != 3 || icmp[1] != 13 {
		t.Errorf("ICMP type %d code %d, want 3/13", icmp[0], icmp[1])
	}
	orig, _ := parseIPv4(frame)
	if want := orig.ip[:28]; string(icmp[8:]) != string(want) {
		t.Errorf("ICMP quotes %x, want %x (the IP header and 8 bytes)", icmp[8:], want)
	}

	// A peer that sends first may be answered, for UDPTimeout after the
	// last datagram.
	peer := "198.51.100.7:53000"
	mustDrop(t, f, udp("192.168.127.2:7000", peer, "unasked"), "datagram to a peer before it wrote")
	f.Inbound(taptest.UDPv4Frame(encMAC, gwMAC, ap(peer), ap("192.168.127.2:7000"), []byte("ping")))
	mustPass(t, f, udp("192.168.127.2:7000", peer, "pong"), "reply to a peer that wrote")
	mustDrop(t, f, udp("192.168.127.2:7001", peer, "pong"), "from another port to that peer")
	c.advance(UDPTimeout - time.Second)
	mustPass(t, f, udp("192.168.127.2:7000", peer, "pong"), "reply within the timeout")
	c.advance(UDPTimeout + time.Second)
	mustDrop(t, f, udp("192.168.127.2:7000", peer, "late"), "reply after the timeout")
}

// query builds a DNS query frame from the enclave to its DNS server.
func query(t testing.TB, id uint16, names ...string) []byte {
	t.Helper()
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: id, RecursionDesired: true})
	_ = b.StartQuestions()
	for _, n := range names {
		if err := b.Question(dnsmessage.Question{Name: dnsmessage.MustNewName(n), Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET}); err != nil {
			t.Fatal(err)
		}
	}
	msg, err := b.Finish()
	if err != nil {
		t.Fatal(err)
	}
	return taptest.UDPv4Frame(gwMAC, encMAC, ap("192.168.127.2:33333"), ap("192.168.127.1:53"), msg)
}

// answer builds the DNS server's answer frame: name has the A records ips.
func answer(t testing.TB, name string, ips ...string) []byte {
	t.Helper()
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: 1, Response: true})
	_ = b.StartQuestions()
	n := dnsmessage.MustNewName(name)
	_ = b.Question(dnsmessage.Question{Name: n, Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET})
	_ = b.StartAnswers()
	cname := dnsmessage.MustNewName("edge.cdn.example.")
	_ = b.CNAMEResource(dnsmessage.ResourceHeader{Name: n, Class: dnsmessage.ClassINET}, dnsmessage.CNAMEResource{CNAME: cname})
	for _, ip := range ips {
		if err := b.AResource(dnsmessage.ResourceHeader{Name: cname, Class: dnsmessage.ClassINET, TTL: 60}, dnsmessage.AResource{A: netip.MustParseAddr(ip).As4()}); err != nil {
			t.Fatal(err)
		}
	}
	msg, err := b.Finish()
	if err != nil {
		t.Fatal(err)
	}
	return taptest.UDPv4Frame(encMAC, gwMAC, ap("192.168.127.1:53"), ap("192.168.127.2:33333"), msg)
}

func TestDNS(t *testing.T) {
	f, _ := newFilter(t, 0, "api.example.com:443", "192.168.127.254:9000")
	mustPass(t, f, query(t, 1, "api.example.com."), "query for an allowed name")

	frame := query(t, 42, "api.example.com.", "secret.attacker.example.")
	reply := mustDrop(t, f, frame, "query with a name not allowed")
	if reply == nil {
		t.Fatal("no NXDOMAIN answer")
	}
	u := checkReply(t, frame, reply, protoUDP)
	var p dnsmessage.Parser
	h, err := p.Start(u[8:])
	if err != nil || !h.Response || h.ID != 42 || h.RCode != dnsmessage.RCodeNameError {
		t.Errorf("answer %+v (%v), want an NXDOMAIN response with ID 42", h, err)
	}
	if binary.BigEndian.Uint16(u[0:]) != 53 || binary.BigEndian.Uint16(u[2:]) != 33333 {
		t.Errorf("answer's ports %d → %d, want 53 → 33333", binary.BigEndian.Uint16(u[0:]), binary.BigEndian.Uint16(u[2:]))
	}
	// Anything else to the DNS server's port is not a query: dropped,
	// not answered.
	junk := taptest.UDPv4Frame(gwMAC, encMAC, ap("192.168.127.2:33333"), ap("192.168.127.1:53"), []byte("exfiltrated bytes"))
	if reply := mustDrop(t, f, junk, "junk to the DNS port"); reply != nil {
		t.Error("junk to the DNS port was answered")
	}

	// The answer for the allowed name teaches its addresses (through a
	// CNAME) to the hostname rule, on the rule's ports only.
	if !f.Inbound(answer(t, "api.example.com.", "203.0.113.10", "203.0.113.11")) {
		t.Fatal("answer for an allowed name dropped")
	}
	mustPass(t, f, out("192.168.127.2:40000", "203.0.113.11:443", 1, syn), "SYN to a learned address")
	mustDrop(t, f, out("192.168.127.2:40001", "203.0.113.11:80", 1, syn), "SYN to a learned address, other port")
	// An answer for a name the policy does not allow teaches nothing
	// (the host may send it unasked).
	f.Inbound(answer(t, "other.example.", "203.0.113.20"))
	mustDrop(t, f, out("192.168.127.2:40002", "203.0.113.20:443", 1, syn), "SYN to an address of a name not allowed")

	// An answer that leads an allowed name into the enclave is dropped,
	// unless an address rule names the address.
	for _, ip := range []string{"127.0.0.1", "192.168.127.2", "0.0.0.0", "255.255.255.255", "224.0.0.1"} {
		if f.Inbound(answer(t, "api.example.com.", ip)) {
			t.Errorf("answer %s for an allowed name delivered", ip)
		}
	}
	inside := New(Config{Policy: f.p, Subnet: subnet, DNS: []netip.Addr{gwIP}, Inside: func(netip.Addr) bool { return true }})
	if !inside.Inbound(answer(t, "api.example.com.", "192.168.127.254")) {
		t.Error("answer with an address an address rule names was dropped")
	}
	if s := f.Stats(); s.DNS != 1 || s.Answers != 5 {
		t.Errorf("stats %+v, want 1 DNS refusal and 5 answers dropped", s)
	}
}

func TestOtherFrames(t *testing.T) {
	f, _ := newFilter(t, 0, "*")
	// ARP within the subnet only.
	mustPass(t, f, taptest.ARPRequest(encMAC, encIP, gwIP), "ARP for the gateway")
	mustDrop(t, f, taptest.ARPRequest(encMAC, encIP, netip.MustParseAddr("10.0.0.1")), "ARP outside the subnet")
	// IPv6, other ethertypes, short frames.
	mustDrop(t, f, taptest.EthernetFrame(gwMAC, encMAC, taptest.EtherTypeIPv6, make([]byte, 60)), "IPv6")
	mustDrop(t, f, taptest.EthernetFrame(gwMAC, encMAC, 0x8100, make([]byte, 60)), "VLAN")
	mustDrop(t, f, []byte{1, 2, 3}, "3 bytes")
	// "*" allows any TCP and UDP destination, not pings.
	mustPass(t, f, out("192.168.127.2:40000", "8.8.8.8:1", 1, syn), "SYN with *")
	echo := icmpFrame(8, 77)
	mustDrop(t, f, echo, "ping out")
	// An echo reply only to a peer that asked, once.
	mustDrop(t, f, icmpFrame(0, 77), "echo reply nobody asked for")
	req := icmpFrame(8, 77)
	swapped := append([]byte(nil), req...)
	copy(swapped[ethLen+12:], req[ethLen+16:ethLen+20])
	copy(swapped[ethLen+16:], req[ethLen+12:ethLen+16])
	f.Inbound(swapped)
	mustPass(t, f, icmpFrame(0, 77), "echo reply to a ping")
	mustDrop(t, f, icmpFrame(0, 77), "second echo reply")
}

// icmpFrame is an ICMP message of type typ and identifier id from the
// enclave to 10.0.0.1.
func icmpFrame(typ uint8, id uint16) []byte {
	c := make([]byte, 16)
	c[0] = typ
	binary.BigEndian.PutUint16(c[4:], id)
	binary.BigEndian.PutUint16(c[2:], ^checksum.Checksum(c, 0))
	ip := make([]byte, 20+len(c))
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(len(ip)))
	ip[8], ip[9] = 64, protoICMP
	copy(ip[12:], encIP.AsSlice())
	copy(ip[16:], []byte{10, 0, 0, 1})
	copy(ip[20:], c)
	return taptest.EthernetFrame(gwMAC, encMAC, taptest.EtherTypeIPv4, ip)
}

func TestFragments(t *testing.T) {
	f, _ := newFilter(t, 0, "10.0.0.5:5000/udp")
	frag := func(dst string, id uint16, offset int, more bool) []byte {
		frame := taptest.UDPv4Frame(gwMAC, encMAC, ap("192.168.127.2:4000"), ap(dst), make([]byte, 64))
		ip := frame[ethLen:]
		binary.BigEndian.PutUint16(ip[4:], id)
		ff := uint16(offset / 8)
		if more {
			ff |= 0x2000
		}
		binary.BigEndian.PutUint16(ip[6:], ff)
		if offset != 0 { // a later fragment: the payload is not a UDP header
			binary.BigEndian.PutUint16(ip[20:], 9999)
		}
		return frame
	}
	mustDrop(t, f, frag("10.0.0.5:5000", 9, 1480, false), "later fragment without its first")
	mustPass(t, f, frag("10.0.0.5:5000", 9, 0, true), "first fragment")
	mustPass(t, f, frag("10.0.0.5:5000", 9, 1480, false), "later fragment")
	mustDrop(t, f, frag("10.0.0.6:5000", 9, 1480, false), "later fragment to another address")
	mustDrop(t, f, frag("10.0.0.6:5000", 10, 0, true), "refused first fragment")
	mustDrop(t, f, frag("10.0.0.6:5000", 10, 1480, false), "its later fragment")
}

func TestFlowTableBounded(t *testing.T) {
	f, c := newFilter(t, 4, "*")
	for i := range 4 {
		mustPass(t, f, out("192.168.127.2:"+itoa(40000+i), "10.0.0.1:443", 1, syn), "SYN")
	}
	if reply := mustDrop(t, f, out("192.168.127.2:40010", "10.0.0.1:443", 1, syn), "SYN past MaxFlows"); reply == nil {
		t.Error("a SYN refused for a full table was not reset")
	}
	// Inbound connections do not get past it either.
	f.Inbound(in("203.0.113.9:5555", "192.168.127.2:8080", syn))
	mustDrop(t, f, out("192.168.127.2:8080", "203.0.113.9:5555", 1, synack), "SYN-ACK past MaxFlows")
	if s := f.Stats(); s.Full != 2 || s.Flows != 4 {
		t.Errorf("stats %+v, want 2 refused for a full table, 4 flows", s)
	}
	c.advance(TCPOpenTimeout + time.Second)
	mustPass(t, f, out("192.168.127.2:40010", "10.0.0.1:443", 1, syn), "SYN once the half-open flows expired")
	if s := f.Stats(); s.Flows != 1 {
		t.Errorf("%d flows after the sweep, want 1", s.Flows)
	}
}

func itoa(i int) string {
	return netip.AddrPortFrom(netip.IPv4Unspecified(), uint16(i)).String()[len("0.0.0.0:"):]
}

// TestPermitName: a name's permission (the enclave's own connections)
// lets its DNS questions through until it expires.
func TestPermitName(t *testing.T) {
	f, c := newFilter(t, 0, "10.0.0.0/8:443")
	f.PermitName("Leader.Example.")
	mustPass(t, f, query(t, 1, "leader.example."), "question about a permitted name")
	mustPass(t, f, query(t, 2, "leader.example."), "a second question about it")
	mustDrop(t, f, query(t, 3, "other.example."), "question about another name")
	c.advance(PermitTimeout + time.Second)
	mustDrop(t, f, query(t, 4, "leader.example."), "question after the name's permission expired")
}

// A segment from the host for a connection the enclave no longer has (its
// program, or the whole enclave, restarted) is answered by the kernel with
// a reset, which must go out: otherwise the host's end lingers until its
// retransmissions give up. Only that reset, once, and only as the kernel
// builds it (the host chose its sequence number): not a channel for data.
func TestResetForStraySegment(t *testing.T) {
	f, c := newFilter(t, 0, "10.0.0.0/8:443")
	stray := taptest.TCPv4Frame(encMAC, gwMAC, taptest.TCPSegment{Src: ap("203.0.113.9:5555"), Dst: ap("192.168.127.2:8080"), Seq: 500, Ack: 9000, Flags: ack, Payload: []byte("GET")})
	reset := func(seq uint32, flags uint8, payload ...byte) []byte {
		return taptest.TCPv4Frame(gwMAC, encMAC, taptest.TCPSegment{Src: ap("192.168.127.2:8080"), Dst: ap("203.0.113.9:5555"), Seq: seq, Flags: flags, Payload: payload})
	}
	mustDrop(t, f, reset(9000, rst), "reset before any segment came")
	f.Inbound(stray)
	mustDrop(t, f, reset(9001, rst), "reset with another sequence number")
	mustDrop(t, f, reset(9000, rst, 's', 'e', 'c'), "reset carrying data")
	mustPass(t, f, reset(9000, rst), "the kernel's reset")
	mustDrop(t, f, reset(9000, rst), "a second reset")

	// A stray segment without ACK: the kernel's reset has sequence 0 and
	// acknowledges it.
	f.Inbound(taptest.TCPv4Frame(encMAC, gwMAC, taptest.TCPSegment{Src: ap("203.0.113.9:5556"), Dst: ap("192.168.127.2:8080"), Seq: 700, Flags: taptest.TCPFlagFIN, Payload: []byte("ab")}))
	mustDrop(t, f, taptest.TCPv4Frame(gwMAC, encMAC, taptest.TCPSegment{Src: ap("192.168.127.2:8080"), Dst: ap("203.0.113.9:5556"), Seq: 0, Ack: 12345, Flags: rst | ack}), "reset acknowledging something else")
	mustPass(t, f, taptest.TCPv4Frame(gwMAC, encMAC, taptest.TCPSegment{Src: ap("192.168.127.2:8080"), Dst: ap("203.0.113.9:5556"), Seq: 0, Ack: 703, Flags: rst | ack}), "the kernel's reset to a segment without ACK")

	// The leave expires.
	f.Inbound(stray)
	c.advance(PermitTimeout + time.Second)
	mustDrop(t, f, reset(9000, rst), "reset long after the segment")
}

// fragment splits the IPv4 frame into two fragments, the first carrying
// the first n bytes (a multiple of 8) of its payload.
func fragment(frame []byte, n int) (first, second []byte) {
	ip := frame[ethLen:]
	payload := ip[20:]
	build := func(part []byte, offset int, more bool) []byte {
		h := make([]byte, 20+len(part))
		copy(h, ip[:20])
		binary.BigEndian.PutUint16(h[2:], uint16(len(h)))
		binary.BigEndian.PutUint16(h[4:], 0x4242)
		ff := uint16(offset / 8)
		if more {
			ff |= 0x2000
		}
		binary.BigEndian.PutUint16(h[6:], ff)
		h[10], h[11] = 0, 0
		binary.BigEndian.PutUint16(h[10:], ^checksum.Checksum(h[:20], 0))
		copy(h[20:], part)
		return append(append([]byte(nil), frame[:ethLen]...), h...)
	}
	return build(payload[:n], 0, true), build(payload[n:], n, false)
}

// TestDNSAnswerFragmented: an answer that leads an allowed name into the
// enclave must not get in by coming in fragments, which the filter cannot
// parse (the enclave's kernel reassembles them).
func TestDNSAnswerFragmented(t *testing.T) {
	f, _ := newFilter(t, 0, "api.example.com:443")
	first, second := fragment(answer(t, "api.example.com.", "127.0.0.1"), 16)
	if f.Inbound(first) && f.Inbound(second) {
		t.Error("an answer leading an allowed name to 127.0.0.1 was delivered in fragments")
	}
}

// TestDNSAnswerUnchecked: an answer whose records the filter cannot read
// through must not be delivered unchecked: some stub resolvers (musl's
// matches answers by ID) accept an answer without a question section.
func TestDNSAnswerUnchecked(t *testing.T) {
	f, _ := newFilter(t, 0, "api.example.com:443")
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: 1, Response: true})
	_ = b.StartAnswers()
	name := dnsmessage.MustNewName("api.example.com.")
	if err := b.AResource(dnsmessage.ResourceHeader{Name: name, Class: dnsmessage.ClassINET, TTL: 60}, dnsmessage.AResource{A: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	msg, err := b.Finish()
	if err != nil {
		t.Fatal(err)
	}
	frame := taptest.UDPv4Frame(encMAC, gwMAC, ap("192.168.127.1:53"), ap("192.168.127.2:33333"), msg)
	if f.Inbound(frame) {
		t.Error("an answer without a question, leading api.example.com to 127.0.0.1, was delivered")
	}
	// Records the parser cannot read past: dropped too.
	eb := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: 1, Response: true})
	good, err := eb.Finish()
	if err != nil {
		t.Fatal(err)
	}
	bad := append([]byte(nil), good...)
	binary.BigEndian.PutUint16(bad[6:], 1) // one answer, missing
	frame = taptest.UDPv4Frame(encMAC, gwMAC, ap("192.168.127.1:53"), ap("192.168.127.2:33333"), bad)
	if f.Inbound(frame) {
		t.Error("an answer whose records cannot be read was delivered")
	}
	frame = taptest.UDPv4Frame(encMAC, gwMAC, ap("192.168.127.1:53"), ap("192.168.127.2:33333"), good)
	if !f.Inbound(frame) {
		t.Error("an empty answer was dropped")
	}
}

// withOptions returns the IPv4 frame with opts (a multiple of 4 bytes)
// inserted as its header's options.
func withOptions(frame, opts []byte) []byte {
	ip := frame[ethLen:]
	h := make([]byte, 0, len(frame)+len(opts))
	h = append(h, frame[:ethLen]...)
	h = append(h, ip[:20]...)
	h = append(h, opts...)
	h = append(h, ip[20:]...)
	nip := h[ethLen:]
	nip[0] = 0x40 | byte((20+len(opts))/4)
	binary.BigEndian.PutUint16(nip[2:], uint16(len(nip)))
	nip[10], nip[11] = 0, 0
	binary.BigEndian.PutUint16(nip[10:], ^checksum.Checksum(nip[:20+len(opts)], 0))
	return h
}

// TestIPOptions: the enclave's IPv4 packets with options are dropped. A
// program needs no privilege to set IP_OPTIONS, and a loose source route
// makes the header's destination (what the filter checks) only the first
// hop: the packet asks it to go on to the route's last address.
func TestIPOptions(t *testing.T) {
	f, _ := newFilter(t, 0, "10.0.0.0/8:443")
	// LSRR: type 0x83, length 7, pointer 4, the address 203.0.113.66;
	// then an end of options.
	lsrr := []byte{0x83, 7, 4, 203, 0, 113, 66, 0}
	mustDrop(t, f, withOptions(out("192.168.127.2:40000", "10.1.2.3:443", 1, syn), lsrr), "SYN with a loose source route")
	mustPass(t, f, out("192.168.127.2:40000", "10.1.2.3:443", 1, syn), "SYN without options")
	f.Inbound(in("10.1.2.3:443", "192.168.127.2:40000", synack))
	mustDrop(t, f, withOptions(out("192.168.127.2:40000", "10.1.2.3:443", 2, ack, 'x'), lsrr), "a flow's segment with a loose source route")
}

// TestSpoofedSource: the enclave's IPv4 packets must come from its own
// address. A program with CAP_NET_RAW could otherwise send to an allowed
// destination in a third party's name (whose replies, echoing its data, go
// to that third party), and fill the flow table with flows of addresses
// that are not the enclave's.
func TestSpoofedSource(t *testing.T) {
	f, _ := newFilter(t, 0, "10.0.0.0/8:443", "10.0.0.0/8:53/udp")
	mustDrop(t, f, out("203.0.113.66:40000", "10.1.2.3:443", 1, syn), "SYN from another address")
	mustDrop(t, f, taptest.UDPv4Frame(gwMAC, encMAC, ap("203.0.113.66:4000"), ap("10.1.2.3:53"), []byte("x")), "datagram from another address")
	mustPass(t, f, out("192.168.127.2:40000", "10.1.2.3:443", 1, syn), "SYN from the enclave's address")
	if s := f.Stats(); s.Flows != 1 {
		t.Errorf("%d flows, want 1", s.Flows)
	}
}

// withDstMAC returns frame sent to the Ethernet address mac.
func withDstMAC(frame []byte, mac net.HardwareAddr) []byte {
	frame = append([]byte(nil), frame...)
	copy(frame[0:6], mac)
	return frame
}

// TestEthernetDestination: the host's switch forwards a frame to the
// enclave its Ethernet destination names, and floods broadcast frames to
// every enclave: an allowed IP destination in a frame addressed to another
// enclave's MAC (or to all) would hand the enclave's data to another
// enclave, with another policy or none, past this one. Frames routed
// through the gateway go to the gateway's MAC only (learned from its ARP),
// and broadcast frames only to broadcast addresses.
func TestEthernetDestination(t *testing.T) {
	p, err := policy.Parse([]string{"10.0.0.0/8:443", "api.example.com:443"})
	if err != nil {
		t.Fatal(err)
	}
	f := New(Config{Policy: p, Subnet: subnet, Gateway: gwIP, DNS: []netip.Addr{gwIP}})
	other := net.HardwareAddr{0x02, 0, 0, 0, 0, 0x66}
	bcast := net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	syn1 := out("192.168.127.2:40000", "10.1.2.3:443", 1, syn)
	mustDrop(t, f, syn1, "SYN before the gateway's MAC is known")
	if !f.Inbound(taptest.ARPReply(gwMAC, gwIP, encMAC, encIP)) {
		t.Fatal("the gateway's ARP reply was dropped")
	}
	mustDrop(t, f, withDstMAC(syn1, bcast), "SYN to an allowed address in a broadcast frame")
	mustDrop(t, f, withDstMAC(syn1, other), "SYN to an allowed address in a frame to another MAC")
	mustDrop(t, f, withDstMAC(query(t, 1, "api.example.com."), other), "DNS query to the gateway's address in a frame to another MAC")
	mustPass(t, f, syn1, "SYN to the gateway's MAC")
	mustDrop(t, f, withDstMAC(out("192.168.127.2:40000", "10.1.2.3:443", 2, ack, 'x'), other), "a flow's segment to another MAC")
	mustPass(t, f, query(t, 1, "api.example.com."), "DNS query to the gateway's MAC")
	// Another enclave's ARP (its sender address is not the gateway's)
	// teaches nothing.
	f.Inbound(taptest.ARPReply(other, netip.MustParseAddr("192.168.127.3"), encMAC, encIP))
	mustPass(t, f, out("192.168.127.2:40001", "10.1.2.3:443", 1, syn), "SYN to the gateway's MAC after another enclave's ARP")
}

// TestARPFrames: ARP requests are broadcast, and the host's switch floods
// them to every enclave: the filter passes only ARP as the enclave's
// kernel writes it, without room for a program's data (bytes after the
// ARP packet, another sender address, a target link address in a
// request).
func TestARPFrames(t *testing.T) {
	f, _ := newFilter(t, 0, "*")
	req := taptest.ARPRequest(encMAC, encIP, gwIP)
	mustPass(t, f, req, "ARP request")
	mustPass(t, f, taptest.ARPReply(encMAC, encIP, gwMAC, gwIP), "ARP reply")
	mustPass(t, f, append(append([]byte(nil), req...), make([]byte, 18)...), "ARP request with zero padding")
	mustDrop(t, f, append(append([]byte(nil), req...), []byte("exfiltrated bytes")...), "ARP request with data after it")
	mustDrop(t, f, taptest.ARPRequest(encMAC, netip.MustParseAddr("192.168.127.99"), gwIP), "ARP request from another address")
	spoofMAC := append([]byte(nil), req...)
	copy(spoofMAC[ethLen+8:], []byte{0x02, 1, 2, 3, 4, 5})
	mustDrop(t, f, spoofMAC, "ARP request with another sender link address than the frame's")
	targetMAC := append([]byte(nil), req...)
	copy(targetMAC[ethLen+18:], []byte("secret"))
	mustDrop(t, f, targetMAC, "ARP request with data in its target link address")
	badOp := append([]byte(nil), req...)
	binary.BigEndian.PutUint16(badOp[ethLen+6:], 0x4242)
	mustDrop(t, f, badOp, "ARP with another operation")
}

// withSrcMAC returns frame sent from the Ethernet address mac.
func withSrcMAC(frame []byte, mac net.HardwareAddr) []byte {
	frame = append([]byte(nil), frame...)
	copy(frame[6:12], mac)
	return frame
}

// TestInboundNotViaGateway: another enclave on the host's switch can send
// frames to this enclave's MAC with any source address outside the subnet
// (the switch lets it: nobody owns those). Were they believed, a
// colluding enclave could open flows (a SYN or a datagram "from"
// 203.0.113.66) or teach DNS answers from an outside DNS server, and this
// enclave's programs would reach those addresses. Only the gateway speaks
// for addresses outside the subnet.
func TestInboundNotViaGateway(t *testing.T) {
	p, err := policy.Parse([]string{"api.example.com:443"})
	if err != nil {
		t.Fatal(err)
	}
	outside := netip.MustParseAddr("198.51.100.53")
	f := New(Config{Policy: p, Subnet: subnet, Gateway: gwIP, DNS: []netip.Addr{outside}})
	f.Inbound(taptest.ARPRequest(gwMAC, gwIP, encIP))
	other := net.HardwareAddr{0x02, 0, 0, 0, 0, 0x66}

	if f.Inbound(withSrcMAC(in("203.0.113.66:5555", "192.168.127.2:8080", syn), other)) {
		t.Error("a SYN from an outside address, not through the gateway, was delivered")
	}
	mustDrop(t, f, out("192.168.127.2:8080", "203.0.113.66:5555", 1, synack), "SYN-ACK to a SYN from another enclave")
	f.Inbound(withSrcMAC(taptest.UDPv4Frame(encMAC, gwMAC, ap("203.0.113.66:5555"), ap("192.168.127.2:7000"), []byte("x")), other))
	mustDrop(t, f, taptest.UDPv4Frame(gwMAC, encMAC, ap("192.168.127.2:7000"), ap("203.0.113.66:5555"), []byte("y")), "reply to a datagram from another enclave")
	ans := answer(t, "api.example.com.", "203.0.113.77")
	copy(ans[ethLen+12:], outside.AsSlice()) // from the outside DNS server (checksums do not matter here)
	f.Inbound(withSrcMAC(ans, other))
	mustDrop(t, f, out("192.168.127.2:40000", "203.0.113.77:443", 1, syn), "SYN to an address another enclave's DNS answer taught")

	// Through the gateway: believed.
	f.Inbound(in("203.0.113.66:5555", "192.168.127.2:8080", syn))
	mustPass(t, f, out("192.168.127.2:8080", "203.0.113.66:5555", 1, synack), "SYN-ACK to a SYN through the gateway")
	f.Inbound(ans)
	mustPass(t, f, out("192.168.127.2:40000", "203.0.113.77:443", 1, syn), "SYN to an address the DNS answer taught")
}

// TestEthernetDestinationInSubnet: a rule may name an address in the
// subnet (192.168.127.254, the host's loopback, is a documented one):
// frames to it must go to the link address ARP gave for it, not to another
// enclave's, which the host's switch would deliver them to.
func TestEthernetDestinationInSubnet(t *testing.T) {
	p, err := policy.Parse([]string{"192.168.127.254:9000"})
	if err != nil {
		t.Fatal(err)
	}
	f := New(Config{Policy: p, Subnet: subnet, Gateway: gwIP, DNS: []netip.Addr{gwIP}})
	hostLo := netip.MustParseAddr("192.168.127.254")
	other := net.HardwareAddr{0x02, 0, 0, 0, 0, 0x66}
	f.Inbound(taptest.ARPReply(gwMAC, gwIP, encMAC, encIP))
	syn1 := out("192.168.127.2:40000", "192.168.127.254:9000", 1, syn)
	mustDrop(t, f, withDstMAC(syn1, other), "SYN to an allowed address in the subnet, in a frame to another enclave's MAC, before ARP")
	f.Inbound(taptest.ARPReply(gwMAC, hostLo, encMAC, encIP)) // the gateway answers for the host's loopback
	f.Inbound(taptest.ARPRequest(other, netip.MustParseAddr("192.168.127.3"), encIP))
	mustDrop(t, f, withDstMAC(syn1, other), "SYN to an allowed address in the subnet, in a frame to another enclave's MAC")
	mustPass(t, f, syn1, "SYN to an allowed address in the subnet, to the MAC ARP gave")
}

// TestDNSOverTCP: DNS over TCP is not inspected, so the answers the filter
// drops over UDP (an allowed name led to 127.0.0.1) would get in over TCP
// (the host sets TC in the UDP answer, the resolver asks again over TCP).
// "*" allows every destination without naming the DNS server: TCP to its
// port 53 needs an address rule that names it.
func TestDNSOverTCP(t *testing.T) {
	f, _ := newFilter(t, 0, "*")
	frame := out("192.168.127.2:40000", "192.168.127.1:53", 1, syn)
	if reply := mustDrop(t, f, frame, "DNS over TCP with *"); reply == nil {
		t.Error("DNS over TCP refused without a reset")
	}
	mustPass(t, f, out("192.168.127.2:40001", "192.168.127.1:80", 1, syn), "TCP to the DNS server's other ports with *")
	named, _ := newFilter(t, 0, "192.168.127.1:53/tcp")
	mustPass(t, named, frame, "DNS over TCP with a rule naming the server")
}

// TestInboundFromOtherEnclave: another enclave on the host's switch (a
// compromised one: docs/host-ops.md's "Isolation between enclaves") that
// connects straight into this one, not through the gateway, must not open
// a flow this enclave's programs can send their data back on, unless the
// policy allows that address.
func TestInboundFromOtherEnclave(t *testing.T) {
	for _, rules := range [][]string{{"10.0.0.0/8:443"}, {"10.0.0.0/8:443", "192.168.127.3"}} {
		p, err := policy.Parse(rules)
		if err != nil {
			t.Fatal(err)
		}
		allowed := len(rules) == 2
		f := New(Config{Policy: p, Subnet: subnet, Gateway: gwIP, DNS: []netip.Addr{gwIP}})
		other := net.HardwareAddr{0x02, 0, 0, 0, 0, 0x66}
		peer := netip.MustParseAddr("192.168.127.3")
		f.Inbound(taptest.ARPReply(gwMAC, gwIP, encMAC, encIP))
		f.Inbound(taptest.ARPRequest(other, peer, encIP))

		f.Inbound(withSrcMAC(in("192.168.127.3:5555", "192.168.127.2:8080", syn), other))
		f.Inbound(withSrcMAC(taptest.UDPv4Frame(encMAC, other, ap("192.168.127.3:5556"), ap("192.168.127.2:7000"), []byte("x")), other))
		tcpReply := withDstMAC(out("192.168.127.2:8080", "192.168.127.3:5555", 1, synack), other)
		udpReply := withDstMAC(taptest.UDPv4Frame(gwMAC, encMAC, ap("192.168.127.2:7000"), ap("192.168.127.3:5556"), []byte("y")), other)
		if allowed {
			mustPass(t, f, tcpReply, "SYN-ACK to an enclave the policy allows")
			mustPass(t, f, udpReply, "reply to a datagram from an enclave the policy allows")
		} else {
			mustDrop(t, f, tcpReply, "SYN-ACK to a SYN straight from another enclave")
			mustDrop(t, f, udpReply, "reply to a datagram straight from another enclave")
		}
		// The same connection through the gateway (a published port):
		// its replies pass.
		f.Inbound(in("203.0.113.9:5555", "192.168.127.2:8080", syn))
		mustPass(t, f, out("192.168.127.2:8080", "203.0.113.9:5555", 1, synack), "SYN-ACK to a SYN through the gateway")
	}
}

// TestSourceMAC: with Config.MAC, the enclave's frames must come from its
// link address. A raw socket's frames from other link addresses would carry
// data in them (the host's switch floods ARP requests, sender address
// included, to every enclave) and claim other enclaves' addresses at the
// switch, which binds a MAC to the first stream that uses it.
func TestSourceMAC(t *testing.T) {
	p, err := policy.Parse([]string{"*"})
	if err != nil {
		t.Fatal(err)
	}
	f := New(Config{Policy: p, Subnet: subnet, MAC: encMAC, DNS: []netip.Addr{gwIP}})
	other := net.HardwareAddr{0x02, 0, 0, 0, 0, 0x66}
	mustPass(t, f, taptest.ARPRequest(encMAC, encIP, gwIP), "ARP request from the enclave's MAC")
	mustDrop(t, f, taptest.ARPRequest(other, encIP, gwIP), "ARP request from another MAC")
	mustPass(t, f, out("192.168.127.2:40000", "10.1.2.3:443", 1, syn), "SYN from the enclave's MAC")
	mustDrop(t, f, withSrcMAC(out("192.168.127.2:40001", "10.1.2.3:443", 1, syn), other), "SYN from another MAC")
}

// TestGatewayLearnedFromIPv4: the host's stack may know the enclave's MAC
// without asking (a neighbour entry from before the enclave restarted),
// and published ports connect in from the gateway's address: the
// gateway's link address is learned from its IPv4 too (the host's switch
// lets no enclave send from the gateway's address), so such a connection
// is not dropped until the gateway happens to send ARP.
func TestGatewayLearnedFromIPv4(t *testing.T) {
	p, err := policy.Parse([]string{"10.0.0.0/8:443"})
	if err != nil {
		t.Fatal(err)
	}
	f := New(Config{Policy: p, Subnet: subnet, Gateway: gwIP, MAC: encMAC, DNS: []netip.Addr{gwIP}})
	if !f.Inbound(in("192.168.127.1:5555", "192.168.127.2:8080", syn)) {
		t.Fatal("a published port's SYN from the gateway was dropped")
	}
	mustPass(t, f, out("192.168.127.2:8080", "192.168.127.1:5555", 1, synack), "SYN-ACK to the gateway")
	mustPass(t, f, out("192.168.127.2:40000", "10.1.2.3:443", 1, syn), "SYN through the gateway")
}

// The two directions of a tap.Pump call the filter from two goroutines,
// and the enclave calls Permit and Stats from others: run them together
// (for the race detector).
func TestConcurrentUse(t *testing.T) {
	p, err := policy.Parse([]string{"10.0.0.0/8:443", "api.example.com:443"})
	if err != nil {
		t.Fatal(err)
	}
	f := New(Config{Policy: p, Subnet: subnet, Gateway: gwIP, MAC: encMAC, DNS: []netip.Addr{gwIP}, MaxFlows: 64})
	outFrames := [][]byte{
		out("192.168.127.2:40000", "10.1.2.3:443", 7, syn),
		out("192.168.127.2:40001", "11.1.2.3:443", 7, syn),
		out("192.168.127.2:40000", "10.1.2.3:443", 8, ack, 'x'),
		query(t, 1, "api.example.com."),
		query(t, 2, "leak.example."),
		taptest.ARPRequest(encMAC, encIP, gwIP),
	}
	inFrames := [][]byte{
		taptest.ARPReply(gwMAC, gwIP, encMAC, encIP),
		in("10.1.2.3:443", "192.168.127.2:40000", synack),
		in("203.0.113.9:5555", "192.168.127.2:8080", syn),
		answer(t, "api.example.com.", "203.0.113.10"),
	}
	var wg sync.WaitGroup
	run := func(fn func(i int)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 2000 {
				fn(i)
			}
		}()
	}
	run(func(i int) { f.Outbound(outFrames[i%len(outFrames)]) })
	run(func(i int) { f.Inbound(inFrames[i%len(inFrames)]) })
	run(func(i int) {
		f.PermitFrom("tcp", uint16(40000+i%64), ap("203.0.113.5:444"))
		f.PermitName("leader.example.")
		_ = f.Stats()
	})
	wg.Wait()
	if s := f.Stats(); s.Flows > 64 {
		t.Errorf("%d flows, MaxFlows 64", s.Flows)
	}
}

// Only names a hostname rule other than "*" matches are remembered: under
// "*" the host could otherwise fill the table with names whose addresses
// change nothing.
func TestLearnsOnlyNamedHosts(t *testing.T) {
	f, _ := newFilter(t, 0, "*:443", "db.example.com:5432")
	f.Inbound(answer(t, "other.example.", "203.0.113.20"))
	if names := f.learned.Names(netip.MustParseAddr("203.0.113.20")); len(names) != 0 {
		t.Errorf("learned %v for a name only * matches", names)
	}
	f.Inbound(answer(t, "db.example.com.", "203.0.113.21"))
	mustPass(t, f, out("192.168.127.2:40000", "203.0.113.21:5432", 1, syn), "SYN to the database's learned address")
	mustDrop(t, f, out("192.168.127.2:40001", "203.0.113.20:5432", 1, syn), "SYN to another name's address on the database port")
	mustPass(t, f, out("192.168.127.2:40002", "203.0.113.20:443", 1, syn), "SYN to any address on 443")
}
