package host

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/quenchnet/quench/internal/filelimit"
	"github.com/quenchnet/quench/policy"
	"github.com/quenchnet/quench/tap"
)

// Defaults for Config. The addresses match gvproxy's, so enclaves built for
// gvproxy or nitriding work unchanged.
var (
	DefaultSubnet         = netip.MustParsePrefix("192.168.127.0/24")
	DefaultGatewayMAC     = net.HardwareAddr{0x5a, 0x94, 0xef, 0xe4, 0x0c, 0xdd}
	DefaultEnclaveMAC     = net.HardwareAddr{0x5a, 0x94, 0xef, 0xe4, 0x0c, 0xee}
	defaultMetadataPrefix = netip.MustParsePrefix("169.254.0.0/16")
)

const (
	// DefaultMaxInFlightDials bounds outbound (NAT) connection attempts that
	// have not completed yet. gvisor-tap-vsock hard-codes 10, which stalls
	// enclaves that open many connections at once (gvisor-tap-vsock#676).
	DefaultMaxInFlightDials = 512
	// DefaultDialTimeout bounds one outbound connection attempt.
	DefaultDialTimeout = 10 * time.Second
	// DefaultIdleTimeout closes published-port connections that moved no
	// byte in either direction for this long.
	DefaultIdleTimeout = 10 * time.Minute
	// DefaultDrainTimeout bounds how long RemovePort waits for a removed
	// port's connections to end before closing them.
	DefaultDrainTimeout = 30 * time.Second
	// DefaultHandshakeTimeout bounds how long a new enclave stream may take
	// to send its /connect request.
	DefaultHandshakeTimeout = 10 * time.Second
	// DefaultMaxEnclaveStreams bounds attached enclave streams; each costs
	// about 300 KiB of buffers. Nitro allows a few enclaves per instance.
	DefaultMaxEnclaveStreams = 64
)

// Defaults of the limits against hostile clients and enclaves (layer 4);
// see Config.
const (
	// DefaultFirstByteTimeout: clients of TLS and HTTP, what published
	// ports mostly carry, send at once; 30 s allows for slow networks.
	DefaultFirstByteTimeout = 30 * time.Second
	// DefaultMaxPortUDPFlows and DefaultMaxNATUDPFlows: each flow costs
	// about 64-128 KiB while tracked, so 1024 bound that to ~128 MiB.
	DefaultMaxPortUDPFlows = 1024
	DefaultMaxNATUDPFlows  = 1024
	// DefaultNATIdleTimeout is Linux's TCP keepalive time (7200 s), longer
	// than the idle timeouts enclave software already has to live with on
	// AWS (NAT gateway 350 s, load balancers at most 4000 s), so
	// connections kept open that way keep working; what stays idle longer
	// is most likely leaked and gets its descriptor back.
	DefaultNATIdleTimeout = 2 * time.Hour
)

