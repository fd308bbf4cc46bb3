package enclave

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"testing"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/quenchnet/quench/internal/egressfw"
	"github.com/quenchnet/quench/internal/testutil"
	"github.com/quenchnet/quench/policy"
	"github.com/quenchnet/quench/tap/taptest"
)

// dialNet is a network whose dial asks the egress filter about the SYN
// the kernel would send, and whose resolver asks a local DNS server.
type dialNet struct {
	network
	res    *net.Resolver
	f      *egressfw.Filter
	passed map[string]bool
	port   uint16 // the last source port used
}

var (
	testEnclMAC = net.HardwareAddr{0x5a, 0x94, 0xef, 0xe4, 0x0c, 0xee}
	testGwMAC   = net.HardwareAddr{0x5a, 0x94, 0xef, 0xe4, 0x0c, 0xdd}
)

func (n *dialNet) resolver() *net.Resolver { return n.res }

func (n *dialNet) dial(_ context.Context, _, addr string) (net.Conn, error) {
	n.port++
	syn := taptest.TCPv4Frame(testGwMAC, testEnclMAC, taptest.TCPSegment{
		Src: netip.AddrPortFrom(netip.MustParseAddr("192.168.127.2"), 40000+n.port), Dst: netip.MustParseAddrPort(addr), Flags: taptest.TCPFlagSYN,
	})
	pass, _ := n.f.Outbound(syn)
	n.passed[addr] = pass
	return nil, errors.New("not connected: a test")
}

// The enclave's own connections (ACME, key sync) are not limited by
// Config.Egress: in TAP mode, ownDial has the frame filter let the name's
// DNS question through, and the socket it connects with, bound to its port
// first, so that another program's connection to the same place in that
// moment is not let through with it. The leader here is on the loopback (no
// traffic leaves the machine); the filter is asked about the SYNs the
// kernel would send through the TAP device.
func TestOwnDialPermits(t *testing.T) {
	p, err := policy.Parse([]string{"10.0.0.0/8:443"})
	if err != nil {
		t.Fatal(err)
	}
	gw := netip.MustParseAddr("192.168.127.1")
	f := egressfw.New(egressfw.Config{Policy: p, Subnet: netip.MustParsePrefix("192.168.127.2/24"), DNS: []netip.Addr{gw}})
	dpc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer dpc.Close()
	go testutil.ServeDNS(dpc, map[string]netip.Addr{"leader.example.": netip.MustParseAddr("127.0.0.1")})
	res := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "udp", dpc.LocalAddr().String())
	}}
	leader, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer leader.Close()
	from := make(chan netip.AddrPort, 1)
	go func() {
		c, err := leader.Accept()
		if err != nil {
			return
		}
		from <- c.RemoteAddr().(*net.TCPAddr).AddrPort()
		c.Close()
	}()
	lport := leader.Addr().(*net.TCPAddr).Port
	nw := &dialNet{res: res, f: f, passed: map[string]bool{}}
	e := &Enclave{egress: f}

	query := func(name string) []byte {
		b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: 7})
		_ = b.StartQuestions()
		_ = b.Question(dnsmessage.Question{Name: dnsmessage.MustNewName(name), Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET})
		msg, _ := b.Finish()
		return taptest.UDPv4Frame(testGwMAC, testEnclMAC, netip.MustParseAddrPort("192.168.127.2:5555"), netip.AddrPortFrom(gw, 53), msg)
	}
	syn := func(sport uint16) []byte {
		return taptest.TCPv4Frame(testGwMAC, testEnclMAC, taptest.TCPSegment{
			Src: netip.AddrPortFrom(netip.MustParseAddr("192.168.127.2"), sport), Dst: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(lport)), Flags: taptest.TCPFlagSYN,
		})
	}
	if pass, _ := f.Outbound(query("leader.example.")); pass {
		t.Fatal("the policy lets the leader's name through by itself: the test proves nothing")
	}
	c, err := e.ownDial(nw)(context.Background(), "tcp", fmt.Sprintf("leader.example:%d", lport))
	if err != nil {
		t.Fatalf("ownDial: %v", err)
	}
	c.Close()
	src := <-from
	if pass, _ := f.Outbound(query("leader.example.")); !pass {
		t.Error("the DNS question about the leader's name was refused right after ownDial")
	}
	if pass, _ := f.Outbound(syn(src.Port() + 1)); pass {
		t.Error("another socket's SYN to the leader passed on ownDial's permission")
	}
	if pass, _ := f.Outbound(syn(src.Port())); !pass {
		t.Errorf("ownDial's own socket (port %d) has no permission", src.Port())
	}
	// With no filter (userspace mode, or no policy), ownDial is the
	// network's dial.
	nw.passed = map[string]bool{}
	_, _ = (&Enclave{}).ownDial(nw)(context.Background(), "tcp", "10.1.1.1:443")
	if !nw.passed["10.1.1.1:443"] {
		t.Error("without a filter, ownDial did not dial the address as given")
	}
}
