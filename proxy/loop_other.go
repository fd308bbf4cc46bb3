//go:build !linux

package proxy

import (
	"errors"
	"net"
)

// loopSet is Linux's epoll front end; elsewhere Serve uses goroutines.
type loopSet struct{}

func newLoopSet(*Proxy, int) (*loopSet, error) {
	return nil, errors.New("proxy: event loops need Linux")
}

func (*loopSet) take(net.Conn) bool { return false }
func (*loopSet) Close() error       { return nil }
func (*loopSet) drain() bool        { return true }
