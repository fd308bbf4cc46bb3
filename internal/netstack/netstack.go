package netstack

import (
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/link/loopback"
	"gvisor.dev/gvisor/pkg/tcpip/network/arp"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"

	"github.com/quenchnet/quench/internal/ethlink"
	"github.com/quenchnet/quench/tap"
)

const (
	// DefaultQueueLen is Config.QueueLen's default: the number of packets
	// the stack may queue for Device.Read. It is sized for several TCP
	// windows in flight at MTU 1500 (a full 8 MiB window is ~5700 such
	// packets, ~130 at MTU 65520); packets beyond it are dropped, as a
	// router would, and TCP recovers them with SACK.
	DefaultQueueLen = 4096

	// maxQueueBytes bounds the bytes of the packets queued for Device.Read
	// too: at MTU 65520, 4096 packets are 256 MiB, which a host that stops
	// reading the tunnel could make the enclave hold (with maximal pings,
	// each answered in a packet as large). 32 MiB is 4 full 8 MiB windows,
	// and about 10 ms of the fastest link.
	maxQueueBytes = 32 << 20

	// TCP keepalive of dialled and accepted connections: the standard
	// library's defaults (net.Dialer.KeepAlive, net.ListenConfig), so that
	// connections through a host that restarted are noticed.
	keepaliveIdle     = 15 * time.Second
	keepaliveInterval = 15 * time.Second

	nicLink     tcpip.NICID = 1
	nicLoopback tcpip.NICID = 2

	minMTU = 576
	maxMTU = tap.MaxFrameSize - tap.EthernetHeaderSize
)

// Config configures a Net. The zero value is usable: MTU 65520, gvproxy's
// addresses (192.168.127.2/24 via 192.168.127.1) and MAC.
type Config struct {
	// MTU is the link's IP MTU; it must match the host's. Default
	// tap.DefaultMTU (65520); must be in [576, 65521].
	MTU int

	// MAC is the link address. Default tap.DefaultMAC (5a:94:ef:e4:0c:ee).
	MAC net.HardwareAddr

	// Address is the stack's IPv4 address and subnet. Default
	// tap.DefaultAddress (192.168.127.2/24). IPv6 is not supported.
	Address netip.Prefix

	// Gateway is the next hop of the default route. Default: 192.168.127.1
	// if Address is defaulted too, else the first address of Address's
	// subnet. It must be inside the subnet.
	Gateway netip.Addr

	// DNS lists the name servers the Resolver asks (port 53, UDP then TCP).
	// Default: Gateway.
	DNS []netip.Addr

	// BatchSize is the largest number of frames Device.Read returns per
	// call. Default tap.IdealBatchSize (128).
	BatchSize int

	// QueueLen bounds the packets queued between the stack and Device.Read
	// (and so do 32 MiB); further packets are dropped and counted. Default
	// DefaultQueueLen.
	QueueLen int

	// Logger receives operational logs, never per packet (the first
	// outbound drop for a full queue). Default: discard.
	Logger *slog.Logger

	// noSoftwareGSO turns gVisor's software GSO off, for BenchmarkBulk.
	noSoftwareGSO bool
}

