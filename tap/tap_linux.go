//go:build linux

package tap

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"sync"
	"syscall"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/quenchnet/quench/internal/rawio"
)

// linuxTAP is a Linux TAP device (IFF_TAP|IFF_NO_PI). Its file descriptor
// is non-blocking and registered with the Go runtime's poller through
// os.File, so Close unblocks a pending Read. Read drains every frame the
// kernel has queued (up to the batch) after one wait for readability.
type linuxTAP struct {
	file *os.File
	rc   syscall.RawConn
	name string
	mtu  int

	closeOnce sync.Once
	closeErr  error
}

var _ Device = (*linuxTAP)(nil)

func createTAP(cfg TAPConfig) (Device, error) {
	// Everything below must happen in one network namespace: the one of
	// this OS thread (the TAP device lands in the namespace of the thread
	// that opens /dev/net/tun). LockOSThread nests, so a caller that locked
	// the thread and switched namespaces keeps both.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()

	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, errorf("open /dev/net/tun: %w", err)
	}
	ifr, err := unix.NewIfreq(cfg.Name)
	if err != nil {
		unix.Close(fd)
		return nil, errorf("interface name %q: %w", cfg.Name, err)
	}
	ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return nil, errorf("create TAP %q: %w", cfg.Name, err)
	}
	name := ifr.Name()
	// fd is non-blocking, so os.NewFile registers it with the poller.
	file := os.NewFile(uintptr(fd), "/dev/net/tun")
	rc, err := file.SyscallConn()
	if err != nil {
		file.Close()
		return nil, errorf("TAP %q: %w", name, err)
	}
	t := &linuxTAP{file: file, rc: rc, name: name, mtu: cfg.MTU}
	if err := configureLink(name, cfg); err != nil {
		t.Close()
		return nil, err
	}
	if cfg.ResolvConf != "" {
		if err := writeResolvConf(cfg.ResolvConf, cfg.DNS); err != nil {
			t.Close()
			return nil, err
		}
	}
	return t, nil
}

// configureLink sets the MAC, MTU and address of the interface, brings it
// and the loopback up, and adds the default route, through netlink in the
// current thread's network namespace.
func configureLink(name string, cfg TAPConfig) error {
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return errorf("netlink: %w", err)
	}
	defer h.Close()

	link, err := h.LinkByName(name)
	if err != nil {
		return errorf("find link %q: %w", name, err)
	}
	if err := h.LinkSetHardwareAddr(link, cfg.MAC); err != nil {
		return errorf("set MAC of %q to %v: %w", name, cfg.MAC, err)
	}
	if err := h.LinkSetMTU(link, cfg.MTU); err != nil {
		return errorf("set MTU of %q to %d: %w", name, cfg.MTU, err)
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{
		IP:   cfg.Address.Addr().AsSlice(),
		Mask: net.CIDRMask(cfg.Address.Bits(), cfg.Address.Addr().BitLen()),
	}}
	if err := h.AddrAdd(link, addr); err != nil {
		return errorf("add address %v to %q: %w", cfg.Address, name, err)
	}
	if err := h.LinkSetUp(link); err != nil {
		return errorf("bring %q up: %w", name, err)
	}
	if lo, err := h.LinkByName("lo"); err == nil {
		if err := h.LinkSetUp(lo); err != nil {
			return errorf("bring lo up: %w", err)
		}
	}
	route := &netlink.Route{
		LinkIndex: link.Attrs().Index,
		Gw:        cfg.Gateway.AsSlice(),
		Scope:     netlink.SCOPE_UNIVERSE,
	}
	if cfg.Gateway.Is4() {
		route.Dst = &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}
	} else {
		route.Dst = &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
	}
	if err := h.RouteReplace(route); err != nil {
		return errorf("add default route via %v on %q: %w", cfg.Gateway, name, err)
	}
	return nil
}

func writeResolvConf(path string, dns []netip.Addr) error {
	var b strings.Builder
	b.WriteString("# written by quench\n")
	for _, a := range dns {
		fmt.Fprintf(&b, "nameserver %s\n", a)
	}
	// EDNS0: glibc then takes UDP answers up to 1200 bytes instead of
	// 512. Past 512, gvproxy's and quench-host's DNS truncate an answer for
	// a client without EDNS0, and glibc retries over TCP: a round trip
	// more (and, under an egress policy, through the enclave's DNS proxy).
	b.WriteString("options edns0\n")
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		return errorf("write %s: %w", path, err)
	}
	return nil
}

func (t *linuxTAP) BatchSize() int { return IdealBatchSize }
func (t *linuxTAP) MTU() int       { return t.mtu }
func (t *linuxTAP) Name() string   { return t.name }

// Read blocks until a frame is available, then reads every frame the
// kernel has queued, up to len(bufs), each with one read syscall (a raw
// one: see package rawio).
func (t *linuxTAP) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	if len(bufs) == 0 {
		return 0, nil
	}
	if len(sizes) < len(bufs) {
		return 0, errorf("read %s: %d sizes for %d buffers", t.name, len(sizes), len(bufs))
	}
	var (
		n    int
		rerr error
	)
	err := t.rc.Read(func(fd uintptr) bool {
		for n < len(bufs) {
			m, err := rawio.Read(int(fd), bufs[n][offset:])
			if err == unix.EAGAIN {
				return n > 0 // nothing queued: wait unless we have frames
			}
			if err != nil {
				rerr = err
				return true
			}
			sizes[n] = m
			n++
		}
		return true
	})
	if n > 0 {
		return n, nil // an error after frames is seen again on the next call
	}
	if err == nil {
		err = rerr
	}
	return 0, t.opError("read", err)
}

// Write writes each frame with one write syscall.
func (t *linuxTAP) Write(bufs [][]byte, offset int) (int, error) {
	var (
		n    int
		werr error
	)
	err := t.rc.Write(func(fd uintptr) bool {
		for n < len(bufs) {
			_, err := rawio.Write(int(fd), bufs[n][offset:])
			if err == unix.EAGAIN {
				return false
			}
			if err != nil {
				werr = err
				return true
			}
			n++
		}
		return true
	})
	if err == nil {
		err = werr
	}
	if err != nil {
		return n, t.opError("write", err)
	}
	return n, nil
}

// opError wraps err; errors after Close wrap os.ErrClosed.
func (t *linuxTAP) opError(op string, err error) error {
	if errors.Is(err, os.ErrClosed) {
		return fmt.Errorf("tap: %s %s: %w", op, t.name, os.ErrClosed)
	}
	return fmt.Errorf("tap: %s %s: %w", op, t.name, err)
}

// Close closes the file descriptor, which removes the (non-persistent)
// interface and unblocks pending calls.
func (t *linuxTAP) Close() error {
	t.closeOnce.Do(func() {
		if err := t.file.Close(); err != nil {
			t.closeErr = errorf("close %s: %w", t.name, err)
		}
	})
	return t.closeErr
}
