package relay

import (
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// rawConn is a net.Conn over a descriptor that is not one of net's types
// (as a VSOCK connection is not): dupSocket must ask its type.
type rawConn struct {
	net.Conn // nil: only SyscallConn is used
	f        *os.File
}

func (c rawConn) SyscallConn() (syscall.RawConn, error) { return c.f.SyscallConn() }

// TestDupSocket: streams of every kind are duplicated non-blocking (a
// blocking descriptor would stall a loop), anything else is left to the
// goroutine relay, including a unix socket of another type and a
// connection of another type whose socket is not a stream.
func TestDupSocket(t *testing.T) {
	a, b := unixPair(t)
	defer b.Close()
	fd, ok := dupSocket(a)
	if !ok {
		t.Fatal("unix stream connection not duplicated")
	}
	unix.Close(fd)

	for _, typ := range []int{unix.SOCK_STREAM, unix.SOCK_SEQPACKET} {
		fds, err := unix.Socketpair(unix.AF_UNIX, typ|unix.SOCK_CLOEXEC, 0) // blocking
		if err != nil {
			t.Fatal(err)
		}
		f := os.NewFile(uintptr(fds[0]), "socket")
		defer f.Close()
		defer unix.Close(fds[1])
		fd, ok := dupSocket(rawConn{f: f})
		if ok != (typ == unix.SOCK_STREAM) {
			t.Fatalf("socket type %d: duplicated %v", typ, ok)
		}
		if !ok {
			continue
		}
		fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
		if err != nil || fl&unix.O_NONBLOCK == 0 {
			t.Errorf("duplicate of a blocking stream is blocking (flags %#x, %v)", fl, err)
		}
		unix.Close(fd)
	}

	dir := t.TempDir()
	for _, network := range []string{"unixpacket", "unixgram"} {
		path := filepath.Join(dir, network)
		var c net.Conn
		if network == "unixgram" {
			pc, err := net.ListenUnixgram(network, &net.UnixAddr{Name: path, Net: network})
			if err != nil {
				t.Fatal(err)
			}
			c = pc
		} else {
			ln, err := net.ListenUnix(network, &net.UnixAddr{Name: path, Net: network})
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			if c, err = net.Dial(network, path); err != nil {
				t.Fatal(err)
			}
		}
		defer c.Close()
		if fd, ok := dupSocket(c); ok {
			unix.Close(fd)
			t.Errorf("%s connection duplicated as a stream", network)
		}
	}
}
