//go:build linux

package sandbox

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"syscall"
	"unsafe"

	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// Offsets in struct seccomp_data.
const (
	offNr   = 0
	offArch = 4
	offArg0 = 16 // low 32 bits on little-endian machines (all this supports)
	offArg1 = 24
)

// Values the filter tests (the kernel's ABI; the same on every Linux).
const (
	afInet     = 2
	afInet6    = 10
	afPacket   = 17
	afVSock    = 40
	afXDP      = 44
	sockRaw    = 3
	sockPacket = 10
	sockType   = 0xf // SOCK_TYPE_MASK: the type without SOCK_NONBLOCK, SOCK_CLOEXEC
	x32Bit     = 0x40000000
)

// abi is what the filter needs of the machine.
type abi struct {
	auditArch                   uint32
	x32                         bool // x86-64: refuse x32 system calls
	socket, ioURingSetup, getFD uint32
}

var abis = map[string]abi{
	"amd64": {auditArch: unix.AUDIT_ARCH_X86_64, x32: true, socket: 41, ioURingSetup: 425, getFD: 438},
	"arm64": {auditArch: unix.AUDIT_ARCH_AARCH64, socket: 198, ioURingSetup: 425, getFD: 438},
}

// Filter returns the filter's program for the machine.
func Filter() ([]bpf.RawInstruction, error) {
	a, ok := abis[runtime.GOARCH]
	if !ok {
		return nil, ErrUnsupported
	}
	return bpf.Assemble(program(a))
}

// program is the filter for a. Jumps are written with labels and resolved
// at the end.
func program(a abi) []bpf.Instruction {
	const (
		deny  = "deny"
		allow = "allow"
		sock  = "socket"
		inet  = "inet"
	)
	type step struct {
		label  string // this step's name, or ""
		ins    bpf.Instruction
		jt, jf string // for conditional jumps: where to go; "" is the next step
	}
	var s []step
	add := func(ins bpf.Instruction) { s = append(s, step{ins: ins}) }
	jump := func(cond bpf.JumpTest, val uint32, jt, jf string) {
		s = append(s, step{ins: bpf.JumpIf{Cond: cond, Val: val}, jt: jt, jf: jf})
	}
	add(bpf.LoadAbsolute{Off: offArch, Size: 4})
	jump(bpf.JumpNotEqual, a.auditArch, deny, "")
	add(bpf.LoadAbsolute{Off: offNr, Size: 4})
	if a.x32 {
		jump(bpf.JumpGreaterOrEqual, x32Bit, deny, "")
	}
	jump(bpf.JumpEqual, a.ioURingSetup, deny, "")
	jump(bpf.JumpEqual, a.getFD, deny, "")
	jump(bpf.JumpEqual, a.socket, sock, allow)
	s = append(s, step{label: sock, ins: bpf.LoadAbsolute{Off: offArg0, Size: 4}})
	jump(bpf.JumpEqual, afVSock, deny, "")
	jump(bpf.JumpEqual, afPacket, deny, "")
	jump(bpf.JumpEqual, afXDP, deny, "")
	jump(bpf.JumpEqual, afInet, inet, "")
	jump(bpf.JumpEqual, afInet6, inet, allow)
	s = append(s, step{label: inet, ins: bpf.LoadAbsolute{Off: offArg1, Size: 4}})
	add(bpf.ALUOpConstant{Op: bpf.ALUOpAnd, Val: sockType})
	jump(bpf.JumpEqual, sockRaw, deny, "")
	jump(bpf.JumpEqual, sockPacket, deny, allow)
	s = append(s, step{label: allow, ins: bpf.RetConstant{Val: unix.SECCOMP_RET_ALLOW}})
	s = append(s, step{label: deny, ins: bpf.RetConstant{Val: unix.SECCOMP_RET_ERRNO | uint32(unix.EPERM)}})

	at := map[string]int{}
	for i, st := range s {
		if st.label != "" {
			at[st.label] = i
		}
	}
	skip := func(from int, to string) uint8 {
		if to == "" {
			return 0
		}
		n, ok := at[to]
		if !ok || n-from-1 > 255 {
			panic("sandbox: jump to " + to + " out of reach") // the program outgrew 8-bit jumps
		}
		return uint8(n - from - 1)
	}
	out := make([]bpf.Instruction, len(s))
	for i, st := range s {
		if j, ok := st.ins.(bpf.JumpIf); ok {
			j.SkipTrue, j.SkipFalse = skip(i, st.jt), skip(i, st.jf)
			st.ins = j
		}
		out[i] = st.ins
	}
	return out
}

