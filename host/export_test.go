package host

import (
	"net"

	"github.com/quenchnet/quench/internal/ethlink"
	"time"
)

// SetListenPublished makes published TCP ports listen through f until the
// returned function restores net.Listen (tests: listener failures).
func SetListenPublished(f func(network, addr string) (net.Listener, error)) (restore func()) {
	listenPublished = f
	return func() { listenPublished = net.Listen }
}

// SetDHCPLeaseExpiry makes confirmed DHCP leases expire d after their last
// REQUEST until the returned function restores the default.
func SetDHCPLeaseExpiry(d time.Duration) (restore func()) {
	old := dhcpLeaseExpiry.Swap(int64(d))
	return func() { dhcpLeaseExpiry.Store(old) }
}

// StackTCPConnected is the host stack's TCP endpoints in a connected state
// (established or closing), orphans included.
func (h *Host) StackTCPConnected() uint64 {
	return h.stack.Stats().TCP.CurrentConnected.Value()
}

// SetOrphanTimeout sets how long a closed NAT connection may keep unsent
// data until the returned function restores the default.
func SetOrphanTimeout(d time.Duration) (restore func()) {
	old := ethlink.SetOrphanTimeout(d)
	return func() { ethlink.SetOrphanTimeout(old) }
}
