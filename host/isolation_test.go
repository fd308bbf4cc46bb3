package host_test

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/quenchnet/quench/host"
	"github.com/quenchnet/quench/tap"
	"github.com/quenchnet/quench/tap/taptest"
)

// Tests of the isolation between enclaves (layer 2): what one enclave
// stream can do to another, or to the host, through the switch. Each was
// first a failing test of a security review.

// waitTCPSYN reads frames from c until a TCP SYN to dport arrives (true) or
// wait passes (false).
func waitTCPSYN(t *testing.T, c *tap.Conn, dport uint16, wait time.Duration) bool {
	t.Helper()
	return l4WaitTCPFlags(c, dport, taptest.TCPFlagSYN, wait)
}

// waitUntil polls cond until it holds (true) or d passes (false).
func waitUntil(d time.Duration, cond func() bool) bool {
	for deadline := time.Now().Add(d); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			return false
		}
	}
	return true
}

// icmpEcho builds an ICMP echo request frame from mac/src to dst (the
// gateway's MAC).
func icmpEcho(mac net.HardwareAddr, src, dst netip.Addr, seq uint16) []byte {
	const ipLen, icmpLen = header.IPv4MinimumSize, header.ICMPv4MinimumSize + 8
	f := make([]byte, header.EthernetMinimumSize+ipLen+icmpLen)
	header.Ethernet(f).Encode(&header.EthernetFields{SrcAddr: tcpip.LinkAddress(mac), DstAddr: tcpip.LinkAddress(host.DefaultGatewayMAC), Type: header.IPv4ProtocolNumber})
	ip := header.IPv4(f[header.EthernetMinimumSize:])
	ip.Encode(&header.IPv4Fields{TotalLength: ipLen + icmpLen, TTL: 64, Protocol: uint8(header.ICMPv4ProtocolNumber), SrcAddr: tcpip.AddrFrom4(src.As4()), DstAddr: tcpip.AddrFrom4(dst.As4())})
	ip.SetChecksum(^ip.CalculateChecksum())
	ic := header.ICMPv4(ip[ipLen:])
	ic.SetType(header.ICMPv4Echo)
	ic.SetIdent(1)
	ic.SetSequence(seq)
	ic.SetChecksum(^checksum.Checksum(ic, 0))
	return f
}

// TestIsolationNonReadingEnclaveDoesNotStallOthers: frames the switch
// floods or broadcasts used to be written synchronously, with no deadline,
// into every other enclave's stream. An enclave that stops reading its
// stream (here it also makes the gateway broadcast ARP requests, by pinging
// from many addresses, to fill its own socket quickly) blocked those
// writes forever: the next broadcast from another enclave (its ordinary ARP
// request for the gateway) blocked that enclave's receive loop. Now every
// write to a stream goes through its bounded queue and its own writer.
// (The address limit is off, so that the attacker's pings all count.)
func TestIsolationNonReadingEnclaveDoesNotStallOthers(t *testing.T) {
	h, path := startHost(t, host.Config{MaxAddressesPerEnclave: -1})
	gw := netip.MustParseAddr("192.168.127.1")
	victimIP := netip.MustParseAddr("192.168.127.2")

	// The victim reads its stream all the time and reports ARP replies
	// from the gateway.
	victim := connectRaw(t, path)
	replies := make(chan struct{}, 100)
	go func() {
		for {
			f, err := victim.Next()
			if err != nil {
				return
			}
			if a, err := taptest.ParseARP(f); err == nil && a.Op == 2 && a.SrcIP == gw {
				replies <- struct{}{}
			}
		}
	}()
	askGateway := func() bool {
		if _, err := victim.WriteFrames([][]byte{arpRequest(enclaveMAC, victimIP, gw)}, 0); err != nil {
			t.Fatal(err)
		}
		select {
		case <-replies:
			return true
		case <-time.After(3 * time.Second):
			return false
		}
	}
	if !askGateway() {
		t.Fatal("no ARP reply before the attack")
	}

	// The attacker never reads. It pings the gateway from 240 spoofed
	// addresses of the subnet; the gateway broadcasts ARP requests (with
	// retries) for each, into the attacker's unread socket.
	attackerMAC := net.HardwareAddr{0x02, 0, 0, 0, 0, 0xbb}
	attacker := connectRaw(t, path)
	var frames [][]byte
	for i := 10; i < 250; i++ {
		src := netip.AddrFrom4([4]byte{192, 168, 127, byte(i)})
		frames = append(frames, icmpEcho(attackerMAC, src, gw, uint16(i)))
	}
	if _, err := attacker.WriteFrames(frames, 0); err != nil {
		t.Fatal(err)
	}
	time.Sleep(4 * time.Second) // ARP retries: the attacker's socket fills up

	// The victim's first ARP request is answered (the stack sees it before
	// the switch floods it), but flooding it to the attacker blocks the
	// victim's receive loop, so the second one is never read.
	first := askGateway()
	second := askGateway()
	t.Logf("frames dropped for full queues: %d", h.Stats().FramesDroppedQueueFull)
	if !first || !second {
		t.Errorf("a non-reading enclave stalled another enclave's stream: ARP replies from the gateway after the attack: first %v, second %v", first, second)
	}
}

