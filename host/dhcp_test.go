package host_test

import (
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/insomniacslk/dhcp/dhcpv4"

	"github.com/quenchnet/quench/host"
	"github.com/quenchnet/quench/tap"
	"github.com/quenchnet/quench/tap/taptest"
)

var (
	dhcpClient = netip.AddrPortFrom(netip.IPv4Unspecified(), 68)
	dhcpServer = netip.AddrPortFrom(netip.AddrFrom4([4]byte{255, 255, 255, 255}), 67)
)

// dhcpReply is what a test checks of a DHCP reply.
type dhcpReply struct {
	Type     string
	YourIP   string
	ServerID string
	Mask     string
	Router   []string
	DNS      []string
	MTU      int
	Lease    time.Duration
}

func summarize(m *dhcpv4.DHCPv4) dhcpReply {
	r := dhcpReply{
		Type:   m.MessageType().String(),
		YourIP: m.YourIPAddr.String(),
		Lease:  m.IPAddressLeaseTime(0),
	}
	if id := m.ServerIdentifier(); id != nil {
		r.ServerID = id.String()
	}
	if mask := m.SubnetMask(); mask != nil {
		r.Mask = net.IP(mask).String()
	}
	for _, ip := range m.Router() {
		r.Router = append(r.Router, ip.String())
	}
	for _, ip := range m.DNS() {
		r.DNS = append(r.DNS, ip.String())
	}
	if b := m.GetOneOption(dhcpv4.OptionInterfaceMTU); len(b) == 2 {
		r.MTU = int(binary.BigEndian.Uint16(b))
	}
	return r
}

// dhcpExchange sends m from mac (as a client without an address, to the
// broadcast address) and returns the reply with m's transaction ID, or nil
// if none came within wait.
func dhcpExchange(t *testing.T, c *tap.Conn, mac net.HardwareAddr, m *dhcpv4.DHCPv4, wait time.Duration) *dhcpv4.DHCPv4 {
	t.Helper()
	f := taptest.UDPv4Frame(taptest.BroadcastMAC, mac, dhcpClient, dhcpServer, m.ToBytes())
	return dhcpSend(t, c, f, netip.Addr{}, mac, m.TransactionID, wait)
}

// dhcpSend writes frame to c and reads frames until a DHCP reply with xid
// arrives (returned) or wait passes (nil). ARP requests for ownIP are
// answered with mac, as a client's kernel would.
func dhcpSend(t *testing.T, c *tap.Conn, frame []byte, ownIP netip.Addr, mac net.HardwareAddr, xid dhcpv4.TransactionID, wait time.Duration) *dhcpv4.DHCPv4 {
	t.Helper()
	if _, err := c.WriteFrames([][]byte{frame}, 0); err != nil {
		t.Fatal(err)
	}
	_ = c.NetConn().SetReadDeadline(time.Now().Add(wait))
	defer func() { _ = c.NetConn().SetReadDeadline(time.Time{}) }()
	for {
		f, err := c.Next()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return nil
		}
		if err != nil {
			t.Fatalf("waiting for DHCP reply: %v", err)
		}
		if a, err := taptest.ParseARP(f); err == nil {
			if a.Op == 1 /* request */ && ownIP.IsValid() && a.DstIP == ownIP {
				reply := taptest.ARPReply(mac, ownIP, a.SrcMAC, a.SrcIP)
				if _, err := c.WriteFrames([][]byte{reply}, 0); err != nil {
					t.Fatal(err)
				}
			}
			continue
		}
		u, err := taptest.ParseUDPv4(f)
		if err != nil || u.Dst.Port() != 68 || u.Src.Port() != 67 {
			continue
		}
		m, err := dhcpv4.FromBytes(u.Payload)
		if err != nil {
			t.Fatalf("bad DHCP reply from %s: %v", u.Src, err)
		}
		if m.TransactionID == xid {
			return m
		}
	}
}