func (c Config) withDefaults() (Config, error) {
	if c.MTU == 0 {
		c.MTU = tap.DefaultMTU
	}
	if c.MTU < minMTU || c.MTU > maxMTU {
		return c, fmt.Errorf("netstack: MTU %d out of range [%d, %d]", c.MTU, minMTU, maxMTU)
	}
	if c.MAC == nil {
		c.MAC = tap.DefaultMAC
	}
	if len(c.MAC) != 6 {
		return c, fmt.Errorf("netstack: MAC %s is not a 6-byte Ethernet address", c.MAC)
	}
	if c.MAC[0]&1 != 0 {
		return c, fmt.Errorf("netstack: MAC %s is a multicast address", c.MAC)
	}
	c.MAC = append(net.HardwareAddr(nil), c.MAC...)
	addressDefaulted := !c.Address.IsValid()
	if addressDefaulted {
		c.Address = tap.DefaultAddress
	}
	if !c.Address.Addr().Is4() {
		return c, fmt.Errorf("netstack: address %s: only IPv4 is supported", c.Address)
	}
	if c.Address.Bits() > 30 {
		return c, fmt.Errorf("netstack: subnet %s too small for an address and a gateway", c.Address)
	}
	if !c.Gateway.IsValid() {
		if addressDefaulted {
			c.Gateway = tap.DefaultGateway
		} else {
			c.Gateway = c.Address.Masked().Addr().Next()
		}
	}
	if !c.Gateway.Is4() || !c.Address.Masked().Contains(c.Gateway) {
		return c, fmt.Errorf("netstack: gateway %s is outside %s", c.Gateway, c.Address.Masked())
	}
	if c.Gateway == c.Address.Addr() {
		return c, fmt.Errorf("netstack: gateway and address are both %s", c.Gateway)
	}
	if len(c.DNS) == 0 {
		c.DNS = []netip.Addr{c.Gateway}
	}
	c.DNS = append([]netip.Addr(nil), c.DNS...)
	for i, a := range c.DNS {
		a = a.Unmap()
		if !a.Is4() {
			return c, fmt.Errorf("netstack: DNS server %s: only IPv4 is supported", a)
		}
		c.DNS[i] = a
	}
	if c.BatchSize == 0 {
		c.BatchSize = tap.IdealBatchSize
	}
	if c.BatchSize < 1 || c.BatchSize > 4096 {
		return c, fmt.Errorf("netstack: BatchSize %d out of range [1, 4096]", c.BatchSize)
	}
	if c.QueueLen == 0 {
		c.QueueLen = DefaultQueueLen
	}
	if c.QueueLen < 1 || c.QueueLen > 1<<20 {
		return c, fmt.Errorf("netstack: QueueLen %d out of range [1, %d]", c.QueueLen, 1<<20)
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c, nil
}

// Net is a TCP/IP stack whose link is a tap.Device. Create it with New; the
// caller must call Close, which closes every listener and conn it handed
// out.
type Net struct {
	cfg   Config
	stack *stack.Stack
	ep    *linkEndpoint
	dev   *device
	res   *net.Resolver
	dns   []tcpip.FullAddress
	next  atomic.Uint32 // round robin over dns

	mu     sync.Mutex
	closed bool                   // guarded by mu
	open   map[io.Closer]struct{} // guarded by mu; listeners and conns handed out

	closeOnce sync.Once
}

// Stats is a snapshot of a Net's link counters.
type Stats struct {
	FramesIn  uint64 // frames written to the Device and delivered to the stack
	BytesIn   uint64 // bytes of those frames
	FramesOut uint64 // frames returned by Device.Read
	BytesOut  uint64 // bytes of those frames

	// DroppedIn counts frames written to the Device that the link refused:
	// runts, other destination MACs, unknown EtherTypes, our own source MAC,
	// IPv4 sources in 0.0.0.0/8, "fragmentation needed" below 576 bytes.
	DroppedIn uint64
	// DroppedOut counts packets the stack sent that were dropped: the queue
	// was full, or a packet did not fit Device.Read's buffer.
	DroppedOut uint64

	// ZeroWindowACKsFixed counts pure ACKs rewritten so that gVisor reads
	// them (ethlink.ZeroWindowACKs: a gVisor TCP bug that can otherwise
	// deadlock a connection under full-duplex load).
	ZeroWindowACKsFixed uint64
}

// New builds the stack. It starts gVisor's protocol workers; the caller
// must call Close.
func New(cfg Config) (*Net, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	s := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, arp.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol, icmp.NewProtocol4},
		// Packets to the stack's own address loop inside it, so the app
		// can dial its own listeners at Address as well as at 127.0.0.1.
		HandleLocal: true,
	})
	n := &Net{
		cfg:   cfg,
		stack: s,
		open:  map[io.Closer]struct{}{},
	}
	n.ep, n.dev = newLink(cfg)
	n.ep.rst.s = s
	if err := n.setup(); err != nil {
		n.dev.Close()
		s.Close()
		s.Wait()
		return nil, err
	}
	for _, a := range cfg.DNS {
		n.dns = append(n.dns, tcpip.FullAddress{Addr: tcpip.AddrFrom4(a.As4()), Port: 53})
	}
	n.res = &net.Resolver{PreferGo: true, Dial: n.dialDNS}
	return n, nil
}

