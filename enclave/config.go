package enclave

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"time"

	"github.com/quenchnet/quench/internal/endpoint"
	"github.com/quenchnet/quench/tap"
)

// NetworkMode selects how an enclave gets its network.
type NetworkMode string

const (
	// NetworkUserspace runs a gVisor TCP/IP stack inside the process. It
	// needs no privileges and no kernel device; only this process gets a
	// network, through [Enclave.Listen], [Enclave.Dial] and
	// [Enclave.HTTPClient].
	NetworkUserspace NetworkMode = "userspace"

	// NetworkTAP creates a kernel TAP device (needs CAP_NET_ADMIN), so every
	// program in the enclave uses ordinary sockets.
	NetworkTAP NetworkMode = "tap"
)

// DefaultHostPort is the VSOCK port quench-host listens on for enclaves.
const DefaultHostPort = 1024

// Config configures an Enclave. The zero value is usable: userspace
// networking, the host at VSOCK CID 3 port 1024, gvproxy's addresses.
// Fields must not be changed after New.
type Config struct {
	// Network selects the networking mode. Default: NetworkUserspace.
	Network NetworkMode

	// DialHost opens the stream to quench-host (or a stock gvproxy).
	// Default: VSOCK to the parent instance, CID 3, port 1024.
	DialHost func(ctx context.Context) (net.Conn, error)

	// MTU of the virtual link; must match the host's. Default: 65520.
	MTU int

	// MaxWrite bounds each write to the host stream. Default: 32 KiB, the
	// largest VSOCK write the Nitro hypervisor passes intact.
	MaxWrite int

	// Address is the enclave's address and subnet. Default: 192.168.127.2/24.
	Address netip.Prefix

	// Gateway is the host's address on the virtual network, the default
	// route. Default: 192.168.127.1.
	Gateway netip.Addr

	// DNS lists name servers. Default: Gateway.
	DNS []netip.Addr

	// MAC is the enclave's link address. Default: 5a:94:ef:e4:0c:ee.
	MAC net.HardwareAddr

	// TAPName is the TAP device's name (NetworkTAP). Default: "tap0".
	TAPName string

	// ResolvConf is the resolv.conf that NetworkTAP writes the DNS servers
	// to. Default: /etc/resolv.conf. "-" means do not write one.
	ResolvConf string

	// ReconnectMin and ReconnectMax bound the backoff between attempts to
	// reach the host after the stream drops. Defaults: 50ms and 1s.
	ReconnectMin, ReconnectMax time.Duration

	// Logger receives operational logs. Default: discard.
	Logger *slog.Logger
}

func (c Config) withDefaults() (Config, error) {
	switch c.Network {
	case "":
		c.Network = NetworkUserspace
	case NetworkUserspace, NetworkTAP:
	default:
		return c, fmt.Errorf("enclave: unknown network mode %q (want %q or %q)", c.Network, NetworkTAP, NetworkUserspace)
	}
	if c.DialHost == nil {
		a := endpoint.Addr{Scheme: "vsock", CID: endpoint.ParentCID, Port: DefaultHostPort}
		c.DialHost = func(ctx context.Context) (net.Conn, error) {
			return endpoint.Dial(ctx, a, endpoint.Options{})
		}
	}
	if c.MTU == 0 {
		c.MTU = tap.DefaultMTU
	}
	if c.MTU < 576 || c.MTU > tap.MaxFrameSize-tap.EthernetHeaderSize {
		return c, fmt.Errorf("enclave: MTU %d out of range [576, %d]", c.MTU, tap.MaxFrameSize-tap.EthernetHeaderSize)
	}
	if c.MaxWrite == 0 {
		c.MaxWrite = tap.DefaultMaxWrite
	}
	if !c.Address.IsValid() {
		c.Address = tap.DefaultAddress
	}
	if !c.Address.Addr().Is4() {
		return c, fmt.Errorf("enclave: address %s: only IPv4 is supported", c.Address)
	}
	if !c.Gateway.IsValid() {
		c.Gateway = tap.DefaultGateway
	}
	if !c.Address.Masked().Contains(c.Gateway) {
		return c, fmt.Errorf("enclave: gateway %s is outside %s", c.Gateway, c.Address.Masked())
	}
	if c.Gateway == c.Address.Addr() {
		return c, fmt.Errorf("enclave: gateway and enclave address are both %s", c.Gateway)
	}
	if len(c.DNS) == 0 {
		c.DNS = []netip.Addr{c.Gateway}
	}
	if c.MAC == nil {
		c.MAC = tap.DefaultMAC
	}
	if len(c.MAC) != 6 {
		return c, fmt.Errorf("enclave: MAC %s is not a 6-byte Ethernet address", c.MAC)
	}
	if c.TAPName == "" {
		c.TAPName = "tap0"
	}
	if c.ResolvConf == "" {
		c.ResolvConf = "/etc/resolv.conf"
	}
	if c.ReconnectMin <= 0 {
		c.ReconnectMin = 50 * time.Millisecond
	}
	if c.ReconnectMax <= 0 {
		c.ReconnectMax = time.Second
	}
	if c.ReconnectMax < c.ReconnectMin {
		c.ReconnectMax = c.ReconnectMin
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c, nil
}
