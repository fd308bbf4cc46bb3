package host_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quenchnet/quench/enclave"
	"github.com/quenchnet/quench/host"
	"github.com/quenchnet/quench/internal/testutil"
	"github.com/quenchnet/quench/tap"
	"github.com/quenchnet/quench/tap/taptest"
)

// TestNATUDPRefusesHostAddresses: with the host-loopback mapping turned off
// and no egress policy, an enclave's UDP datagrams to 0.0.0.0, to other
// 0/8 addresses, to the subnet's host-loopback address and to 127.0.0.1
// reach nothing on the host: the UDP NAT refuses them as TCP does
// (natTargetNet). Before, 0.0.0.0:PORT was dialled as is, and Linux
// connects that to the host's own 127.0.0.1.
func TestNATUDPRefusesHostAddresses(t *testing.T) {
	svc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Close()
	port := uint16(svc.LocalAddr().(*net.UDPAddr).Port)
	h, path := startHost(t, host.Config{DisableHostLoopback: true})
	c := connectRaw(t, path)
	src := netip.AddrPortFrom(netip.MustParseAddr("192.168.127.2"), 40000)
	dsts := []string{"192.168.127.254", "0.0.0.0", "0.0.0.1", "127.0.0.1", "192.168.127.255", "255.255.255.255", "224.0.0.1"}
	for i, dst := range dsts {
		src := netip.AddrPortFrom(src.Addr(), src.Port()+uint16(i))
		f := taptest.UDPv4Frame(host.DefaultGatewayMAC, enclaveMAC, src, netip.AddrPortFrom(netip.MustParseAddr(dst), port), []byte("to "+dst))
		if _, err := c.WriteFrames([][]byte{f}, 0); err != nil {
			t.Fatal(err)
		}
	}
	_ = svc.SetReadDeadline(time.Now().Add(2 * time.Second))
	b := make([]byte, 100)
	for {
		n, from, err := svc.ReadFrom(b)
		if err != nil {
			break // nothing arrived: what should happen
		}
		t.Errorf("host service on 127.0.0.1:%d received %q from %v although DisableHostLoopback is set", port, b[:n], from)
	}
	// gVisor drops some itself (127.0.0.1: a loopback destination from
	// outside); the NAT counts the rest.
	if got := h.Stats().UDPRefused; got < 4 {
		t.Errorf("UDPRefused = %d, want at least 4", got)
	}
}

// l4HoldEnclave stands in for an enclave's VSOCK port that accepts fast-path
// streams and holds them (reading and discarding) until the test ends.
func l4HoldEnclave(t *testing.T) func(ctx context.Context, port uint32) (net.Conn, error) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "vsock.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	testutil.ServeConnsWait(t, ln, func(c net.Conn) { _, _ = io.Copy(io.Discard, c) })
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		mu.Lock()
		for _, c := range conns {
			_ = c.Close()
		}
		mu.Unlock()
	})
	return func(ctx context.Context, port uint32) (net.Conn, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, "unix", path)
		if err == nil {
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
		return c, err
	}
}

// l4ClosedSoon reports whether the server closed or reset c within wait.
func l4ClosedSoon(c net.Conn, wait time.Duration) bool {
	_ = c.SetReadDeadline(time.Now().Add(wait))
	_, err := c.Read(make([]byte, 1))
	return err != nil && !errors.Is(err, os.ErrDeadlineExceeded)
}

// l4PortHost starts a host with cfg's limits, publishing one fast-path
// port to an enclave that holds every connection, with no first-byte
// timeout; it returns the host and the port's address.
func l4PortHost(t *testing.T, cfg host.Config) (*host.Host, string) {
	t.Helper()
	cfg.Publish = []host.Publish{fastPort(t, 5000)}
	cfg.DialEnclave = l4HoldEnclave(t)
	cfg.FirstByteTimeout = -1
	h, _ := startHost(t, cfg)
	return h, h.Published()[0].String()
}