// TestIsolationEnclaveCannotTakeAnotherEnclavesIP: with two enclave
// streams attached, the second one (another MAC) announces the first's
// address 192.168.127.2 with an ARP request. Nothing tied an IP address to
// a stream: the gateway believed it, and a published port's client
// connection went to the attacker's stream. Now the address belongs to the
// stream that used it first, and the attacker's frames from it are dropped.
func TestIsolationEnclaveCannotTakeAnotherEnclavesIP(t *testing.T) {
	h, path := startHost(t, host.Config{Publish: []host.Publish{{
		Network: "tcp", Host: netip.MustParseAddrPort("127.0.0.1:0"), EnclavePort: 80,
	}}})
	enclaveIP := netip.MustParseAddr("192.168.127.2")
	gw := netip.MustParseAddr("192.168.127.1")
	connectARP(t, path, enclaveMAC, enclaveIP) // the victim

	attackerMAC := net.HardwareAddr{0x02, 0, 0, 0, 0, 0xbb}
	attacker := connectRaw(t, path)
	if _, err := attacker.WriteFrames([][]byte{arpRequest(attackerMAC, enclaveIP, gw)}, 0); err != nil {
		t.Fatal(err)
	}
	waitUntil(time.Second, func() bool { return h.Stats().FramesDroppedSpoofed > 0 }) // and not answered

	// An internet client connects to the published port.
	go func() {
		c, err := net.DialTimeout("tcp", h.Published()[0].String(), 3*time.Second)
		if err == nil {
			time.Sleep(3 * time.Second)
			c.Close()
		}
	}()
	if waitTCPSYN(t, attacker, 80, 3*time.Second) {
		t.Errorf("a published-port connection for %s:80 was delivered to another enclave's stream (MAC %s) after one ARP request from it", enclaveIP, attackerMAC)
	}
}

// TestIsolationEnclaveCannotClaimGatewayIP: the switch filtered the
// gateway's own ARP replies (spoofedARP) but flooded an enclave's ARP for
// any address, the gateway's included, to every other enclave: one
// broadcast "192.168.127.1 is at <attacker>" reached the victim's stack.
// Now frames from the host's addresses are dropped.
func TestIsolationEnclaveCannotClaimGatewayIP(t *testing.T) {
	_, path := startHost(t, host.Config{})
	gw := netip.MustParseAddr("192.168.127.1")
	victim := connectARP(t, path, enclaveMAC, netip.MustParseAddr("192.168.127.2"))
	attackerMAC := net.HardwareAddr{0x02, 0, 0, 0, 0, 0xbb}
	attacker := connectRaw(t, path)
	garp := taptest.EthernetFrame(taptest.BroadcastMAC, attackerMAC, taptest.EtherTypeARP,
		taptest.ARPReply(attackerMAC, gw, taptest.BroadcastMAC, gw)[14:])
	if _, err := attacker.WriteFrames([][]byte{garp}, 0); err != nil {
		t.Fatal(err)
	}
	_ = victim.NetConn().SetReadDeadline(time.Now().Add(2 * time.Second))
	for {
		f, err := victim.Next()
		if err != nil {
			return // not delivered: what should happen
		}
		if a, err := taptest.ParseARP(f); err == nil && a.SrcIP == gw && a.SrcMAC.String() != host.DefaultGatewayMAC.String() {
			t.Fatalf("victim enclave received an ARP claiming the gateway %s is at %s, sent by another enclave", gw, a.SrcMAC)
		}
	}
}

