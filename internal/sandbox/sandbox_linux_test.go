//go:build linux

package sandbox

import (
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"unsafe"

	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

const (
	denied  = unix.SECCOMP_RET_ERRNO | uint32(unix.EPERM)
	allowed = unix.SECCOMP_RET_ALLOW
)

// seccompData is struct seccomp_data as x/net/bpf's interpreter reads it.
// The kernel loads each 32-bit word in the machine's byte order, little
// endian here; the interpreter, made for packets, in network order: so
// each word is written big-endian where it lies (an argument's low word
// first, as on a little-endian machine).
func seccompData(arch, nr uint32, args ...uint64) []byte {
	b := make([]byte, 64)
	binary.BigEndian.PutUint32(b[0:], nr)
	binary.BigEndian.PutUint32(b[4:], arch)
	for i, a := range args {
		binary.BigEndian.PutUint32(b[16+8*i:], uint32(a))
		binary.BigEndian.PutUint32(b[20+8*i:], uint32(a>>32))
	}
	return b
}

// TestProgram runs the filter in x/net/bpf's interpreter on both ABIs.
func TestProgram(t *testing.T) {
	for name, a := range abis {
		vm, err := bpf.NewVM(program(a))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		for _, tc := range []struct {
			what string
			arch uint32
			nr   uint32
			args []uint64
			want uint32
		}{
			{"socket(AF_VSOCK, SOCK_STREAM)", a.auditArch, a.socket, []uint64{afVSock, unix.SOCK_STREAM}, denied},
			{"socket(AF_VSOCK) with upper bits set (the kernel reads an int)", a.auditArch, a.socket, []uint64{1<<32 | afVSock, unix.SOCK_STREAM}, denied},
			{"socket(AF_PACKET, SOCK_RAW)", a.auditArch, a.socket, []uint64{afPacket, sockRaw}, denied},
			{"socket(AF_PACKET, SOCK_DGRAM)", a.auditArch, a.socket, []uint64{afPacket, unix.SOCK_DGRAM}, denied},
			{"socket(AF_XDP, SOCK_RAW)", a.auditArch, a.socket, []uint64{afXDP, sockRaw}, denied},
			{"socket(AF_INET, SOCK_RAW|SOCK_CLOEXEC)", a.auditArch, a.socket, []uint64{afInet, sockRaw | unix.SOCK_CLOEXEC}, denied},
			{"socket(AF_INET6, SOCK_RAW|SOCK_NONBLOCK) with upper bits", a.auditArch, a.socket, []uint64{afInet6, 1<<40 | sockRaw | unix.SOCK_NONBLOCK}, denied},
			{"socket(AF_INET, SOCK_PACKET)", a.auditArch, a.socket, []uint64{afInet, sockPacket}, denied},
			{"socket(AF_INET, SOCK_STREAM|SOCK_CLOEXEC)", a.auditArch, a.socket, []uint64{afInet, unix.SOCK_STREAM | unix.SOCK_CLOEXEC}, allowed},
			{"socket(AF_INET6, SOCK_DGRAM)", a.auditArch, a.socket, []uint64{afInet6, unix.SOCK_DGRAM}, allowed},
			{"socket(AF_INET, SOCK_DGRAM, IPPROTO_ICMP) (ping socket)", a.auditArch, a.socket, []uint64{afInet, unix.SOCK_DGRAM, unix.IPPROTO_ICMP}, allowed},
			{"socket(AF_UNIX, SOCK_STREAM)", a.auditArch, a.socket, []uint64{unix.AF_UNIX, unix.SOCK_STREAM}, allowed},
			{"socket(AF_NETLINK, SOCK_RAW)", a.auditArch, a.socket, []uint64{unix.AF_NETLINK, sockRaw}, allowed},
			{"io_uring_setup", a.auditArch, a.ioURingSetup, []uint64{8, 0}, denied},
			{"pidfd_getfd", a.auditArch, a.getFD, []uint64{3, 4, 0}, denied},
			{"another system call (nr 0)", a.auditArch, 0, nil, allowed},
			{"another ABI (i386) read", unix.AUDIT_ARCH_I386, 3, nil, denied},
			{"another ABI (i386) socket(AF_INET, SOCK_STREAM)", unix.AUDIT_ARCH_I386, 359, []uint64{afInet, unix.SOCK_STREAM}, denied},
		} {
			got, err := vm.Run(seccompData(tc.arch, tc.nr, tc.args...))
			if err != nil {
				t.Fatalf("%s: %s: %v", name, tc.what, err)
			}
			if uint32(got) != tc.want {
				t.Errorf("%s: %s: %#x, want %#x", name, tc.what, got, tc.want)
			}
		}
		if a.x32 {
			got, _ := vm.Run(seccompData(a.auditArch, x32Bit|a.socket, afInet, unix.SOCK_STREAM))
			if uint32(got) != denied {
				t.Errorf("%s: x32 socket: %#x, want denied", name, got)
			}
		}
	}
}

// TestMain lets the test binary act as a sandboxed process for
// TestInstall.
func TestMain(m *testing.M) {
	switch os.Getenv("QUENCH_SANDBOX_CHILD") {
	case "1":
		os.Exit(child())
	case "tsync":
		os.Exit(tsyncChild())
	}
	os.Exit(m.Run())
}

// child installs the filter and reports each socket's errno, one line
// each: "NAME ERRNO" (0 for success).
func child() int {
	if err := Install(); err != nil {
		fmt.Println("install", err)
		return 1
	}
	try := func(name string, domain, typ uintptr) {
		fd, _, errno := unix.RawSyscall(unix.SYS_SOCKET, domain, typ, 0)
		if errno == 0 {
			unix.Close(int(fd))
		}
		fmt.Println(name, int(errno))
	}
	try("vsock", afVSock, unix.SOCK_STREAM)
	try("vsock-upper", 1<<32|afVSock, unix.SOCK_STREAM)
	try("packet", afPacket, sockRaw)
	try("xdp", afXDP, sockRaw)
	try("raw", afInet, sockRaw|unix.SOCK_CLOEXEC)
	try("tcp", afInet, unix.SOCK_STREAM|unix.SOCK_CLOEXEC)
	try("udp6", afInet6, unix.SOCK_DGRAM)
	try("unix", unix.AF_UNIX, unix.SOCK_STREAM)
	_, _, errno := unix.RawSyscall(unix.SYS_IO_URING_SETUP, 8, 0, 0)
	fmt.Println("io_uring", int(errno))
	// The filter is inherited: a child of the sandboxed process is
	// refused too.
	out, _ := exec.Command("python3", "-c", "import socket\ntry:\n socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM); print('grandchild-vsock 0')\nexcept OSError as e:\n print('grandchild-vsock', e.errno)").Output()
	fmt.Print(string(out))
	return 0
}

// TestInstall checks the filter in the kernel, in a child process.
func TestInstall(t *testing.T) {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "QUENCH_SANDBOX_CHILD=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v: %s", err, out)
	}
	got := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if k, v, ok := strings.Cut(line, " "); ok {
			got[k] = v
		}
	}
	eperm := fmt.Sprint(int(unix.EPERM))
	for _, k := range []string{"vsock", "vsock-upper", "packet", "xdp", "raw", "io_uring"} {
		if got[k] != eperm {
			t.Errorf("%s: errno %q, want EPERM (%s)", k, got[k], eperm)
		}
	}
	for _, k := range []string{"tcp", "udp6", "unix"} {
		if got[k] != "0" {
			t.Errorf("%s: errno %q, want success", k, got[k])
		}
	}
	if _, err := exec.LookPath("python3"); err == nil && got["grandchild-vsock"] != eperm {
		t.Errorf("AF_VSOCK in a process the sandboxed one started: errno %q, want EPERM", got["grandchild-vsock"])
	}
	t.Logf("child: %s", out)
}