func (n *Net) setup() error {
	s, c := n.stack, n.cfg
	if err := ethlink.TuneTCP(s); err != nil {
		return fmt.Errorf("netstack: %w", err)
	}
	if terr := s.CreateNICWithOptions(nicLink, n.ep, stack.NICOptions{Name: "eth0", QDisc: qdisc{n.ep}}); terr != nil {
		return fmt.Errorf("netstack: create NIC: %v", terr)
	}
	if terr := s.CreateNICWithOptions(nicLoopback, loopback.New(), stack.NICOptions{Name: "lo"}); terr != nil {
		return fmt.Errorf("netstack: create loopback NIC: %v", terr)
	}
	if terr := s.AddProtocolAddress(nicLink, tcpip.ProtocolAddress{
		Protocol:          ipv4.ProtocolNumber,
		AddressWithPrefix: tcpip.AddressWithPrefix{Address: tcpAddr(c.Address.Addr()), PrefixLen: c.Address.Bits()},
	}, stack.AddressProperties{}); terr != nil {
		return fmt.Errorf("netstack: add address %s: %v", c.Address, terr)
	}
	if terr := s.AddProtocolAddress(nicLoopback, tcpip.ProtocolAddress{
		Protocol:          ipv4.ProtocolNumber,
		AddressWithPrefix: tcpip.AddressWithPrefix{Address: tcpip.AddrFrom4([4]byte{127, 0, 0, 1}), PrefixLen: 8},
	}, stack.AddressProperties{}); terr != nil {
		return fmt.Errorf("netstack: add loopback address: %v", terr)
	}
	loop, err := subnet(netip.MustParsePrefix("127.0.0.0/8"))
	if err != nil {
		return err
	}
	local, err := subnet(c.Address.Masked())
	if err != nil {
		return err
	}
	all, err := subnet(netip.MustParsePrefix("0.0.0.0/0"))
	if err != nil {
		return err
	}
	s.SetRouteTable([]tcpip.Route{
		{Destination: loop, NIC: nicLoopback},
		{Destination: local, NIC: nicLink},
		{Destination: all, Gateway: tcpAddr(c.Gateway), NIC: nicLink},
	})
	return nil
}

// Device returns the stack's link. Frames the stack sends come out of its
// Read; frames written to it go into the stack. Whoever pumps it (a
// tap.Pump) closes it; Net.Close closes it too.
func (n *Net) Device() tap.Device { return n.dev }

// Resolver returns a resolver that asks Config.DNS over the stack.
func (n *Net) Resolver() *net.Resolver { return n.res }

// Stats returns the link's counters.
func (n *Net) Stats() Stats { return n.ep.stats() }

// Close closes every listener and conn handed out (their calls then fail
// with net.ErrClosed), closes the Device, stops the stack and waits for its
// workers. Later calls return an error wrapping net.ErrClosed.
func (n *Net) Close() error {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return fmt.Errorf("netstack: %w", net.ErrClosed)
	}
	n.closed = true
	open := n.open
	n.open = nil
	n.mu.Unlock()
	for c := range open {
		_ = c.Close()
	}
	n.dev.Close()
	n.stack.Close()
	n.stack.Wait()
	return nil
}

// track registers c to be closed by Close; it reports false if Net is
// closed (and then the caller closes c).
func (n *Net) track(c io.Closer) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return false
	}
	n.open[c] = struct{}{}
	return true
}

func (n *Net) untrack(c io.Closer) {
	n.mu.Lock()
	delete(n.open, c)
	n.mu.Unlock()
}

func (n *Net) isClosed() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.closed
}

func tcpAddr(a netip.Addr) tcpip.Address { return tcpip.AddrFrom4(a.As4()) }

func subnet(p netip.Prefix) (tcpip.Subnet, error) {
	a := p.Addr().As4()
	s, err := tcpip.NewSubnet(tcpip.AddrFrom4(a), tcpip.MaskFromBytes(net.CIDRMask(p.Bits(), 32)))
	if err != nil {
		return s, fmt.Errorf("netstack: subnet %s: %w", p, err)
	}
	return s, nil
}