// TestIsolationEnclaveCannotEvictAnother: a frame whose source MAC was
// another attached enclave's MAC made the host close that enclave's stream
// and send its traffic to the sender (switch.learn). Now only a fresh
// stream from the same peer (a reconnecting enclave) may take a MAC over;
// TestReconnectReplacesStream covers that.
func TestIsolationEnclaveCannotEvictAnother(t *testing.T) {
	h, path := startHost(t, host.Config{})
	enclaveIP := netip.MustParseAddr("192.168.127.2")
	victim := connectARP(t, path, enclaveMAC, enclaveIP)
	// Attacker's own MAC first (a separate, established enclave) ...
	own := net.HardwareAddr{0x02, 0, 0, 0, 0, 0xbb}
	attacker := connectARP(t, path, own, netip.MustParseAddr("192.168.127.3"))
	waitFor(t, func() bool { return h.Stats().Enclaves == 2 })
	// ... then one frame with the victim's MAC as source.
	spoof := taptest.EthernetFrame(taptest.BroadcastMAC, enclaveMAC, 0x88b5, make([]byte, 46))
	if _, err := attacker.WriteFrames([][]byte{spoof}, 0); err != nil {
		t.Fatal(err)
	}
	waitUntil(time.Second, func() bool { return h.Stats().FramesDroppedSpoofed > 0 })
	_ = victim.NetConn().SetReadDeadline(time.Now().Add(2 * time.Second))
	for {
		_, err := victim.Next()
		if err == nil {
			continue
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return // still attached: what should happen
		}
		t.Fatalf("victim enclave's stream was closed by the host after another stream sent one frame with its MAC: %v (enclaves attached: %d)", err, h.Stats().Enclaves)
	}
}

