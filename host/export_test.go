package host

import (
	"net"
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