// Config configures a Host. The zero value is usable: it gives gvproxy's
// addresses, MTU 65520, no published ports and the system DNS resolver.
type Config struct {
	// Subnet is the virtual network shared by the host and the enclaves.
	// Default: 192.168.127.0/24.
	Subnet netip.Prefix

	// GatewayIP is the host's address on the virtual network: the enclave's
	// default route and DNS server. Default: the first address of Subnet
	// (192.168.127.1).
	GatewayIP netip.Addr

	// EnclaveIP is where published ports are forwarded to. Default: the
	// second address of Subnet (192.168.127.2).
	EnclaveIP netip.Addr

	// HostLoopbackIP is a virtual address whose connections reach the host's
	// own 127.0.0.1, for services on the host. Default: the last usable
	// address of Subnet (192.168.127.254). An invalid (zero) value after
	// defaults cannot be expressed; set DisableHostLoopback to turn it off.
	HostLoopbackIP netip.Addr

	// DisableHostLoopback turns the HostLoopbackIP mapping off.
	DisableHostLoopback bool

	// DisableDHCP turns the gateway's DHCP service off. When on, it leases
	// EnclaveIP to DefaultEnclaveMAC and other addresses of Subnet to other
	// clients (never GatewayIP or HostLoopbackIP), as gvproxy does, so a
	// stock gvforwarder configures itself. Default: false (DHCP on).
	DisableDHCP bool

	// GatewayMAC is the gateway's link address. Default: 5a:94:ef:e4:0c:dd.
	GatewayMAC net.HardwareAddr

	// MTU of the virtual link (IP packet size, without the Ethernet header).
	// It never reaches the internet: the host terminates TCP. Default: 65520.
	MTU int

	// MaxWrite bounds each write to an enclave stream. Default: 32 KiB, the
	// largest write the Nitro hypervisor passes intact.
	MaxWrite int

	// AckDelay is how long the gateway may hold a pure TCP ACK bound for an
	// enclave, so that the connection's next segment (the client's next
	// request) carries it instead of a frame of its own. Only ACKs that
	// advance the acknowledgment number are held, never duplicate ACKs,
	// window updates or ACKs with SACK blocks. Negative turns holding off.
	// Default: DefaultAckDelay (1ms).
	AckDelay time.Duration

	// Publish lists host ports forwarded into the enclave, through the
	// virtual network or (Publish.VSockPort) over the ingress fast path.
	// Default: none.
	Publish []Publish

	// DialEnclave opens a stream to the enclave's VSOCK port for the
	// ingress fast path (Publish.VSockPort). Required when a fast-path port
	// is published; quench-host dials vsock://ENCLAVE-CID:port. Default: nil.
	DialEnclave func(ctx context.Context, port uint32) (net.Conn, error)

	// IdleTimeout closes a published TCP port's connection when neither
	// direction moved a byte for this long. Negative means never.
	// Default: DefaultIdleTimeout (10 minutes).
	IdleTimeout time.Duration

	// GoroutineRelay relays published ports' connections with two
	// goroutines each (Go's poller) instead of the event loops of
	// relay.Loop (edge-triggered epoll, one buffer per loop). For comparison
	// and debugging; the event loops cost fewer syscalls per message.
	// Default: false.
	GoroutineRelay bool

	// DrainTimeout bounds how long RemovePort waits for a removed port's
	// connections when its context has no deadline. Default: 30s.
	DrainTimeout time.Duration

	// DNSUpstream lists DNS servers ("host:port") that the gateway's DNS
	// service asks for names outside its own zone. Default: the host's
	// system resolver.
	DNSUpstream []string

	// MaxInFlightDials bounds outbound connection attempts in progress;
	// further SYNs are dropped until one completes (the enclave retransmits).
	// Default: DefaultMaxInFlightDials.
	MaxInFlightDials int

	// DialTimeout bounds one outbound connection attempt. One that times
	// out drops the enclave's SYN (no reset): its retransmission makes the
	// next attempt, and the enclave's app sees its own connect timeout, as
	// on a direct path. Default: 10s.
	DialTimeout time.Duration

	// HandshakeTimeout bounds the /connect handshake of a new enclave
	// stream. Default: 10s.
	HandshakeTimeout time.Duration

	// Isolation between enclaves (layer 2). Each enclave stream may send
	// only from addresses it owns: a MAC it was first to use (or took over
	// by reconnecting, see below), and an IPv4 address it was first to use
	// or holds the DHCP lease for. Frames from another stream's addresses,
	// or the host's (gateway, host loopback), are dropped and counted. A
	// new stream from the same peer (the same VSOCK CID; for unix sockets,
	// the same user id) whose first frame uses an attached stream's MAC
	// replaces that stream: the enclave reconnected. Zero means the
	// default; a negative value means no limit.

	// MaxEnclaveStreams bounds the enclave streams attached or in their
	// handshake; further connections are closed at once and counted.
	// MaxEnclaveStreamsPerPeer bounds those from one peer (VSOCK CID), so
	// that one enclave cannot take every slot. MaxEnclaveHandshakes bounds
	// those in their handshake, so that connections that never finish it
	// cannot hold every slot. Defaults: DefaultMaxEnclaveStreams (64); 16;
	// 32.
	MaxEnclaveStreams        int
	MaxEnclaveStreamsPerPeer int
	MaxEnclaveHandshakes     int

	// MaxMACsPerEnclave bounds the source MACs one stream may use (and so
	// the DHCP leases it may hold: a DHCP request must name its source
	// MAC); the MAC table holds at most MaxEnclaveStreams times as many.
	// MaxAddressesPerEnclave bounds the IPv4 addresses one stream may send
	// from. Frames beyond them are dropped. Defaults: 16; 8.
	MaxMACsPerEnclave      int
	MaxAddressesPerEnclave int

	// DHCPOfferTimeout is how long an address offered in answer to a
	// DHCP DISCOVER is held for the client; unless a REQUEST confirms it,
	// it returns to the pool. Default: 60s.
	DHCPOfferTimeout time.Duration

	// AllowMetadata lets enclaves reach the link-local range 169.254.0.0/16,
	// which holds the EC2 instance metadata service and its credentials.
	// Default: false (blocked).
	AllowMetadata bool

	// Egress restricts where enclaves may connect (TCP and UDP through the
	// NAT) and which names the DNS service answers; see package policy.
	// Refusals are counted (Stats). It applies on top of AllowMetadata.
	// Default: nil, everything allowed.
	Egress *policy.Policy

	// Limits against hostile clients and enclaves (layer 4). Zero means
	// the default; a negative value means no limit (timeouts: none).
	// Defaults that bound file descriptors derive from the open-file limit
	// (RLIMIT_NOFILE as Go raised it at start-up, see FileLimit): published
	// ports at most 1/2 of it, NAT TCP 1/4, NAT UDP at most 1/8, vsock-proxy
	// connections 1/16, leaving the rest, at least 1/16, for enclave streams
	// and listeners. Refusals are counted (LimitStats, PortStatus.Refused,
	// metrics).

	// MaxPortConns bounds the client connections of all published TCP
	// ports together (a fast-path client holds two descriptors, one through
	// the virtual network one). A client beyond it is accepted and reset at
	// once, not left in the backlog, so that it learns at once and the
	// backlog does not fill with connections nobody will serve. Default:
	// FileLimit()/4.
	MaxPortConns int

	// MaxPortConnsPerPort bounds one published TCP port's connections, so
	// that a flood of one port leaves room for the others. Default:
	// MaxPortConns (only the total applies).
	MaxPortConnsPerPort int

	// MaxPortConnsPerClient bounds the connections one client address
	// (an IPv4 address, or an IPv6 /64) holds on all published TCP ports
	// together, so that one source cannot take MaxPortConns alone. Set it when clients connect directly
	// or through a load balancer that keeps their addresses (an NLB); behind
	// one that does not (an ALB), every client has the balancer's few
	// addresses and a cap would refuse them. Default: no limit.
	MaxPortConnsPerClient int

	// FirstByteTimeout closes a published TCP port's connection whose
	// client has sent nothing for this long after connecting: idle clients
	// holding descriptors. For protocols whose clients may stay silent
	// longer (server-push, or a server that speaks first and a slow human
	// client), raise it or make it negative. Default:
	// DefaultFirstByteTimeout (30s).
	FirstByteTimeout time.Duration

	// MaxPortUDPFlows bounds the client sources (address:port) tracked by
	// all published UDP ports together; each costs a goroutine, a 64 KiB
	// buffer and a gVisor endpoint until 90 s after its last datagram.
	// At the limit, a new source takes the place of the least recently
	// active one that has had one request answered (a one-shot client such
	// as a DNS resolver's fresh socket); when every source is a longer
	// conversation, its datagrams are dropped and counted.
	// Default: DefaultMaxPortUDPFlows (1024).
	MaxPortUDPFlows int

	// MaxNATConns bounds enclave TCP connections through the NAT (one host
	// descriptor each) in total, and MaxNATConnsPerEnclave those from one
	// enclave address. SYNs beyond them are answered with a reset and
	// counted. Default: FileLimit()/4 in total, half of it per enclave.
	MaxNATConns           int
	MaxNATConnsPerEnclave int

	// MaxNATUDPFlows bounds enclave UDP flows through the NAT (each a host
	// socket, two goroutines and two 64 KiB buffers, until 90 s after its
	// last datagram) in total, and MaxNATUDPFlowsPerEnclave those from one
	// enclave address. At a limit, a new flow takes the place of the least
	// recently active flow that was one answered request (an app sending
	// each request from a fresh socket); when none was, its datagrams are
	// dropped and counted. Default: DefaultMaxNATUDPFlows (1024), or FileLimit()/8 if
	// less, in total; half of it per enclave.
	MaxNATUDPFlows           int
	MaxNATUDPFlowsPerEnclave int

	// NATIdleTimeout closes an enclave's TCP connection through the NAT,
	// or a VSockProxy connection, when neither direction moved a byte for
	// this long (keepalive probes carry none). Negative: never. Default: DefaultNATIdleTimeout (2h).
	NATIdleTimeout time.Duration

	// MaxVSockProxyConns bounds the connections of all VSockProxy ports
	// together (two host descriptors each: the enclave's VSOCK connection
	// and the target's), and MaxVSockProxyConnsPerPeer those from one peer
	// (a VSOCK CID: one enclave), so that one enclave cannot take them all.
	// Connections beyond are closed at once and counted. Default:
	// FileLimit()/32 in total, half of it per peer.
	MaxVSockProxyConns        int
	MaxVSockProxyConnsPerPeer int

	// EnclaveLog receives each line of the enclaves' log streams
	// (ServeEnclaveLogs): the enclave ("vsock:16"), the stream ("stdout",
	// "stderr", "quench"; names are the enclave's choice) and the line,
	// valid only during the call, as the enclave sent it (any bytes but a
	// newline). Calls for one stream come in order, from one goroutine; a
	// slow EnclaveLog slows that enclave's shipping, never the network.
	// Default: Logger at Info level, message "enclave", attributes
	// enclave, stream and line (slog quotes control characters, so a line
	// cannot forge log records or terminal escapes).
	EnclaveLog func(enclave, stream string, line []byte)
	// MaxEnclaveLogStreams bounds the log streams open at once (a
	// goroutine and a 64 KiB buffer each), 4 per enclave; more are closed
	// at once and counted. Negative: no limit (4 per enclave still).
	// Default: DefaultMaxEnclaveLogStreams (64).
	MaxEnclaveLogStreams int
	// EnclaveLogRate bounds the lines a second that one enclave's log
	// streams, together, pass to EnclaveLog, with a burst of as many; a
	// line counts 1, and 1 more per KiB (at the default, about 1 MiB a
	// second at most). Past it the host reads them no faster, so that an
	// app flooding its output cannot take the host's log (and journald's
	// rate limit) from the host and the other enclaves; the enclave's
	// Shipper buffers, then drops and says so. Keep it at some hundreds at
	// least: a Shipper's write (32 KiB, thousands of short lines) that the
	// host takes no faster must end within its WriteTimeout (10 s), or the
	// Shipper reconnects and sends some lines twice. Negative: no limit.
	// Default: DefaultEnclaveLogRate (1000).
	EnclaveLogRate int

	// MaxDialsPerEnclave bounds how many of the MaxInFlightDials slots one
	// enclave address may hold; its further SYNs are dropped (it
	// retransmits) so that one enclave dialling unanswering addresses
	// cannot stall the others' connections. Default: half of
	// MaxInFlightDials, at least 1.
	MaxDialsPerEnclave int

	// Dial opens outbound connections on the host's network for enclave
	// NAT traffic. Default: a net.Dialer.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)

	// Logger receives operational logs. Default: discard.
	Logger *slog.Logger
}

