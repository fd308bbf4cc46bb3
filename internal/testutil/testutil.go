// Package testutil holds helpers for quench's own tests: root checks,
// network namespaces standing in for enclaves, building the binaries and
// peers, and supervised processes.
package testutil

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netns"
)

// RequireRoot skips the test unless it runs as root, saying how to run it.
func RequireRoot(tb testing.TB) {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skip("needs root (TAP devices and network namespaces): run `sudo go test ./...` or `make test` as root; CI runs it as root")
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		tb.Skipf("needs /dev/net/tun (modprobe tun): %v", err)
	}
}

// RequireCommand skips the test when name is not on PATH.
func RequireCommand(tb testing.TB, name string) {
	tb.Helper()
	if _, err := exec.LookPath(name); err != nil {
		tb.Skipf("needs %s on PATH (.ci/run installs it)", name)
	}
}

// NS is a network namespace created for one test.
type NS struct {
	Name   string
	Handle netns.NsHandle
}

// NewNS creates a uniquely named network namespace (with `ip netns add`, so
// `ip netns exec` can run programs in it) and removes it in t.Cleanup. It
// holds nothing but a loopback interface.
func NewNS(tb testing.TB) *NS {
	tb.Helper()
	RequireRoot(tb)
	RequireCommand(tb, "ip")
	var b [4]byte
	_, _ = rand.Read(b[:])
	name := "quench-test-" + hex.EncodeToString(b[:])
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		tb.Fatalf("ip netns add %s: %v: %s", name, err, out)
	}
	h, err := netns.GetFromName(name)
	if err != nil {
		_ = exec.Command("ip", "netns", "del", name).Run()
		tb.Fatalf("open netns %s: %v", name, err)
	}
	ns := &NS{Name: name, Handle: h}
	tb.Cleanup(func() {
		_ = h.Close()
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			tb.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	return ns
}

// Do runs f on an OS thread that has entered the namespace. Sockets f
// creates belong to the namespace and may be used from any goroutine
// afterwards. f must not start goroutines that create sockets (they would
// run elsewhere). The thread is discarded afterwards.
func (ns *NS) Do(f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// Never unlocked: the goroutine exits locked, so the runtime
		// destroys the thread rather than reuse it in the wrong namespace.
		if err := netns.Set(ns.Handle); err != nil {
			errc <- fmt.Errorf("enter netns %s: %w", ns.Name, err)
			return
		}
		errc <- f()
	}()
	return <-errc
}

// Command returns a command that runs name in the namespace.
func (ns *NS) Command(name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", ns.Name, name}, args...)...)
}

var (
	buildOnce sync.Once
	buildDir  string
	buildErr  error
	toolsOnce sync.Once
	toolsErr  error
)

// moduleRoot finds the repository root (the directory with go.mod).
func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", err
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", fmt.Errorf("not inside the quench module")
	}
	return filepath.Dir(mod), nil
}

// Binaries builds quench-host, quench-enclave and quench once per test
// process and returns the directory holding them.
func Binaries(tb testing.TB) string {
	tb.Helper()
	buildOnce.Do(func() {
		var root string
		root, buildErr = moduleRoot()
		if buildErr != nil {
			return
		}
		buildDir, buildErr = os.MkdirTemp("", "quench-bin-")
		if buildErr != nil {
			return
		}
		cmd := exec.Command("go", "build", "-o", buildDir+"/", "./cmd/...")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build ./cmd/...: %v: %s", err, out)
		}
	})
	if buildErr != nil {
		tb.Fatal(buildErr)
	}
	return buildDir
}

// Peers builds stock gvproxy and gvforwarder (gvisor-tap-vsock's cmd/vm,
// named gvforwarder) from the tools module into the Binaries directory.
func Peers(tb testing.TB) string {
	tb.Helper()
	dir := Binaries(tb)
	toolsOnce.Do(func() {
		root, err := moduleRoot()
		if err != nil {
			toolsErr = err
			return
		}
		for _, b := range []struct{ pkg, name string }{
			{"github.com/containers/gvisor-tap-vsock/cmd/gvproxy", "gvproxy"},
			{"github.com/containers/gvisor-tap-vsock/cmd/vm", "gvforwarder"},
		} {
			cmd := exec.Command("go", "build", "-o", filepath.Join(dir, b.name), b.pkg)
			cmd.Dir = filepath.Join(root, "scripts")
			if out, err := cmd.CombinedOutput(); err != nil {
				toolsErr = fmt.Errorf("build %s: %v: %s", b.name, err, out)
				return
			}
		}
	})
	if toolsErr != nil {
		tb.Fatal(toolsErr)
	}
	return dir
}