// TestPublishedPortConnectionLimit: a published port serves at most
// MaxPortConns clients at once; the next ones are reset at once (and
// counted), and a slot freed is usable again. Before, every client was
// served, each holding two descriptors for up to the idle timeout.
func TestPublishedPortConnectionLimit(t *testing.T) {
	const limit = 3
	h, addr := l4PortHost(t, host.Config{MaxPortConns: limit})
	dial := func() net.Conn {
		c, err := net.DialTimeout("tcp", addr, 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	var served []net.Conn
	for range limit {
		served = append(served, dial())
	}
	waitFor(t, func() bool { return h.LimitStats().PortConns == limit })
	for i := range 5 {
		// The reset may come before connect returns (loopback).
		c, err := net.DialTimeout("tcp", addr, 2*time.Second)
		if err != nil {
			continue
		}
		if !l4ClosedSoon(c, 2*time.Second) {
			t.Errorf("client %d beyond the limit of %d was not reset", limit+i+1, limit)
		}
		c.Close()
	}
	for i, c := range served {
		if l4ClosedSoon(c, 10*time.Millisecond) {
			t.Errorf("served client %d was closed", i)
		}
	}
	if st := h.LimitStats(); st.PortConnsRefused != 5 || st.PortConns != limit {
		t.Errorf("LimitStats: %d connections, %d refused; want %d, 5", st.PortConns, st.PortConnsRefused, limit)
	}
	if got := h.Ports()[0].Refused; got != 5 {
		t.Errorf("PortStatus.Refused = %d, want 5", got)
	}
	// The control API reports the same.
	var cs host.ControlStatus
	newControl(t, h).do("GET", "/v1/status", nil, http.StatusOK, &cs)
	if cs.Limits.PortConns != limit || cs.Limits.PortConnsRefused != 5 || len(cs.Ports) != 1 || cs.Ports[0].Refused != 5 {
		t.Errorf("control status: limits %+v, ports %+v", cs.Limits, cs.Ports)
	}
	served[0].Close()
	waitFor(t, func() bool { return h.LimitStats().PortConns == limit-1 })
	if c := dial(); l4ClosedSoon(c, 300*time.Millisecond) {
		t.Error("a client was reset after a slot was freed")
	}
}

// TestPublishedPortConnectionLimitPerClient: with MaxPortConnsPerClient,
// one client address holds at most that many published-port connections;
// another address is still served. Without it, one source could take
// MaxPortConns alone.
func TestPublishedPortConnectionLimitPerClient(t *testing.T) {
	const perClient = 2
	h, addr := l4PortHost(t, host.Config{MaxPortConnsPerClient: perClient})
	dialFrom := func(src string) (net.Conn, error) {
		d := net.Dialer{Timeout: 2 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
		c, err := d.Dial("tcp", addr)
		if err == nil {
			t.Cleanup(func() { c.Close() })
		}
		return c, err
	}
	var served []net.Conn
	for range perClient {
		c, err := dialFrom("127.0.0.1")
		if err != nil {
			t.Fatal(err)
		}
		served = append(served, c)
	}
	waitFor(t, func() bool { return h.LimitStats().PortConns == perClient })
	if c, err := dialFrom("127.0.0.1"); err == nil && !l4ClosedSoon(c, 2*time.Second) {
		t.Errorf("connection %d from one client address was not reset (limit %d)", perClient+1, perClient)
	}
	other, err := dialFrom("127.0.0.2")
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return h.LimitStats().PortConns == perClient+1 })
	if l4ClosedSoon(other, 100*time.Millisecond) {
		t.Error("another client address was reset")
	}
	if st := h.LimitStats(); st.PortConnsRefused != 1 {
		t.Errorf("PortConnsRefused = %d, want 1", st.PortConnsRefused)
	}
	served[0].Close()
	waitFor(t, func() bool { return h.LimitStats().PortConns == perClient })
	if c, err := dialFrom("127.0.0.1"); err != nil || l4ClosedSoon(c, 300*time.Millisecond) {
		t.Errorf("the client was refused after one of its connections closed: %v", err)
	}
}

// TestPublishedPortFirstByteTimeout: a client that sends nothing is closed
// after FirstByteTimeout; one that sent a byte is not.
func TestPublishedPortFirstByteTimeout(t *testing.T) {
	h, _ := startHost(t, host.Config{
		Publish: []host.Publish{fastPort(t, 5000)}, DialEnclave: l4HoldEnclave(t),
		FirstByteTimeout: 300 * time.Millisecond,
	})
	addr := h.Published()[0].String()
	silent, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	talker, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer talker.Close()
	if _, err := talker.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if !l4ClosedSoon(silent, 5*time.Second) {
		t.Error("a client that sent nothing was not closed after FirstByteTimeout")
	}
	if l4ClosedSoon(talker, 500*time.Millisecond) {
		t.Error("a client that sent a byte was closed")
	}
	if got := h.LimitStats().PortFirstByteTimeouts; got != 1 {
		t.Errorf("PortFirstByteTimeouts = %d, want 1", got)
	}
}

// TestPublishedPortFloodLeavesEnclaveServed: idle clients of a published
// port (here the ingress fast path) must not take every file descriptor of
// quench-host, or no enclave stream can be accepted any more (an enclave
// that reconnects has no network). quench-host runs with RLIMIT_NOFILE 96;
// its default MaxPortConns (a quarter of that) keeps the fast path's
// descriptors to half. Before, 100 clients exhausted them.
func TestPublishedPortFloodLeavesEnclaveServed(t *testing.T) {
	testutil.RequireCommand(t, "prlimit")
	bin := testutil.Binaries(t)
	dir := t.TempDir()

	// The enclave's VSOCK port 5000 (unix stand-in): accepts and holds.
	eln, err := net.Listen("unix", filepath.Join(dir, "vsock-16-5000.sock"))
	if err != nil {
		t.Fatal(err)
	}
	held := testutil.Hold(t, eln, nil)

	port := testutil.FreePort(t)
	sock := filepath.Join(dir, "host.sock")
	testutil.Start(t, "quench-host", exec.Command("prlimit", "--nofile=96:96", filepath.Join(bin, "quench-host"),
		"-listen", "unix://"+sock, "-vsock-dir", dir, "-enclave-cid", "16",
		"-publish-vsock", fmt.Sprintf("127.0.0.1:%d:5000", port)))
	testutil.WaitForFile(t, sock, 10*time.Second)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	testutil.WaitFor(t, 10*time.Second, "published port", func() error {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return err
	})

	enclaveWorks := func() bool {
		c := connectRaw(t, sock)
		defer c.Close()
		req := arpRequest(enclaveMAC, netip.MustParseAddr("192.168.127.2"), netip.MustParseAddr("192.168.127.1"))
		if _, err := c.WriteFrames([][]byte{req}, 0); err != nil {
			return false
		}
		_ = c.NetConn().SetReadDeadline(time.Now().Add(5 * time.Second))
		for {
			f, err := c.Next()
			if err != nil {
				return false
			}
			if len(f) >= 14 && f[12] == 0x08 && f[13] == 0x06 {
				return true
			}
		}
	}
	if !enclaveWorks() {
		t.Fatal("enclave stream not served before the flood")
	}

	// 100 idle clients; none sends anything.
	var clients []net.Conn
	defer func() {
		for _, c := range clients {
			c.Close()
		}
	}()
	for range 100 {
		c, err := net.DialTimeout("tcp", addr, 2*time.Second)
		if err != nil {
			break
		}
		clients = append(clients, c)
	}
	time.Sleep(time.Second)
	n := held.Load()
	t.Logf("%d idle clients connected; the enclave holds %d fast-path streams", len(clients), n)
	if n > 96/4 {
		t.Errorf("the enclave holds %d fast-path streams; want at most %d (MaxPortConns default)", n, 96/4)
	}
	if !enclaveWorks() {
		t.Errorf("after %d idle client connections to a published port, quench-host no longer serves enclave streams", len(clients))
	}
}

// TestPublishedUDPFlowsBounded: a published UDP port tracks at most
// MaxPortUDPFlows client sources (each a gVisor endpoint, a goroutine and
// a 64 KiB buffer, for 90 s); datagrams from further sources are dropped
// and counted. Before, one datagram per (spoofable) source address
// created that state without bound: 2000 sources, +2000 goroutines.
func TestPublishedUDPFlowsBounded(t *testing.T) {
	const clients, limit = 2000, 100
	h, _ := startHost(t, host.Config{MaxPortUDPFlows: limit, Publish: []host.Publish{{
		Network: "udp", Host: netip.MustParseAddrPort("127.0.0.1:0"), EnclavePort: 9,
	}}})
	dst := h.Published()[0].(*net.UDPAddr)
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	g0 := runtime.NumGoroutine()
	socks := make([]*net.UDPConn, 0, clients) // open together: distinct source ports
	for i := range clients {
		c, err := net.DialUDP("udp", nil, dst)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = c.Write([]byte{1})
		socks = append(socks, c)
		if i%50 == 49 {
			// Paced: a burst overflows the published socket's receive
			// buffer, and the kernel's drops are not the limit's.
			time.Sleep(5 * time.Millisecond)
		}
	}
	for _, c := range socks {
		_ = c.Close()
	}
	deadline := time.Now().Add(5 * time.Second)
	for h.LimitStats().PortUDPFlows+h.LimitStats().PortUDPRefused < clients*9/10 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	grew := runtime.NumGoroutine() - g0
	heap := int64(after.HeapInuse) - int64(before.HeapInuse)
	st := h.LimitStats()
	t.Logf("%d one-datagram clients: +%d goroutines, +%d MiB heap in use; %d flows, %d dropped", clients, grew, heap>>20, st.PortUDPFlows, st.PortUDPRefused)
	if grew > 256 || st.PortUDPFlows > limit {
		t.Errorf("published UDP port holds per-source state beyond MaxPortUDPFlows %d: %d flows, +%d goroutines", limit, st.PortUDPFlows, grew)
	}
	// Most of the datagrams beyond the limit are dropped by it (the kernel
	// may still drop a few under load before quench-host reads them).
	if st.PortUDPRefused < clients*6/10 || h.Ports()[0].Refused != st.PortUDPRefused {
		t.Errorf("dropped datagrams: LimitStats %d, PortStatus %d; want about %d", st.PortUDPRefused, h.Ports()[0].Refused, clients-limit)
	}
}

// TestNATUDPFlowsBounded: enclave UDP flows through the NAT (each a host
// socket for 90 s) are bounded per enclave address (and in total); a new
// flow's datagrams beyond that are dropped and counted. Before, 1000
// datagrams from 1000 source ports left 1000 host sockets open.
func TestNATUDPFlowsBounded(t *testing.T) {
	const flows, limit = 1000, 100
	sink, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	var got atomic.Int64
	go func() {
		b := make([]byte, 2048)
		for {
			if _, _, err := sink.ReadFrom(b); err != nil {
				return
			}
			got.Add(1)
		}
	}()
	port := uint16(sink.LocalAddr().(*net.UDPAddr).Port)
	h, path := startHost(t, host.Config{MaxNATUDPFlows: 2 * limit, MaxNATUDPFlowsPerEnclave: limit})
	src := netip.MustParseAddr("192.168.127.2")
	c := connectARP(t, path, enclaveMAC, src)
	go func() { _, _ = io.Copy(io.Discard, c.NetConn()) }()
	fd0 := openFDsL4(t)
	dst := netip.AddrPortFrom(netip.MustParseAddr("192.168.127.254"), port)
	frames := make([][]byte, 0, 100)
	for i := range flows {
		frames = append(frames, taptest.UDPv4Frame(host.DefaultGatewayMAC, enclaveMAC, netip.AddrPortFrom(src, uint16(20000+i)), dst, []byte("x")))
		if len(frames) == cap(frames) {
			if _, err := c.WriteFrames(frames, 0); err != nil {
				t.Fatal(err)
			}
			frames = frames[:0]
		}
	}
	waitFor(t, func() bool {
		st := h.LimitStats()
		return st.NATUDPFlows+st.NATUDPFlowsRefused >= flows && got.Load() >= limit
	})
	grew := openFDsL4(t) - fd0
	st := h.LimitStats()
	t.Logf("%d enclave UDP flows: +%d host file descriptors; %d tracked, %d refused, %d datagrams delivered", flows, grew, st.NATUDPFlows, st.NATUDPFlowsRefused, got.Load())
	if grew > limit+20 || st.NATUDPFlows != limit || st.NATUDPFlowsRefused != flows-limit {
		t.Errorf("NAT UDP: %d flows from one enclave: +%d host sockets, %d tracked, %d refused; want at most %d tracked", flows, grew, st.NATUDPFlows, st.NATUDPFlowsRefused, limit)
	}
}

func openFDsL4(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip("needs /proc/self/fd")
	}
	return len(ents)
}