// Publish forwards a host port into the enclave, like docker's -p.
type Publish struct {
	// Network is "tcp" or "udp".
	Network string
	// Host is the address to listen on, e.g. 0.0.0.0:8443 or 127.0.0.1:0.
	Host netip.AddrPort
	// EnclavePort is the destination port on Config.EnclaveIP, through the
	// virtual network. Zero for the fast path.
	EnclavePort uint16
	// VSockPort, when not zero, makes this TCP port an ingress fast path:
	// each client connection becomes one enclave stream (Config.DialEnclave
	// to this port) that starts with a PROXY protocol v2 header carrying
	// the client's address, with no frames and no second TCP stack.
	VSockPort uint32
}

func (p Publish) String() string {
	if p.VSockPort != 0 {
		return fmt.Sprintf("%s:vsock:%d", p.Host, p.VSockPort)
	}
	s := fmt.Sprintf("%s:%d", p.Host, p.EnclavePort)
	if p.Network == "udp" {
		s += "/udp"
	}
	return s
}

// ParsePublish parses docker-style port publishing:
// [HOSTIP:]HOSTPORT:ENCLAVEPORT[/tcp|/udp]. An omitted HOSTIP means 0.0.0.0.
// IPv6 host addresses go in brackets: [::1]:8443:443.
func ParsePublish(s string) (Publish, error) {
	p := Publish{Network: "tcp"}
	spec := s
	if i := strings.LastIndexByte(spec, '/'); i >= 0 {
		p.Network = spec[i+1:]
		spec = spec[:i]
		if p.Network != "tcp" && p.Network != "udp" {
			return Publish{}, fmt.Errorf("host: publish %q: protocol must be tcp or udp, not %q", s, p.Network)
		}
	}
	i := strings.LastIndexByte(spec, ':')
	if i < 0 {
		return Publish{}, fmt.Errorf("host: publish %q: want [HOSTIP:]HOSTPORT:ENCLAVEPORT[/udp]", s)
	}
	enclavePort, err := parsePort(spec[i+1:])
	if err != nil {
		return Publish{}, fmt.Errorf("host: publish %q: enclave port: %w", s, err)
	}
	p.EnclavePort = enclavePort
	hostPart := spec[:i]
	hostIP := netip.IPv4Unspecified()
	var hostPortStr string
	if j := strings.LastIndexByte(hostPart, ':'); j >= 0 {
		ipStr := strings.TrimSuffix(strings.TrimPrefix(hostPart[:j], "["), "]")
		hostIP, err = netip.ParseAddr(ipStr)
		if err != nil {
			return Publish{}, fmt.Errorf("host: publish %q: host address: %w", s, err)
		}
		hostPortStr = hostPart[j+1:]
	} else {
		hostPortStr = hostPart
	}
	hostPort, err := parsePort(hostPortStr)
	if err != nil && hostPortStr != "0" {
		return Publish{}, fmt.Errorf("host: publish %q: host port: %w", s, err)
	}
	p.Host = netip.AddrPortFrom(hostIP, hostPort)
	return p, nil
}

