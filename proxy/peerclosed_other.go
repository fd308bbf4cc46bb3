//go:build !linux

package proxy

import "net"

// peerClosed reports false: only Linux tells (TCP_INFO).
func peerClosed(net.Conn) bool { return false }