// TestIsolationEnclaveStreamsBounded: whoever can connect to the enclave
// listener (any enclave CID on VSOCK port 1024) could attach any number of
// streams, each with a 256 KiB read and a 32 KiB write buffer, kept while
// connected: 500 streams from one peer cost ~170 MiB. Now at most
// MaxEnclaveStreams are attached or handshaking; the rest are refused.
func TestIsolationEnclaveStreamsBounded(t *testing.T) {
	const streams = 500
	h, path := startHost(t, host.Config{})
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	for range streams {
		// A bare socket on this side: only the host's buffers count.
		nc, err := net.Dial("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { nc.Close() })
		// A refused stream may be closed before this write: no error check.
		_, _ = nc.Write([]byte("POST /connect HTTP/1.1\r\nHost: \r\n\r\n"))
	}
	waitFor(t, func() bool {
		st := h.Stats()
		return uint64(st.Enclaves)+st.EnclaveStreamsRefused == streams
	})
	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	grew := (int64(after.HeapInuse) - int64(before.HeapInuse)) >> 20
	st := h.Stats()
	t.Logf("%d idle streams attached, %d refused; heap in use +%d MiB", st.Enclaves, st.EnclaveStreamsRefused, grew)
	if st.Enclaves > host.DefaultMaxEnclaveStreams || grew > 64 {
		t.Errorf("one peer attached %d idle enclave streams costing +%d MiB; want at most %d", st.Enclaves, grew, host.DefaultMaxEnclaveStreams)
	}
}

// TestIsolationDHCPNeedsOwnMAC: a DISCOVER alone (no REQUEST) assigned an
// address to the client hardware address it named, for as long as the Host
// ran: one stream naming made-up client MACs took the whole /24 pool in
// about 250 messages. Now a DHCP request must name its frame's source MAC
// (and a stream may use only MaxMACsPerEnclave MACs).
func TestIsolationDHCPNeedsOwnMAC(t *testing.T) {
	_, path := startHost(t, host.Config{})
	attacker := connectRaw(t, path)
	attackerMAC := net.HardwareAddr{0x02, 0, 0, 0, 0, 0xbb}
	taken := 0
	for i := range 300 {
		fake := net.HardwareAddr{0x02, 0xfa, 0xce, 0, byte(i >> 8), byte(i)}
		m := discover(t, fake)
		f := taptest.UDPv4Frame(taptest.BroadcastMAC, attackerMAC, dhcpClient, dhcpServer, m.ToBytes())
		if dhcpSend(t, attacker, f, netip.Addr{}, attackerMAC, m.TransactionID, time.Second) == nil {
			break
		}
		taken++
	}
	newcomer := connectRaw(t, path)
	offer := dhcpExchange(t, newcomer, newcomerMAC, discover(t, newcomerMAC), 2*time.Second)
	t.Logf("one stream took %d leases with DISCOVERs only", taken)
	if offer == nil {
		t.Errorf("after %d DISCOVERs from one stream (made-up client MACs, never REQUESTed), a new enclave gets no DHCP lease", taken)
	}
}

// TestIsolationDHCPOffersExpire: an address offered to a DISCOVER that no
// REQUEST confirms returns to the pool after DHCPOfferTimeout. One stream
// (with the MAC limit off) exhausts the pool with DISCOVERs from made-up
// MACs; once the offers expire, a newcomer gets a lease.
func TestIsolationDHCPOffersExpire(t *testing.T) {
	const timeout = 3 * time.Second
	_, path := startHost(t, host.Config{MaxMACsPerEnclave: -1, DHCPOfferTimeout: timeout})
	attacker := connectRaw(t, path)
	taken, newcomer := exhaustDHCPPool(t, path, timeout/2, func(mac net.HardwareAddr) bool {
		return dhcpExchange(t, attacker, mac, discover(t, mac), 300*time.Millisecond) != nil
	})
	time.Sleep(timeout)
	offer := dhcpExchange(t, newcomer, newcomerMAC, discover(t, newcomerMAC), 2*time.Second)
	if offer == nil {
		t.Fatalf("%d offers never REQUESTed still hold the pool after the offer timeout", taken)
	}
}

// TestIsolationReconnectKeepsAddress: an enclave's new stream (same peer,
// same MAC) takes over the old stream's address at once, so published
// ports reach the new stream.
func TestIsolationReconnectKeepsAddress(t *testing.T) {
	h, path := startHost(t, host.Config{Publish: []host.Publish{{
		Network: "tcp", Host: netip.MustParseAddrPort("127.0.0.1:0"), EnclavePort: 80,
	}}})
	req := arpRequest(enclaveMAC, netip.MustParseAddr("192.168.127.2"), netip.MustParseAddr("192.168.127.1"))
	old := connectRaw(t, path)
	if _, err := old.WriteFrames([][]byte{req}, 0); err != nil {
		t.Fatal(err)
	}
	readARPReply(t, old)
	cur := connectRaw(t, path)
	if _, err := cur.WriteFrames([][]byte{req}, 0); err != nil {
		t.Fatal(err)
	}
	readARPReply(t, cur)
	go func() {
		c, err := net.DialTimeout("tcp", h.Published()[0].String(), 3*time.Second)
		if err == nil {
			time.Sleep(3 * time.Second)
			c.Close()
		}
	}()
	if !waitTCPSYN(t, cur, 80, 3*time.Second) {
		t.Errorf("a published-port connection did not reach the reconnected enclave's stream")
	}
}

// TestIsolationOnlyIPv4AndARPBetweenEnclaves: the switch checked the
// addresses of IPv4 and ARP frames only and forwarded every other
// ethertype between enclaves as it came. A VLAN-tagged frame carrying IPv4
// from the gateway's address, or IPv6 to another enclave's MAC or to all
// of them, reached the other enclave's kernel without any check. The
// virtual network is IPv4 only: such frames are dropped now.
func TestIsolationOnlyIPv4AndARPBetweenEnclaves(t *testing.T) {
	h, path := startHost(t, host.Config{})
	victimIP, attackerIP := netip.MustParseAddr("192.168.127.2"), netip.MustParseAddr("192.168.127.3")
	victim := connectARP(t, path, enclaveMAC, victimIP)
	attackerMAC := net.HardwareAddr{0x02, 0, 0, 0, 0, 0xcc}
	attacker := connectARP(t, path, attackerMAC, attackerIP)

	to := func(dst net.HardwareAddr, typ uint16, payload []byte) []byte {
		f := make([]byte, header.EthernetMinimumSize, header.EthernetMinimumSize+len(payload))
		copy(f[0:6], dst)
		copy(f[6:12], attackerMAC)
		f[12], f[13] = byte(typ>>8), byte(typ)
		return append(f, payload...)
	}
	// IPv4 from the gateway's address, behind an 802.1Q tag.
	spoofed := icmpEcho(attackerMAC, netip.MustParseAddr("192.168.127.1"), victimIP, 1)[header.EthernetMinimumSize:]
	tagged := append([]byte{0x00, 0x01, 0x08, 0x00}, spoofed...) // VLAN 1, then the IPv4 ethertype
	ipv6 := make([]byte, header.IPv6MinimumSize+8)
	ipv6[0] = 0x60
	ipv6[5] = 8   // payload length
	ipv6[6] = 17  // UDP
	ipv6[7] = 255 // hop limit
	allNodes := net.HardwareAddr{0x33, 0x33, 0, 0, 0, 1}
	// The marker: an ordinary IPv4 frame from the attacker's own address,
	// queued for the victim after the others.
	marker := icmpEcho(attackerMAC, attackerIP, victimIP, 99)
	copy(marker[0:6], enclaveMAC)
	frames := [][]byte{
		to(enclaveMAC, 0x8100, tagged),
		to(enclaveMAC, uint16(header.IPv6ProtocolNumber), ipv6),
		to(allNodes, uint16(header.IPv6ProtocolNumber), ipv6),
		to(net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, 0x88b5, []byte("local experimental ethertype")),
		marker,
	}
	if _, err := attacker.WriteFrames(frames, 0); err != nil {
		t.Fatal(err)
	}
	_ = victim.NetConn().SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		f, err := victim.Next()
		if err != nil {
			t.Fatalf("the marker frame never arrived: %v", err)
		}
		typ := header.Ethernet(f).Type()
		if typ == header.IPv4ProtocolNumber && len(f) == len(marker) && f[len(f)-9] == 99 {
			break // the marker: everything sent before it was dropped
		}
		if typ != header.IPv4ProtocolNumber && typ != header.ARPProtocolNumber {
			t.Errorf("another enclave's frame of ethertype %#04x reached the victim", uint16(typ))
		}
	}
	if got := h.Stats().FramesDroppedNotIPv4; got != 4 {
		t.Errorf("FramesDroppedNotIPv4 = %d, want 4", got)
	}
}