// ParsePublishVSock parses an ingress fast-path port:
// [HOSTIP:]HOSTPORT:VSOCKPORT. An omitted HOSTIP means 0.0.0.0.
func ParsePublishVSock(s string) (Publish, error) {
	i := strings.LastIndexByte(s, ':')
	if i < 0 || strings.Contains(s, "/") {
		return Publish{}, fmt.Errorf("host: publish-vsock %q: want [HOSTIP:]HOSTPORT:VSOCKPORT", s)
	}
	vp, err := strconv.ParseUint(s[i+1:], 10, 32)
	if err != nil || vp == 0 {
		return Publish{}, fmt.Errorf("host: publish-vsock %q: bad VSOCK port %q", s, s[i+1:])
	}
	// Reuse the docker-style parser for the host part with a dummy port.
	p, err := ParsePublish(s[:i] + ":1")
	if err != nil {
		return Publish{}, fmt.Errorf("host: publish-vsock %q: %w", s, errors.Unwrap(err))
	}
	p.EnclavePort = 0
	p.VSockPort = uint32(vp)
	return p, nil
}

func parsePort(s string) (uint16, error) {
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil {
		return 0, fmt.Errorf("bad port %q", s)
	}
	if n == 0 {
		return 0, errors.New("port 0")
	}
	return uint16(n), nil
}