// Process is a supervised child process whose output is kept for the log.
type Process struct {
	Cmd  *exec.Cmd
	out  *SyncBuffer
	done chan struct{}
	err  error
}

// SyncBuffer is a bytes.Buffer safe for concurrent use: log output and
// child processes' output that tests read while it is written.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Start starts cmd, kills it in t.Cleanup, and logs its output when the
// test fails.
func Start(tb testing.TB, name string, cmd *exec.Cmd) *Process {
	tb.Helper()
	p := &Process{Cmd: cmd, out: &SyncBuffer{}, done: make(chan struct{})}
	cmd.Stdout = p.out
	cmd.Stderr = p.out
	if err := cmd.Start(); err != nil {
		tb.Fatalf("start %s: %v", name, err)
	}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	tb.Cleanup(func() {
		p.Kill()
		if tb.Failed() {
			tb.Logf("--- output of %s ---\n%s", name, p.out.String())
		}
	})
	return p
}

// Output returns what the process has printed so far.
func (p *Process) Output() string { return p.out.String() }

// Kill kills the process (SIGKILL) and waits for it.
func (p *Process) Kill() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.Cmd.Process.Kill()
	<-p.done
}

// Stop sends SIGTERM and waits up to timeout, then kills.
func (p *Process) Stop(timeout time.Duration) error {
	_ = p.Cmd.Process.Signal(os.Interrupt)
	select {
	case <-p.done:
		return p.err
	case <-time.After(timeout):
		p.Kill()
		return fmt.Errorf("did not stop within %v", timeout)
	}
}

// Done is closed when the process has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// WaitFor polls cond every 20ms until it returns nil or timeout passes, and
// then fails the test with cond's last error.
func WaitFor(tb testing.TB, timeout time.Duration, what string, cond func() error) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("%s: not within %v: %v", what, timeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// FreePort returns a port on 127.0.0.1 that is free for TCP (and UDP).
func FreePort(tb testing.TB) int {
	tb.Helper()
	return freePort(tb)
}

// FreeUDPPort returns a port on 127.0.0.1 that is free for UDP (and TCP).
func FreeUDPPort(tb testing.TB) int {
	tb.Helper()
	return freePort(tb)
}

var (
	portsMu    sync.Mutex
	portsGiven = map[int]bool{}
)

// freePort picks a port below the kernel's ephemeral range, free for both
// TCP and UDP on 127.0.0.1 a moment ago and not given out before in this
// process. A port the kernel handed out for ":0" and took back would soon
// be handed out again, to another socket of the same test (CI once saw
// quench-host fail to publish such a UDP port: "address already in use");
// the kernel never picks ports outside its ephemeral range for ":0", so
// only an explicit choice of another test process can collide here, and
// that is checked for by binding.
func freePort(tb testing.TB) int {
	tb.Helper()
	lo, hi := 20000, 32000
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		var elo, ehi int
		if _, err := fmt.Sscan(string(b), &elo, &ehi); err == nil && elo > 2048 {
			hi = elo
			lo = max(1024, elo-12000)
		}
	}
	portsMu.Lock()
	defer portsMu.Unlock()
	var buf [2]byte
	for range 1000 {
		_, _ = rand.Read(buf[:])
		port := lo + (int(buf[0])<<8|int(buf[1]))%(hi-lo)
		if portsGiven[port] || !portFree(port) {
			continue
		}
		portsGiven[port] = true
		return port
	}
	tb.Fatalf("no free port in %d-%d after 1000 tries", lo, hi)
	return 0
}

func portFree(port int) bool {
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return false
	}
	defer ln.Close()
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		return false
	}
	_ = pc.Close()
	return true
}

// HTTPGet fetches url with a short timeout and returns the body.
func HTTPGet(ctx context.Context, url string) (string, error) {
	return httpGet(ctx, url)
}

// WaitForFile waits until path exists.
func WaitForFile(tb testing.TB, path string, timeout time.Duration) {
	tb.Helper()
	WaitFor(tb, timeout, "file "+path, func() error {
		_, err := os.Stat(path)
		return err
	})
}

// Discard is an io.Writer for unwanted output.
var Discard io.Writer = io.Discard

// FailingListener is a listener whose first Accepts fail as the kernel's
// accept4 does when the process is out of file descriptors (or with another
// errno), before the wrapped listener's own Accepts run: for tests of accept
// loops that must ride such failures out.
type FailingListener struct {
	net.Listener
	errno syscall.Errno
	left  atomic.Int32
}

// FailAccepts wraps ln so that its next n Accepts fail with errno, wrapped
// as net's listeners wrap it (*net.OpError around *os.SyscallError).
func FailAccepts(ln net.Listener, errno syscall.Errno, n int) *FailingListener {
	l := &FailingListener{Listener: ln, errno: errno}
	l.left.Store(int32(n))
	return l
}

