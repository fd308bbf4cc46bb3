// Package sandbox confines the app that quench-enclave starts (-app-cmd) so
// that the enclave's egress policy holds for it: a seccomp filter refuses
// the system calls that would open a way out of the enclave besides the
// TAP device, whose frames the policy's firewall checks.
//
// An enclave's other way out is VSOCK itself: any program, without
// privilege, can open an AF_VSOCK socket to the parent (CID 3) and speak to
// quench-host (or any other service there) directly: its own tunnel to the
// host's NAT, past the enclave's policy. So the filter refuses, with EPERM:
//
//   - socket(AF_VSOCK, ...): a program's own VSOCK connections;
//   - socket(AF_PACKET or AF_XDP, ...) and socket(AF_INET or AF_INET6,
//     SOCK_RAW or SOCK_PACKET, ...): frames and packets built by hand,
//     which can ride on any flow the firewall has open (a flow is a
//     5-tuple, not a socket);
//   - io_uring_setup: io_uring opens sockets (IORING_OP_SOCKET) without the
//     socket system call the filter checks; programs that use it fall back
//     to ordinary calls when it is refused (libuv, liburing users), as under
//     Docker's default seccomp profile;
//   - pidfd_getfd: taking a descriptor, such as quench-enclave's VSOCK
//     stream, out of another process.
//
// Everything else is allowed. The filter compares only the low 32 bits of
// arguments (the kernel reads socket's int arguments from them, whatever
// the upper bits), refuses every system call of another ABI than the
// process's own (i386 through int 0x80, x32), and is inherited by every
// process the app starts. It is assembled here on golang.org/x/net/bpf
// rather than with a seccomp library: github.com/elastic/go-seccomp-bpf lets
// system calls of other ABIs through under a default-allow policy and
// compares arguments on all 64 bits, both ways around such a filter.
//
// An app that runs as root can still reach into quench-enclave (ptrace,
// /proc/PID/mem) and use its sockets: run the app as another user
// (quench-enclave -app-user) for the policy to hold against it.
package sandbox

import (
	"errors"
	"runtime"
)

// Arg is the argument after which quench-enclave, run again as
// "quench-enclave Arg PATH ARGV...", installs the filter and executes PATH
// with ARGV (Main). Go cannot run code between fork and exec, so the app is
// started through this step.
const Arg = "__quench_sandbox_exec"

// ErrUnsupported: the machine's architecture has no filter here.
var ErrUnsupported = errors.New("sandbox: no seccomp filter for " + runtime.GOOS + "/" + runtime.GOARCH)
