package host

import "net"

// SetListenPublished makes published TCP ports listen through f until the
// returned function restores net.Listen (tests: listener failures).
func SetListenPublished(f func(network, addr string) (net.Listener, error)) (restore func()) {
	listenPublished = f
	return func() { listenPublished = net.Listen }
}