// dhcpLease runs DISCOVER and REQUEST for mac on c and returns the ACK, or
// nil when no offer or ack came within wait.
func dhcpLease(t *testing.T, c *tap.Conn, mac net.HardwareAddr, wait time.Duration) *dhcpv4.DHCPv4 {
	t.Helper()
	offer := dhcpExchange(t, c, mac, discover(t, mac), wait)
	if offer == nil {
		return nil
	}
	req, err := dhcpv4.NewRequestFromOffer(offer)
	if err != nil {
		t.Fatal(err)
	}
	return dhcpExchange(t, c, mac, req, wait)
}

// TestIsolationDHCPLeasesExpire: leases a REQUEST confirmed lasted as long
// as the Host ran: one stream (with the MAC limit off, or several streams of
// one peer over time) could hold the whole pool for good. Now a lease not
// renewed returns to the pool when it expires (the lease time the service
// gives and a grace period), while a client that renews keeps its address.
func TestIsolationDHCPLeasesExpire(t *testing.T) {
	const expiry = 6 * time.Second
	defer host.SetDHCPLeaseExpiry(expiry)()
	_, path := startHost(t, host.Config{MaxMACsPerEnclave: -1})
	keeperMAC := net.HardwareAddr{0x02, 0, 0, 0, 0, 0x11}
	keeper := connectRaw(t, path)
	first := dhcpLease(t, keeper, keeperMAC, 2*time.Second)
	if first == nil {
		t.Fatal("no lease for the first client")
	}
	attacker := connectRaw(t, path)
	taken, newcomer := exhaustDHCPPool(t, path, expiry/2, func(mac net.HardwareAddr) bool {
		return dhcpLease(t, attacker, mac, 300*time.Millisecond) != nil
	})
	// The first client renews halfway through its lease, as clients do,
	// until the others' leases have expired.
	for range 2 {
		time.Sleep(expiry/2 + 100*time.Millisecond)
		renew, err := dhcpv4.NewRequestFromOffer(first)
		if err != nil {
			t.Fatal(err)
		}
		ack := dhcpExchange(t, keeper, keeperMAC, renew, 2*time.Second)
		if ack == nil || !ack.YourIPAddr.Equal(first.YourIPAddr) {
			t.Fatalf("a client renewing its lease lost it: %v", ack)
		}
	}
	if dhcpLease(t, newcomer, newcomerMAC, 2*time.Second) == nil {
		t.Fatalf("%d leases never renewed still hold the pool after they expired", taken)
	}
}

// newcomerMAC is the client that finds the DHCP pool exhausted.
var newcomerMAC = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x42}

// exhaustDHCPPool calls take with made-up client MACs until it fails (the
// pool is exhausted), within within or the test is skipped, and checks that
// a newcomer (newcomerMAC, on a stream of its own to the host at path) is
// offered nothing. It returns how many take succeeded and the newcomer's
// stream.
func exhaustDHCPPool(t *testing.T, path string, within time.Duration, take func(net.HardwareAddr) bool) (int, *tap.Conn) {
	t.Helper()
	start := time.Now()
	taken := 0
	for i := range 300 {
		if !take(net.HardwareAddr{0x02, 0xfa, 0xce, 0, byte(i >> 8), byte(i)}) {
			break
		}
		taken++
	}
	if time.Since(start) > within {
		t.Skipf("too slow to exhaust the pool within %v (%v)", within, time.Since(start))
	}
	newcomer := connectRaw(t, path)
	if offer := dhcpExchange(t, newcomer, newcomerMAC, discover(t, newcomerMAC), 200*time.Millisecond); offer != nil {
		t.Fatalf("pool not exhausted after %d clients: %s offered", taken, offer.YourIPAddr)
	}
	return taken, newcomer
}
