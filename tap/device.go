package tap

import (
	"fmt"
	"net"
	"net/netip"
)

// Device is a source and sink of Ethernet frames that moves them in
// batches, in the manner of wireguard-go's tun.Device. Implementations:
// the Linux TAP device (CreateTAP) and taptest.ChannelDevice.
//
// Invariants:
//   - Read and Write may be called concurrently with each other, but Read
//     must not be called concurrently with Read, nor Write with Write.
//   - bufs[i][offset:] holds one frame; buffers passed to Read should have
//     room for MTU()+EthernetHeaderSize bytes after offset.
//   - BatchSize and MTU are constant for the device's lifetime.
//   - Close unblocks a pending Read or Write; after Close, both return an
//     error wrapping net.ErrClosed or os.ErrClosed.
type Device interface {
	// Read reads one or more frames into bufs[i][offset:], stores their
	// lengths in sizes[i], and returns how many it read. It blocks until
	// at least one frame is available. len(sizes) >= len(bufs); at most
	// BatchSize frames are read per call.
	Read(bufs [][]byte, sizes []int, offset int) (n int, err error)

	// Write writes the frames bufs[i][offset:] and returns how many were
	// written. It may modify bufs[i][:offset].
	Write(bufs [][]byte, offset int) (int, error)

	// BatchSize is the largest number of frames Read returns and the
	// number of buffers a caller should offer it.
	BatchSize() int

	// MTU is the L3 MTU; frames are at most MTU()+EthernetHeaderSize bytes.
	MTU() int

	// Name is the device's name, e.g. "tap0".
	Name() string

	// Close closes the device and unblocks pending calls.
	Close() error
}

// TAPConfig configures a Linux TAP device created by CreateTAP. The zero
// value is valid and gives the same network as gvforwarder and gvproxy's
// defaults.
type TAPConfig struct {
	// Name is the interface name. Default "tap0".
	Name string

	// MTU is the L3 MTU. Default DefaultMTU (65520); must be in
	// [68, 65521]. It must match the MTU of the other end of the tunnel.
	MTU int

	// MAC is the interface's hardware address. Default 5a:94:ef:e4:0c:ee,
	// the locally administered address gvforwarder uses.
	MAC net.HardwareAddr

	// Address is the interface's address and subnet. Default
	// 192.168.127.2/24.
	Address netip.Prefix

	// Gateway is the next hop of the default route, which CreateTAP
	// installs. Default: 192.168.127.1 if Address is defaulted too, else
	// the first address of Address's subnet (e.g. 10.0.0.1 for 10.0.0.2/24).
	Gateway netip.Addr

	// DNS lists the name servers written to ResolvConf. Default: Gateway
	// (gvproxy and quench-host answer DNS on the gateway address).
	DNS []netip.Addr

	// ResolvConf is the path of a resolv.conf to write, one "nameserver"
	// line per DNS server and "options edns0" (answers up to 1200 bytes
	// over UDP rather than 512, before a resolver falls back to TCP).
	// Empty (the default) means do not write one.
	ResolvConf string
}

// DefaultMAC is TAPConfig.MAC's default, the address gvforwarder uses.
var DefaultMAC = net.HardwareAddr{0x5a, 0x94, 0xef, 0xe4, 0x0c, 0xee}

// Default addresses of the virtual network (those of gvproxy).
var (
	DefaultAddress = netip.MustParsePrefix("192.168.127.2/24")
	DefaultGateway = netip.MustParseAddr("192.168.127.1")
)

// withDefaults fills in TAPConfig's defaults and validates it.
func (cfg TAPConfig) withDefaults() (TAPConfig, error) {
	if cfg.Name == "" {
		cfg.Name = "tap0"
	}
	if len(cfg.Name) >= 16 { // IFNAMSIZ includes the NUL
		return cfg, errorf("interface name %q longer than 15 bytes", cfg.Name)
	}
	if cfg.MTU == 0 {
		cfg.MTU = DefaultMTU
	}
	if cfg.MTU < minMTU || cfg.MTU > maxMTU {
		return cfg, errorf("MTU %d out of range [%d, %d]", cfg.MTU, minMTU, maxMTU)
	}
	if cfg.MAC == nil {
		cfg.MAC = append(net.HardwareAddr(nil), DefaultMAC...)
	}
	if len(cfg.MAC) != 6 {
		return cfg, errorf("MAC %v is not a 6-byte Ethernet address", cfg.MAC)
	}
	addressDefaulted := !cfg.Address.IsValid()
	if addressDefaulted {
		cfg.Address = DefaultAddress
	}
	if !cfg.Address.Addr().Is4() && !cfg.Address.Addr().Is6() {
		return cfg, errorf("bad address %v", cfg.Address)
	}
	if !cfg.Gateway.IsValid() {
		if addressDefaulted {
			cfg.Gateway = DefaultGateway
		} else {
			cfg.Gateway = cfg.Address.Masked().Addr().Next()
		}
	}
	if cfg.Gateway.Is4() != cfg.Address.Addr().Is4() || !cfg.Address.Contains(cfg.Gateway) {
		return cfg, errorf("gateway %v is not in %v", cfg.Gateway, cfg.Address)
	}
	if cfg.Gateway == cfg.Address.Addr() {
		return cfg, errorf("gateway %v is the interface's own address", cfg.Gateway)
	}
	if len(cfg.DNS) == 0 {
		cfg.DNS = []netip.Addr{cfg.Gateway}
	}
	return cfg, nil
}

// CreateTAP creates a TAP device (IFF_TAP|IFF_NO_PI) in the current
// network namespace (that of the calling OS thread) and configures it
// through netlink: MAC, MTU, address, link up, loopback up, default route
// via the gateway, and resolv.conf if TAPConfig.ResolvConf is set. It needs
// CAP_NET_ADMIN. The interface exists as long as the Device is open; the
// caller must Close it.
//
// On systems other than Linux it returns an error wrapping
// errors.ErrUnsupported.
func CreateTAP(cfg TAPConfig) (Device, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	return createTAP(cfg)
}

// errorf is fmt.Errorf with the package prefix.
func errorf(format string, args ...any) error {
	return fmt.Errorf("tap: "+format, args...)
}
