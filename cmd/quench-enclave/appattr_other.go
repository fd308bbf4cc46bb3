//go:build !linux

package main

import (
	"os"
	"syscall"
)

// appSysProcAttr puts the app in its own process group, so that a Ctrl-C at
// a terminal reaches quench-enclave only (which drains, then passes the
// signal on).
func appSysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}

// signalApp sends sig to the app's process (only: process groups are
// signalled on Linux).
func signalApp(p *os.Process, sig os.Signal) {
	_ = p.Signal(sig)
}
