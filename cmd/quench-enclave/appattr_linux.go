package main

import "syscall"

// appSysProcAttr puts the app in its own process group, so that a Ctrl-C at
// a terminal reaches quench-enclave only (which drains, then passes the
// signal on), and has the kernel send it SIGTERM should quench-enclave die
// without doing so.
func appSysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
}
