package main

import (
	"os"
	"syscall"
)

// appSysProcAttr puts the app in its own process group, so that a Ctrl-C at
// a terminal reaches quench-enclave only (which drains, then passes the
// signal on), and has the kernel send it SIGTERM should quench-enclave die
// without doing so.
func appSysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
}

// signalApp sends sig to the app's process group (the app and whatever it
// started, such as the server an entrypoint script runs), falling back to
// the app's process alone should the group be gone.
func signalApp(p *os.Process, sig os.Signal) {
	if s, ok := sig.(syscall.Signal); ok {
		if err := syscall.Kill(-p.Pid, s); err == nil {
			return
		}
	}
	_ = p.Signal(sig)
}