// l4Enclave starts an enclave in userspace mode attached to the Host
// serving path and returns it once a dial to addr succeeds.
func l4Enclave(t *testing.T, path, addr string) *enclave.Enclave {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	e := l4StartEnclave(t, ctx, path)
	for {
		dctx, dcancel := context.WithTimeout(ctx, time.Second)
		c, err := e.Dial(dctx, "tcp", addr)
		dcancel()
		if err == nil {
			c.Close()
			return e
		}
		if ctx.Err() != nil {
			t.Fatalf("enclave cannot reach %s: %v", addr, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// l4Accepting listens on 127.0.0.1 and holds what it accepts until the
// test ends; the channel gets each accepted connection.
func l4Accepting(t *testing.T) (net.Listener, chan net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ch := make(chan net.Conn, 10000)
	testutil.Hold(t, ln, func(c net.Conn) { ch <- c })
	return ln, ch
}

// TestNATTCPConnectionsBounded: enclave TCP connections through the NAT
// (each a host socket until it closes) are bounded per enclave address
// (and in total); SYNs beyond that are reset and counted. Before, 1000
// idle connections held 1000 host sockets.
func TestNATTCPConnectionsBounded(t *testing.T) {
	const conns, limit = 300, 100
	ln, accepted := l4Accepting(t)
	addr := fmt.Sprintf("192.168.127.254:%d", ln.Addr().(*net.TCPAddr).Port)
	h, path := startHost(t, host.Config{MaxNATConnsPerEnclave: limit})
	e := l4Enclave(t, path, addr)
	(<-accepted).Close() // l4Enclave's
	waitFor(t, func() bool { return h.LimitStats().NATConns == 0 })
	fd0 := openFDsL4(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ok := 0
	for range conns {
		c, err := e.Dial(ctx, "tcp", addr)
		if err != nil {
			continue
		}
		ok++
		defer c.Close()
	}
	waitFor(t, func() bool { return len(accepted) >= limit })
	grew := openFDsL4(t) - fd0 - len(accepted) // minus this test's accepted sockets
	st := h.LimitStats()
	t.Logf("%d enclave connections: %d established, +%d host outbound sockets; %d held, %d refused", conns, ok, grew, st.NATConns, st.NATConnsRefused)
	if ok != limit || st.NATConns != limit || st.NATConnsRefused != conns-limit || grew > limit+20 {
		t.Errorf("NAT TCP: one enclave established %d of %d connections (+%d host sockets; %d held, %d refused); want %d", ok, conns, grew, st.NATConns, st.NATConnsRefused, limit)
	}
}

// TestNATTCPIdleTimeout: an enclave connection through the NAT that moves
// no byte for NATIdleTimeout is closed (both sides). Before, NAT relays
// had no idle timeout.
func TestNATTCPIdleTimeout(t *testing.T) {
	ln, accepted := l4Accepting(t)
	addr := fmt.Sprintf("192.168.127.254:%d", ln.Addr().(*net.TCPAddr).Port)
	h, path := startHost(t, host.Config{NATIdleTimeout: 300 * time.Millisecond})
	e := l4Enclave(t, path, addr)
	<-accepted
	c, err := e.Dial(context.Background(), "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	out := <-accepted
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if l4ClosedSoon(out, 100*time.Millisecond) {
		t.Fatal("closed at once")
	}
	if !l4ClosedSoon(out, 5*time.Second) {
		t.Error("an idle NAT connection was not closed after NATIdleTimeout")
	}
	waitFor(t, func() bool { return h.LimitStats().NATConns == 0 })
}

// l4WaitTCPFlags reads frames from c until a TCP segment to dport with all
// of flags arrives (true) or wait passes (false).
func l4WaitTCPFlags(c *tap.Conn, dport uint16, flags uint8, wait time.Duration) bool {
	_ = c.NetConn().SetReadDeadline(time.Now().Add(wait))
	defer func() { _ = c.NetConn().SetReadDeadline(time.Time{}) }()
	for {
		f, err := c.Next()
		if err != nil {
			return false
		}
		if len(f) < 14+20+20 || f[12] != 0x08 || f[13] != 0x00 || f[14+9] != 6 {
			continue
		}
		tcp := f[14+int(f[14]&0x0f)*4:]
		if uint16(tcp[2])<<8|uint16(tcp[3]) == dport && tcp[13]&flags == flags {
			return true
		}
	}
}

// TestNATDialSlotsSharedPerEnclave: one enclave holds at most
// MaxDialsPerEnclave (by default half) of the MaxInFlightDials slots. Here
// one enclave sends 64 bare SYNs to a destination that does not answer (a
// Dial that hangs until DialTimeout, standing in for a blackholed address);
// another enclave's connection to a working destination still gets its
// SYN-ACK. Before, the one pool was full and that SYN was dropped.
func TestNATDialSlotsSharedPerEnclave(t *testing.T) {
	svc, _ := l4Accepting(t)
	good := uint16(svc.Addr().(*net.TCPAddr).Port)
	const blackhole = 9 // the stand-in for an unanswering address
	var d net.Dialer
	cfg := host.Config{
		MaxInFlightDials: 64, DialTimeout: 5 * time.Second,
		Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
			if _, p, _ := net.SplitHostPort(addr); p == "9" {
				<-ctx.Done()
				return nil, ctx.Err()
			}
			return d.DialContext(ctx, network, addr)
		},
	}
	h, path := startHost(t, cfg)
	hostLo := netip.MustParseAddr("192.168.127.254")

	attackerMAC := net.HardwareAddr{0x02, 0, 0, 0, 0, 0xbb}
	attackerIP := netip.MustParseAddr("192.168.127.3")
	attacker := connectARP(t, path, attackerMAC, attackerIP)
	go func() { _, _ = io.Copy(io.Discard, attacker.NetConn()) }()
	var syns [][]byte
	for i := range 64 {
		syns = append(syns, taptest.TCPv4Frame(host.DefaultGatewayMAC, attackerMAC, taptest.TCPSegment{
			Src: netip.AddrPortFrom(attackerIP, uint16(30000+i)), Dst: netip.AddrPortFrom(hostLo, blackhole),
			Seq: 1000, Flags: taptest.TCPFlagSYN,
		}))
	}
	if _, err := attacker.WriteFrames(syns, 0); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)

	victimIP := netip.MustParseAddr("192.168.127.2")
	victim := connectARP(t, path, enclaveMAC, victimIP)
	syn := taptest.TCPv4Frame(host.DefaultGatewayMAC, enclaveMAC, taptest.TCPSegment{
		Src: netip.AddrPortFrom(victimIP, 41000), Dst: netip.AddrPortFrom(hostLo, good),
		Seq: 5000, Flags: taptest.TCPFlagSYN,
	})
	if _, err := victim.WriteFrames([][]byte{syn}, 0); err != nil {
		t.Fatal(err)
	}
	if !l4WaitTCPFlags(victim, 41000, taptest.TCPFlagSYN|taptest.TCPFlagACK, 3*time.Second) {
		t.Errorf("another enclave's %d SYNs to an unanswering address took every dial slot: this enclave's SYN to a working service got no SYN-ACK within 3s", len(syns))
	}
	if got := h.LimitStats().DialsDeferred; got != 64-32 {
		t.Errorf("DialsDeferred = %d, want %d (64 SYNs, default share 32)", got, 64-32)
	}
}

// TestNATDialTimeoutNoReset: a dial that times out (a blackholed target)
// drops the enclave's SYN, and its retransmission dials again, as a direct
// connection keeps trying until its own connect timeout; a refused dial is
// reset at once. Before, the timed-out dial was reset too, and the app
// read ECONNREFUSED after DialTimeout from a target that never refused.
func TestNATDialTimeoutNoReset(t *testing.T) {
	svc, _ := l4Accepting(t)
	svc.Close() // a closed port on the host's loopback: refused
	refused := uint16(svc.Addr().(*net.TCPAddr).Port)
	const blackhole = 9
	var d net.Dialer
	var blackholeDials atomic.Int32
	h, path := startHost(t, host.Config{
		DialTimeout: 200 * time.Millisecond,
		Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
			if _, p, _ := net.SplitHostPort(addr); p == "9" {
				blackholeDials.Add(1)
				<-ctx.Done()
				return nil, ctx.Err()
			}
			return d.DialContext(ctx, network, addr)
		},
	})
	hostLo := netip.MustParseAddr("192.168.127.254")
	ip := netip.MustParseAddr("192.168.127.2")
	c := connectARP(t, path, enclaveMAC, ip)
	syn := func(sport, dport uint16) {
		t.Helper()
		f := taptest.TCPv4Frame(host.DefaultGatewayMAC, enclaveMAC, taptest.TCPSegment{
			Src: netip.AddrPortFrom(ip, sport), Dst: netip.AddrPortFrom(hostLo, dport),
			Seq: 7000, Flags: taptest.TCPFlagSYN,
		})
		if _, err := c.WriteFrames([][]byte{f}, 0); err != nil {
			t.Fatal(err)
		}
	}

	syn(42000, blackhole)
	if l4WaitTCPFlags(c, 42000, taptest.TCPFlagRST, time.Second) {
		t.Fatal("a SYN whose dial timed out was answered with a reset")
	}
	if got := h.Stats().DialsFailed; got != 1 {
		t.Fatalf("DialsFailed = %d after one SYN, want 1 (the dial timed out)", got)
	}
	syn(42000, blackhole) // the enclave's retransmission
	deadline := time.Now().Add(5 * time.Second)
	for blackholeDials.Load() < 2 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := blackholeDials.Load(); n != 2 {
		t.Fatalf("%d dials for a SYN and its retransmission, want 2", n)
	}

	syn(42001, refused)
	if !l4WaitTCPFlags(c, 42001, taptest.TCPFlagRST, 3*time.Second) {
		t.Fatal("a SYN to a closed port got no reset")
	}
}

// TestCollectorLimits: the limits' metrics register on a pedantic registry
// and are collected, with a published port's refusal count.
func TestCollectorLimits(t *testing.T) {
	h, _ := startHost(t, host.Config{Publish: []host.Publish{{
		Network: "udp", Host: netip.MustParseAddrPort("127.0.0.1:0"), EnclavePort: 9,
	}}})
	got := gatherCollector(t, h)
	for name, n := range map[string]int{"quench_host_limit_active": 5, "quench_host_limit_refused_total": 7, "quench_host_port_refused_total": 1} {
		if got[name] != n {
			t.Errorf("%s: %d series, want %d", name, got[name], n)
		}
	}
	if c := h.Config(); c.MaxPortConns <= 0 || c.MaxNATConns <= 0 || c.MaxNATConnsPerEnclave <= 0 || c.MaxNATUDPFlows <= 0 ||
		c.MaxDialsPerEnclave != c.MaxInFlightDials/2 || c.MaxVSockProxyConns != max(host.FileLimit()/32, 1) || c.MaxVSockProxyConnsPerPeer != c.MaxVSockProxyConns/2 || c.FirstByteTimeout != host.DefaultFirstByteTimeout || c.NATIdleTimeout != host.DefaultNATIdleTimeout {
		t.Errorf("default limits not filled in: %+v", c)
	}
}

// l4BenchEcho echoes datagrams on pc until it is closed.
func l4BenchEcho(pc net.PacketConn) {
	b := make([]byte, 65536)
	for {
		n, a, err := pc.ReadFrom(b)
		if err != nil {
			return
		}
		_, _ = pc.WriteTo(b[:n], a)
	}
}

// l4StartEnclave starts an enclave in userspace mode attached to the Host
// serving path and closes it when the test ends.
func l4StartEnclave(tb testing.TB, ctx context.Context, path string) *enclave.Enclave {
	tb.Helper()
	e, err := enclave.New(enclave.Config{
		Network:  enclave.NetworkUserspace,
		DialHost: testutil.DialUnix(path),
	})
	if err != nil {
		tb.Fatal(err)
	}
	if err := e.Start(ctx); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = e.Close() })
	return e
}

// l4BenchSetup starts a Host and a userspace enclave attached to it.
func l4BenchSetup(b *testing.B, publish []host.Publish) (*host.Host, *enclave.Enclave) {
	h, path := startHost(b, host.Config{Publish: publish})
	return h, l4StartEnclave(b, context.Background(), path)
}

// l4RoundTrips measures 512-byte UDP round trips on c.
func l4RoundTrips(b *testing.B, c net.Conn) {
	msg := make([]byte, 512)
	buf := make([]byte, 2048)
	for { // until the path works
		_ = c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		_, _ = c.Write(msg)
		if _, err := c.Read(buf); err == nil {
			break
		}
	}
	_ = c.SetReadDeadline(time.Time{})
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if _, err := c.Write(msg); err != nil {
			b.Fatal(err)
		}
		if _, err := c.Read(buf); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkL4PublishedUDPRoundTrip: a client's datagrams through a
// published UDP port (servePublishedUDP) to an echo in the enclave.
func BenchmarkL4PublishedUDPRoundTrip(b *testing.B) {
	pub, _ := host.ParsePublish("127.0.0.1:0:7000/udp")
	h, e := l4BenchSetup(b, []host.Publish{pub})
	pc, err := e.ListenPacket("udp", ":7000")
	if err != nil {
		b.Fatal(err)
	}
	defer pc.Close()
	go l4BenchEcho(pc)
	c, err := net.Dial("udp", h.Published()[0].String())
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	l4RoundTrips(b, c)
}

// BenchmarkL4NATUDPRoundTrip: an enclave's datagrams through the UDP NAT
// (forwardUDP) to an echo on the host.
func BenchmarkL4NATUDPRoundTrip(b *testing.B) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer pc.Close()
	go l4BenchEcho(pc)
	_, e := l4BenchSetup(b, nil)
	c, err := e.Dial(context.Background(), "udp", fmt.Sprintf("192.168.127.254:%d", pc.LocalAddr().(*net.UDPAddr).Port))
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	l4RoundTrips(b, c)
}