// Install sets no_new_privs and installs the filter on every thread of the
// process; it stays for the process's life and is inherited by what it
// starts.
func Install() error {
	raw, err := Filter()
	if err != nil {
		return err
	}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("sandbox: no_new_privs: %w", err)
	}
	prog := unix.SockFprog{Len: uint16(len(raw)), Filter: (*unix.SockFilter)(unsafe.Pointer(&raw[0]))}
	tid, _, errno := unix.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER, unix.SECCOMP_FILTER_FLAG_TSYNC, uintptr(unsafe.Pointer(&prog)))
	runtime.KeepAlive(raw)
	if errno != 0 {
		return fmt.Errorf("sandbox: seccomp: %w", errno)
	}
	if tid != 0 {
		// With TSYNC, a thread that cannot take the filter is reported
		// by its ID, not an errno, and no thread has the filter.
		return fmt.Errorf("sandbox: seccomp: thread %d cannot take the filter", tid)
	}
	return nil
}

// Main is quench-enclave's "Arg USER PATH ARGV..." step: it installs the
// filter, becomes USER ("UID:GID", supplementary groups dropped; "-" to
// stay who it is) and executes PATH with ARGV and the environment, with no
// descriptors but standard input, output and error. The
// user is changed here rather than by the parent, so that this binary need
// not be executable by USER. It returns only on failure, with the exit code
// to use (127, as a shell for a command it could not run).
func Main(args []string) int {
	if len(args) < 3 {
		fmt.Fprintln(os.Stderr, "quench-enclave: sandbox: want USER PATH ARGV0 [ARGS...]")
		return 127
	}
	fail := func(err error) int {
		fmt.Fprintf(os.Stderr, "quench-enclave: start app %s: %v\n", args[1], err)
		return 127
	}
	var uid, gid int
	if args[0] != "-" {
		if _, err := fmt.Sscanf(args[0], "%d:%d", &uid, &gid); err != nil {
			return fail(fmt.Errorf("sandbox: user %q: %w", args[0], err))
		}
	}
	if err := Install(); err != nil {
		return fail(err)
	}
	if args[0] != "-" {
		// The kernel clears the parent-death signal quench-enclave gave
		// this process (SysProcAttr.Pdeathsig) when it changes user: keep
		// it, as Go's exec does after Credential.
		var sig int32
		if err := unix.Prctl(unix.PR_GET_PDEATHSIG, uintptr(unsafe.Pointer(&sig)), 0, 0, 0); err != nil {
			return fail(fmt.Errorf("parent-death signal: %w", err))
		}
		ppid := os.Getppid()
		// Go changes every thread's IDs (since 1.16).
		if err := syscall.Setgroups(nil); err != nil {
			return fail(fmt.Errorf("setgroups: %w", err))
		}
		if err := syscall.Setgid(gid); err != nil {
			return fail(fmt.Errorf("setgid %d: %w", gid, err))
		}
		if err := syscall.Setuid(uid); err != nil {
			return fail(fmt.Errorf("setuid %d: %w", uid, err))
		}
		if sig != 0 {
			if err := unix.Prctl(unix.PR_SET_PDEATHSIG, uintptr(sig), 0, 0, 0); err != nil {
				return fail(fmt.Errorf("parent-death signal: %w", err))
			}
			if os.Getppid() != ppid {
				return fail(errors.New("quench-enclave exited"))
			}
		}
	}
	if err := closeOnExec(); err != nil {
		return fail(err)
	}
	return fail(unix.Exec(args[1], args[2:], os.Environ()))
}

// closeOnExec marks every descriptor above standard error close-on-exec,
// so that the app gets none that quench-enclave inherited or left open
// (a VSOCK connection among them would be a way to the host).
func closeOnExec() error {
	if err := unix.CloseRange(3, ^uint(0), unix.CLOSE_RANGE_CLOEXEC); err == nil {
		return nil
	}
	// Before Linux 5.11.
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return fmt.Errorf("sandbox: descriptors: %w", err)
	}
	for _, e := range ents {
		if fd, err := strconv.Atoi(e.Name()); err == nil && fd > 2 {
			unix.CloseOnExec(fd)
		}
	}
	return nil
}
