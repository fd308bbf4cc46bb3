//go:build !linux

package relay

import "syscall"

// newWaiter returns nil: outside Linux a copy loop holds its buffer while
// blocked in Read.
func newWaiter(syscall.RawConn) func() error { return nil }