// validatePublish checks one published port against c.
func (c Config) validatePublish(p Publish) error {
	if p.Network != "tcp" && p.Network != "udp" {
		return fmt.Errorf("host: publish %s: network must be tcp or udp", p)
	}
	if !p.Host.Addr().IsValid() {
		return fmt.Errorf("host: publish %s: no host address", p)
	}
	if p.VSockPort != 0 {
		if p.Network != "tcp" {
			return fmt.Errorf("host: publish %s: the VSOCK fast path is TCP only", p)
		}
		if p.EnclavePort != 0 {
			return fmt.Errorf("host: publish %s: set either an enclave port or a VSOCK port", p)
		}
		if c.DialEnclave == nil {
			return fmt.Errorf("host: publish %s: VSOCK fast path needs Config.DialEnclave", p)
		}
		return nil
	}
	if p.EnclavePort == 0 {
		return fmt.Errorf("host: publish %s: enclave port 0", p)
	}
	return nil
}

// withDefaults validates c and fills in defaults.
func (c Config) withDefaults() (Config, error) {
	if !c.Subnet.IsValid() {
		c.Subnet = DefaultSubnet
	}
	c.Subnet = c.Subnet.Masked()
	if !c.Subnet.Addr().Is4() {
		return c, fmt.Errorf("host: subnet %s: only IPv4 subnets are supported", c.Subnet)
	}
	if c.Subnet.Bits() > 29 {
		return c, fmt.Errorf("host: subnet %s is too small (at most /29)", c.Subnet)
	}
	nth := func(n int) netip.Addr {
		a := c.Subnet.Addr().As4()
		v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
		v += uint32(n)
		return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
	}
	size := 1 << (32 - c.Subnet.Bits())
	if !c.GatewayIP.IsValid() {
		c.GatewayIP = nth(1)
	}
	if !c.EnclaveIP.IsValid() {
		c.EnclaveIP = nth(2)
	}
	if !c.HostLoopbackIP.IsValid() {
		c.HostLoopbackIP = nth(size - 2)
	}
	for name, a := range map[string]netip.Addr{"gateway": c.GatewayIP, "enclave": c.EnclaveIP, "host loopback": c.HostLoopbackIP} {
		if !c.Subnet.Contains(a) {
			return c, fmt.Errorf("host: %s address %s is outside subnet %s", name, a, c.Subnet)
		}
	}
	if c.GatewayIP == c.EnclaveIP || c.GatewayIP == c.HostLoopbackIP || c.EnclaveIP == c.HostLoopbackIP {
		return c, errors.New("host: gateway, enclave and host loopback addresses must differ")
	}
	if c.GatewayMAC == nil {
		c.GatewayMAC = DefaultGatewayMAC
	}
	if len(c.GatewayMAC) != 6 {
		return c, fmt.Errorf("host: gateway MAC %s is not a 6-byte Ethernet address", c.GatewayMAC)
	}
	if c.MTU == 0 {
		c.MTU = tap.DefaultMTU
	}
	if c.MTU < 576 || c.MTU > tap.MaxFrameSize-tap.EthernetHeaderSize {
		return c, fmt.Errorf("host: MTU %d out of range [576, %d]", c.MTU, tap.MaxFrameSize-tap.EthernetHeaderSize)
	}
	if c.AckDelay == 0 {
		c.AckDelay = DefaultAckDelay
	}
	if c.MaxWrite == 0 {
		c.MaxWrite = tap.DefaultMaxWrite
	}
	if c.MaxInFlightDials == 0 {
		c.MaxInFlightDials = DefaultMaxInFlightDials
	}
	if c.MaxInFlightDials < 0 {
		return c, fmt.Errorf("host: MaxInFlightDials %d is negative", c.MaxInFlightDials)
	}
	if c.DialTimeout == 0 {
		c.DialTimeout = DefaultDialTimeout
	}
	if c.HandshakeTimeout == 0 {
		c.HandshakeTimeout = DefaultHandshakeTimeout
	}
	c.isolationDefaults()
	for _, u := range c.DNSUpstream {
		if _, _, err := net.SplitHostPort(u); err != nil {
			return c, fmt.Errorf("host: DNS upstream %q: want host:port: %w", u, err)
		}
	}
	if c.IdleTimeout == 0 {
		c.IdleTimeout = DefaultIdleTimeout
	}
	if c.IdleTimeout < 0 {
		c.IdleTimeout = 0 // relay: none
	}
	if c.DrainTimeout <= 0 {
		c.DrainTimeout = DefaultDrainTimeout
	}
	c.limitDefaults() // layer 4, after MaxInFlightDials
	seen := map[string]bool{}
	for _, p := range c.Publish {
		if err := c.validatePublish(p); err != nil {
			return c, err
		}
		k := p.Network + " " + p.Host.String()
		if p.Host.Port() != 0 && seen[k] {
			return c, fmt.Errorf("host: host port %s/%s published twice", p.Host, p.Network)
		}
		seen[k] = true
	}
	if c.Dial == nil {
		d := &net.Dialer{}
		c.Dial = d.DialContext
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.EnclaveLog == nil {
		log := c.Logger
		c.EnclaveLog = func(enclave, stream string, line []byte) {
			log.Info("enclave", "enclave", enclave, "stream", stream, "line", string(line))
		}
	}
	return c, nil
}

// FileLimit returns the process's open-file limit (the soft RLIMIT_NOFILE,
// which Go raises to the hard limit at start-up), or 1024 if unknown. The
// default limits of Config derive from it.
func FileLimit() int { return filelimit.Get() }

// limitDefaults fills in the limits against hostile clients and enclaves
// (layer 4); negative values stay: no limit.
func (c *Config) limitDefaults() {
	fds := FileLimit()
	def := func(v *int, d int) {
		switch {
		case *v != 0:
		case d < 0:
			*v = -1 // derived from a limit that is off
		default:
			*v = max(d, 1)
		}
	}
	half := func(total int) int {
		if total < 0 {
			return -1
		}
		return total / 2
	}
	def(&c.MaxPortConns, fds/4)
	def(&c.MaxPortConnsPerPort, c.MaxPortConns)
	def(&c.MaxPortConnsPerClient, -1)
	if c.FirstByteTimeout == 0 {
		c.FirstByteTimeout = DefaultFirstByteTimeout
	}
	def(&c.MaxPortUDPFlows, DefaultMaxPortUDPFlows)
	def(&c.MaxNATConns, fds/4)
	def(&c.MaxNATConnsPerEnclave, half(c.MaxNATConns))
	def(&c.MaxNATUDPFlows, min(DefaultMaxNATUDPFlows, fds/8))
	def(&c.MaxNATUDPFlowsPerEnclave, half(c.MaxNATUDPFlows))
	if c.NATIdleTimeout == 0 {
		c.NATIdleTimeout = DefaultNATIdleTimeout
	}
	def(&c.MaxDialsPerEnclave, half(c.MaxInFlightDials))
	def(&c.MaxVSockProxyConns, fds/32)
	def(&c.MaxVSockProxyConnsPerPeer, half(c.MaxVSockProxyConns))
	def(&c.MaxEnclaveLogStreams, DefaultMaxEnclaveLogStreams)
	def(&c.EnclaveLogRate, DefaultEnclaveLogRate)
}
