//go:build !linux

// Package rawio reads and writes non-blocking descriptors with raw system
// calls on Linux; elsewhere Of returns nil, so callers use the connections'
// own methods.
package rawio

import (
	"errors"
	"syscall"
)

// Of returns nil: raw I/O is Linux-only.
func Of(any) syscall.RawConn { return nil }

// ReadRaw is not supported here (Of never returns a RawConn).
func ReadRaw(syscall.RawConn, []byte) (int, error) { return 0, errors.ErrUnsupported }

// WriteRaw is not supported here (Of never returns a RawConn).
func WriteRaw(syscall.RawConn, []byte) (int, error) { return 0, errors.ErrUnsupported }

// Cause returns err.
func Cause(_ string, err error) error { return err }