// tsyncChild gives one thread a seccomp filter of its own (as a library
// might), so that no filter can be synchronised to every thread, then
// reports Install's result and the errno of socket(AF_VSOCK).
func tsyncChild() int {
	ready := make(chan error)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread keeps its filter and stays
		allow := []bpf.Instruction{bpf.RetConstant{Val: allowed}}
		raw, err := bpf.Assemble(allow)
		if err == nil {
			err = unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
		}
		if err == nil {
			prog := unix.SockFprog{Len: uint16(len(raw)), Filter: (*unix.SockFilter)(unsafe.Pointer(&raw[0]))}
			_, _, errno := unix.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER, 0, uintptr(unsafe.Pointer(&prog)))
			if errno != 0 {
				err = errno
			}
		}
		ready <- err
		select {}
	}()
	if err := <-ready; err != nil {
		fmt.Println("setup", err)
		return 1
	}
	runtime.LockOSThread()
	fmt.Println("install", Install() == nil)
	_, _, errno := unix.RawSyscall(unix.SYS_SOCKET, afVSock, unix.SOCK_STREAM, 0)
	fmt.Println("vsock", int(errno))
	return 0
}

// TestInstallTSYNCFailure: when the filter cannot be put on every thread
// (the kernel then installs it on none and returns the thread's ID rather
// than an error), Install fails rather than let the app start without it.
func TestInstallTSYNCFailure(t *testing.T) {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "QUENCH_SANDBOX_CHILD=tsync")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v: %s", err, out)
	}
	if strings.Contains(string(out), "install true") && !strings.Contains(string(out), fmt.Sprintf("vsock %d\n", unix.EPERM)) {
		t.Errorf("Install reported success but the filter is not in place:\n%s", out)
	}
	t.Logf("child: %s", out)
}