// Accept fails while failures are left, then accepts from the listener.
func (l *FailingListener) Accept() (net.Conn, error) {
	if l.left.Add(-1) >= 0 {
		return nil, &net.OpError{Op: "accept", Net: l.Addr().Network(), Addr: l.Addr(), Err: os.NewSyscallError("accept4", l.errno)}
	}
	return l.Listener.Accept()
}

// Left returns how many failures are still to come.
func (l *FailingListener) Left() int { return max(int(l.left.Load()), 0) }

// ServeConns runs handle on every connection ln accepts, each on its own
// goroutine, and closes the connection when handle returns. When the test
// ends, ln is closed and the accept loop waited for.
func ServeConns(tb testing.TB, ln net.Listener, handle func(net.Conn)) {
	tb.Helper()
	done := acceptLoop(ln, func(c net.Conn) {
		go func() {
			defer c.Close()
			handle(c)
		}()
	})
	tb.Cleanup(func() {
		_ = ln.Close()
		<-done
	})
}

// acceptLoop calls accepted with every connection ln accepts, on one
// goroutine, until Accept fails; then it closes done.
func acceptLoop(ln net.Listener, accepted func(net.Conn)) (done <-chan struct{}) {
	ch := make(chan struct{})
	go func() {
		defer close(ch)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted(c)
		}
	}()
	return ch
}

// Echo echoes every connection ln accepts (ServeConns). Each connection's
// reads wait for its writes (io.Copy on one connection), like the simplest
// echo servers.
func Echo(tb testing.TB, ln net.Listener) {
	tb.Helper()
	ServeConns(tb, ln, func(c net.Conn) { _, _ = io.Copy(c, c) })
}

// EchoRoundTrip writes msg to c while reading as many bytes back, as from
// an echo server, and checks they are msg: a transfer both ways at once.
// Set a deadline on c to bound it.
func EchoRoundTrip(c net.Conn, msg []byte) error {
	errc := make(chan error, 1)
	go func() {
		_, err := c.Write(msg)
		errc <- err
	}()
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		return fmt.Errorf("reading the echo: %w", err)
	}
	if err := <-errc; err != nil {
		return fmt.Errorf("writing: %w", err)
	}
	if !bytes.Equal(got, msg) {
		return fmt.Errorf("echoed bytes differ")
	}
	return nil
}

// ServeConnsWait is ServeConns that also counts the connections ln accepts
// and, when the test ends, closes those still open and waits for every
// handler to return (after closing ln and waiting for the accept loop).
func ServeConnsWait(tb testing.TB, ln net.Listener, handle func(net.Conn)) *atomic.Int64 {
	tb.Helper()
	var (
		n        atomic.Int64
		handlers sync.WaitGroup
		mu       sync.Mutex
		open     = map[net.Conn]struct{}{}
	)
	done := acceptLoop(ln, func(c net.Conn) {
		n.Add(1)
		mu.Lock()
		open[c] = struct{}{}
		mu.Unlock()
		handlers.Go(func() {
			defer func() {
				mu.Lock()
				delete(open, c)
				mu.Unlock()
				_ = c.Close()
			}()
			handle(c)
		})
	})
	tb.Cleanup(func() {
		_ = ln.Close()
		<-done
		mu.Lock()
		for c := range open {
			_ = c.Close()
		}
		mu.Unlock()
		handlers.Wait()
	})
	return &n
}

// Hold accepts every connection on ln and holds it open, neither reading
// nor writing, until the test ends, when ln and the held connections are
// closed (ServeConnsWait). accepted, if not nil, is called with each
// connection as it is accepted. It returns the count of connections
// accepted.
func Hold(tb testing.TB, ln net.Listener, accepted func(net.Conn)) *atomic.Int64 {
	tb.Helper()
	release := make(chan struct{})
	n := ServeConnsWait(tb, ln, func(c net.Conn) {
		if accepted != nil {
			accepted(c)
		}
		<-release
	})
	tb.Cleanup(func() { close(release) }) // runs before ServeConnsWait's
	return n
}

// DialUnix returns a dialer of the unix socket at path, in the shape of
// enclave.Config.DialHost: the VSOCK stand-in of the tests.
func DialUnix(path string) func(ctx context.Context) (net.Conn, error) {
	return func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", path)
	}
}

// StaleUnixSocket returns the path of a unix socket file in a temporary
// directory whose listener ended without removing it, as a crashed daemon
// leaves one: nothing accepts on it.
func StaleUnixSocket(tb testing.TB) string {
	tb.Helper()
	path := filepath.Join(tb.TempDir(), "stale.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		tb.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	_ = ln.Close()
	return path
}