func discover(t *testing.T, mac net.HardwareAddr) *dhcpv4.DHCPv4 {
	t.Helper()
	m, err := dhcpv4.NewDiscovery(mac)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestDHCP runs DISCOVER, OFFER, REQUEST, ACK and a unicast renewal for
// the enclave's default MAC, as udhcpc in a stock gvforwarder does.
func TestDHCP(t *testing.T) {
	_, path := startHost(t, host.Config{})
	c := connectRaw(t, path)
	mac := host.DefaultEnclaveMAC
	want := dhcpReply{
		Type:     "OFFER",
		YourIP:   "192.168.127.2",
		ServerID: "192.168.127.1",
		Mask:     "255.255.255.0",
		Router:   []string{"192.168.127.1"},
		DNS:      []string{"192.168.127.1"},
		MTU:      65520,
		Lease:    time.Hour,
	}

	offer := dhcpExchange(t, c, mac, discover(t, mac), 5*time.Second)
	if offer == nil {
		t.Fatal("no DHCP offer within 5s")
	}
	if diff := cmp.Diff(want, summarize(offer)); diff != "" {
		t.Errorf("offer (-want +got):\n%s", diff)
	}

	req, err := dhcpv4.NewRequestFromOffer(offer)
	if err != nil {
		t.Fatal(err)
	}
	ack := dhcpExchange(t, c, mac, req, 5*time.Second)
	if ack == nil {
		t.Fatal("no DHCP ack within 5s")
	}
	want.Type = "ACK"
	if diff := cmp.Diff(want, summarize(ack)); diff != "" {
		t.Errorf("ack (-want +got):\n%s", diff)
	}

	// Renewal: unicast from the leased address to the server; the reply
	// is unicast too, after the host resolves the client's MAC by ARP.
	renew, err := dhcpv4.NewRenewFromAck(ack)
	if err != nil {
		t.Fatal(err)
	}
	ip := netip.MustParseAddr("192.168.127.2")
	gw := netip.MustParseAddr("192.168.127.1")
	f := taptest.UDPv4Frame(host.DefaultGatewayMAC, mac, netip.AddrPortFrom(ip, 68), netip.AddrPortFrom(gw, 67), renew.ToBytes())
	ack = dhcpSend(t, c, f, ip, mac, renew.TransactionID, 5*time.Second)
	if ack == nil {
		t.Fatal("no DHCP ack to the renewal within 5s")
	}
	if diff := cmp.Diff(want, summarize(ack)); diff != "" {
		t.Errorf("renewal ack (-want +got):\n%s", diff)
	}
}

// TestDHCPPool checks which addresses clients get: the enclave's default
// MAC gets EnclaveIP whenever it asks, a client keeps its address, and no
// client ever gets the gateway, host-loopback or broadcast address; when
// the pool runs out, no answer. (Frames from the gateway's own MAC never
// reach the stack: the switch drops them.)
func TestDHCPPool(t *testing.T) {
	// In 10.9.0.0/29: gateway .1, enclave .2, host loopback .6,
	// broadcast .7; .3, .4 and .5 are left.
	cfg := host.Config{Subnet: netip.MustParsePrefix("10.9.0.0/29"), MTU: 1500}
	_, path := startHost(t, cfg)
	macs := []net.HardwareAddr{
		{0x02, 0, 0, 0, 0, 1},
		{0x02, 0, 0, 0, 0, 2},
		host.DefaultEnclaveMAC, // asks late, still gets .2
		{0x02, 0, 0, 0, 0, 1},  // again: same address
		{0x02, 0, 0, 0, 0, 3},
		{0x02, 0, 0, 0, 0, 4}, // pool exhausted
	}
	var got []string
	for _, mac := range macs {
		c := connectRaw(t, path)
		offer := dhcpExchange(t, c, mac, discover(t, mac), time.Second)
		if offer == nil {
			got = append(got, "none")
			continue
		}
		r := summarize(offer)
		if r.Mask != "255.255.255.248" || r.MTU != 1500 || r.ServerID != "10.9.0.1" {
			t.Errorf("offer to %s: %+v, want mask 255.255.255.248, MTU 1500, server 10.9.0.1", mac, r)
		}
		got = append(got, r.YourIP)
	}
	want := []string{"10.9.0.3", "10.9.0.4", "10.9.0.2", "10.9.0.3", "10.9.0.5", "none"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("offered addresses (-want +got):\n%s", diff)
	}
}

// TestDHCPIgnored checks that messages the service does not serve get no
// reply while the stream still gets one for a DISCOVER.
func TestDHCPIgnored(t *testing.T) {
	_, path := startHost(t, host.Config{})
	c := connectRaw(t, path)
	mac := host.DefaultEnclaveMAC
	inform, err := dhcpv4.NewInform(mac, net.IPv4(192, 168, 127, 2))
	if err != nil {
		t.Fatal(err)
	}
	notEthernet := discover(t, mac)
	notEthernet.HWType = 6 // IEEE 802
	for name, m := range map[string]*dhcpv4.DHCPv4{"INFORM": inform, "IEEE 802 client": notEthernet} {
		if r := dhcpExchange(t, c, mac, m, 300*time.Millisecond); r != nil {
			t.Errorf("%s: got reply %s, want none", name, r.MessageType())
		}
	}
	if dhcpExchange(t, c, mac, discover(t, mac), 5*time.Second) == nil {
		t.Fatal("no DHCP offer within 5s")
	}
}

// TestDHCPDisabled checks that DisableDHCP leaves DISCOVERs unanswered.
// TestDHCP shows that the same exchange is answered when it is on.
func TestDHCPDisabled(t *testing.T) {
	_, path := startHost(t, host.Config{DisableDHCP: true})
	c := connectRaw(t, path)
	mac := host.DefaultEnclaveMAC
	if r := dhcpExchange(t, c, mac, discover(t, mac), time.Second); r != nil {
		t.Fatalf("DHCP disabled, got %s", summarize(r).Type)
	}
	// The stream works: the gateway answers ARP.
	req := arpRequest(mac, netip.MustParseAddr("192.168.127.2"), netip.MustParseAddr("192.168.127.1"))
	if _, err := c.WriteFrames([][]byte{req}, 0); err != nil {
		t.Fatal(err)
	}
	readARPReply(t, c)
}
