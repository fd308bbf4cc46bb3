package host_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/quenchnet/quench/enclave"
	"github.com/quenchnet/quench/host"
	"github.com/quenchnet/quench/internal/testutil"
)

// fakeEnclave listens like an enclave's VSOCK ports (unix sockets here)
// behind enclave.ListenIngress, and serves a line protocol: it first
// writes "you are ADDR\n", then echoes lines until EOF, then writes "bye"
// and half-closes.
type fakeEnclave struct {
	dir string
	mu  sync.Mutex
	lns []*enclave.IngressListener
}

func newFakeEnclave(t *testing.T, ports ...uint32) *fakeEnclave {
	t.Helper()
	e := &fakeEnclave{dir: t.TempDir()}
	for _, p := range ports {
		ln, err := net.Listen("unix", e.path(p))
		if err != nil {
			t.Fatal(err)
		}
		il := enclave.ListenIngress(ln, enclave.IngressConfig{})
		e.lns = append(e.lns, il)
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				c, err := il.Accept()
				if err != nil {
					return
				}
				wg.Add(1)
				go func() { defer wg.Done(); serveLines(c) }()
			}
		}()
		t.Cleanup(func() { _ = il.Close(); wg.Wait() })
	}
	return e
}

func (e *fakeEnclave) path(port uint32) string {
	return filepath.Join(e.dir, fmt.Sprintf("vsock-16-%d.sock", port))
}

func (e *fakeEnclave) dial(ctx context.Context, port uint32) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, "unix", e.path(port))
}

func serveLines(c net.Conn) {
	defer c.Close()
	fmt.Fprintf(c, "you are %s\n", c.RemoteAddr())
	r := bufio.NewReader(c)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			break
		}
		if _, err := io.WriteString(c, line); err != nil {
			return
		}
	}
	_, _ = io.WriteString(c, "bye")
	_ = c.(interface{ CloseWrite() error }).CloseWrite()
	_, _ = io.Copy(io.Discard, c)
}

func fastPort(t *testing.T, vsockPort uint32) host.Publish {
	t.Helper()
	p, err := host.ParsePublishVSock(fmt.Sprintf("127.0.0.1:0:%d", vsockPort))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// roundTrip runs the line protocol once on addr and checks the client
// address the enclave saw.
func roundTrip(addr string) error {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(c)
	hello, err := r.ReadString('\n')
	if err != nil {
		return fmt.Errorf("hello: %w", err)
	}
	if want := "you are " + c.LocalAddr().String() + "\n"; hello != want {
		return fmt.Errorf("enclave said %q, want %q", hello, want)
	}
	if _, err := io.WriteString(c, "ping\n"); err != nil {
		return err
	}
	if line, err := r.ReadString('\n'); err != nil || line != "ping\n" {
		return fmt.Errorf("echo %q, %v", line, err)
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		return err
	}
	// Half-close reached the enclave, which answers and closes.
	rest, err := io.ReadAll(r)
	if err != nil || string(rest) != "bye" {
		return fmt.Errorf("after half-close: %q, %v", rest, err)
	}
	return nil
}

func TestIngressFastPath(t *testing.T) {
	fe := newFakeEnclave(t, 5000)
	h, _ := startHost(t, host.Config{Publish: []host.Publish{fastPort(t, 5000)}, DialEnclave: fe.dial})
	addr := h.Published()[0].String()
	for range 3 {
		if err := roundTrip(addr); err != nil {
			t.Fatal(err)
		}
	}
	ps := h.Ports()
	if len(ps) != 1 || ps[0].Accepted != 3 || ps[0].Failed != 0 || ps[0].BytesIn != int64(3*len("ping\n")) || ps[0].BytesOut == 0 {
		t.Errorf("port status %+v", ps)
	}
}

func TestIngressEnclaveDown(t *testing.T) {
	fe := newFakeEnclave(t) // nothing listens
	h, _ := startHost(t, host.Config{Publish: []host.Publish{fastPort(t, 5000)}, DialEnclave: fe.dial})
	expectReset(t, h.Published()[0].String())
	waitFor(t, func() bool { return h.Ports()[0].Failed == 1 })
}

// expectReset dials addr, a published port whose enclave side refuses,
// and expects the client to be reset: its read fails with ECONNRESET, or
// its connect already did (the reset came before connect returned).
func expectReset(t *testing.T, addr string) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if errors.Is(err, syscall.ECONNRESET) {
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("read with the enclave side refusing: %v, want ECONNRESET", err)
	}
}

// TestIngressDialWarning: a failed dial into the enclave closes the client
// and is a warning, at most one a second (the rest at debug level), which
// names the open-file limit when that is what ran out.
func TestIngressDialWarning(t *testing.T) {
	var buf testutil.SyncBuffer
	log := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	emfile := func(context.Context, uint32) (net.Conn, error) {
		return nil, &net.OpError{Op: "dial", Net: "unix", Err: os.NewSyscallError("socket", syscall.EMFILE)}
	}
	h, _ := startHost(t, host.Config{Publish: []host.Publish{fastPort(t, 5000)}, DialEnclave: emfile, Logger: log})
	for i := range 2 {
		expectReset(t, h.Published()[0].String())
		waitFor(t, func() bool { return h.Ports()[0].Failed == uint64(i+1) })
	}
	out := buf.String()
	var warns, debugs int
	for _, line := range strings.Split(out, "\n") {
		if !strings.Contains(line, "ingress: enclave unreachable") {
			continue
		}
		if !strings.Contains(line, "raise the open-file limit") {
			t.Errorf("no hint about the open-file limit: %s", line)
		}
		switch {
		case strings.Contains(line, "level=WARN"):
			warns++
		case strings.Contains(line, "level=DEBUG"):
			debugs++
		}
	}
	if warns != 1 || debugs != 1 {
		t.Fatalf("%d warnings and %d debug lines for two failed dials within a second, want 1 and 1:\n%s", warns, debugs, out)
	}
}

func TestIngressIdleTimeout(t *testing.T) {
	fe := newFakeEnclave(t, 5000)
	h, _ := startHost(t, host.Config{Publish: []host.Publish{fastPort(t, 5000)}, DialEnclave: fe.dial, IdleTimeout: 200 * time.Millisecond})
	c, err := net.Dial("tcp", h.Published()[0].String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	b, err := io.ReadAll(c) // hello, then closed by the idle timeout
	if err != nil || !strings.HasPrefix(string(b), "you are ") {
		t.Fatalf("read %q, %v", b, err)
	}
}

func TestPublishVSockErrors(t *testing.T) {
	for _, s := range []string{"", "5000", "127.0.0.1:80:0", "127.0.0.1:80:x", "1.2.3:80:5", "80:5000/udp", "127.0.0.1:99999:5"} {
		if _, err := host.ParsePublishVSock(s); err == nil {
			t.Errorf("ParsePublishVSock(%q) succeeded", s)
		}
	}
	p, err := host.ParsePublishVSock("8443:5000")
	if err != nil || p.Host != netip.MustParseAddrPort("0.0.0.0:8443") || p.VSockPort != 5000 || p.Network != "tcp" {
		t.Errorf("ParsePublishVSock(8443:5000) = %+v, %v", p, err)
	}
	if _, err := host.New(host.Config{Publish: []host.Publish{p}}); err == nil || !strings.Contains(err.Error(), "DialEnclave") {
		t.Errorf("New without DialEnclave: %v", err)
	}
}

// control is a client of the control API served by httptest.
type control struct {
	t   *testing.T
	url string
}

func newControl(t *testing.T, h *host.Host) *control {
	srv := httptest.NewServer(h.ControlHandler())
	t.Cleanup(srv.Close)
	return &control{t: t, url: srv.URL}
}

func (c *control) do(method, path string, body any, want int, out any) {
	c.t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, c.url+path, rd)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != want {
		c.t.Fatalf("%s %s: %d %s, want %d", method, path, resp.StatusCode, b, want)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			c.t.Fatalf("%s %s: %v: %s", method, path, err, b)
		}
	}
}

// TestControlHotAddRemove adds and removes ports through the control API
// while another port is under load: no request on it may fail.
func TestControlHotAddRemove(t *testing.T) {
	fe := newFakeEnclave(t, 5000, 5001)
	h, _ := startHost(t, host.Config{Publish: []host.Publish{fastPort(t, 5000)}, DialEnclave: fe.dial})
	ctl := newControl(t, h)
	steady := h.Published()[0].String()

	// Load on the steady port.
	stopLoad := testutil.Load(4, func() error { return roundTrip(steady) })

	for i := range 5 {
		var added host.PortJSON
		ctl.do("POST", "/v1/ports", host.PortJSON{Network: "tcp", Host: "127.0.0.1:0", VSockPort: 5001}, http.StatusCreated, &added)
		if err := roundTrip(added.Addr); err != nil {
			t.Fatalf("round %d: added port: %v", i, err)
		}
		// A connection open during removal drains: it keeps working until
		// the client ends it.
		c, err := net.Dial("tcp", added.Addr)
		if err != nil {
			t.Fatal(err)
		}
		r := bufio.NewReader(c)
		if _, err := r.ReadString('\n'); err != nil {
			t.Fatal(err)
		}
		removed := make(chan struct{})
		go func() {
			defer close(removed)
			ctl.do("DELETE", "/v1/ports/tcp/"+added.Addr+"?drain=10s", nil, http.StatusNoContent, nil)
		}()
		waitFor(t, func() bool {
			_, err := net.DialTimeout("tcp", added.Addr, time.Second)
			return err != nil // no longer accepting
		})
		if _, err := io.WriteString(c, "still here\n"); err != nil {
			t.Fatal(err)
		}
		if line, err := r.ReadString('\n'); err != nil || line != "still here\n" {
			t.Fatalf("draining connection: %q, %v", line, err)
		}
		select {
		case <-removed:
			t.Fatal("RemovePort returned before its connection ended")
		default:
		}
		_ = c.Close()
		<-removed
	}
	load := stopLoad()
	if load.Failed != 0 {
		t.Fatalf("%d of %d requests on the steady port failed; first: %v", load.Failed, load.Failed+load.OK, load.First)
	}
	if load.OK == 0 {
		t.Fatal("no load ran")
	}
	var ports []host.PortJSON
	ctl.do("GET", "/v1/ports", nil, http.StatusOK, &ports)
	if len(ports) != 1 || ports[0].Addr != steady || ports[0].Accepted != uint64(load.OK) {
		t.Errorf("ports after the test: %+v (ok %d)", ports, load.OK)
	}
	var st host.ControlStatus
	ctl.do("GET", "/v1/status", nil, http.StatusOK, &st)
	if len(st.Ports) != 1 {
		t.Errorf("status: %+v", st)
	}
}

func TestControlErrors(t *testing.T) {
	fe := newFakeEnclave(t, 5000)
	h, _ := startHost(t, host.Config{Publish: []host.Publish{fastPort(t, 5000)}, DialEnclave: fe.dial})
	ctl := newControl(t, h)
	taken := h.Published()[0].String()
	ctl.do("POST", "/v1/ports", host.PortJSON{Host: taken, VSockPort: 1}, http.StatusConflict, nil)
	ctl.do("POST", "/v1/ports", host.PortJSON{Host: "nonsense", VSockPort: 1}, http.StatusBadRequest, nil)
	ctl.do("POST", "/v1/ports", host.PortJSON{Host: "127.0.0.1:0"}, http.StatusBadRequest, nil) // neither port
	ctl.do("POST", "/v1/ports", map[string]any{"host": "127.0.0.1:0", "vsock_port": 1, "bogus": 1}, http.StatusBadRequest, nil)
	ctl.do("DELETE", "/v1/ports/tcp/127.0.0.1:1", nil, http.StatusNotFound, nil)
	ctl.do("DELETE", "/v1/ports/tcp/"+taken+"?drain=soon", nil, http.StatusBadRequest, nil)
}

// TestPublishIPv4WildcardIsIPv4Only: a port published on 0.0.0.0 (the
// default host address of -publish and -publish-vsock) takes IPv4 clients
// only, lists as 0.0.0.0:PORT, and is removed by that address, as
// host-ops.md shows (`quench-host ctl rm tcp/0.0.0.0:8443`). Go listens on
// an unspecified IPv4 address with a dual-stack IPv6 socket unless told
// "tcp4": the port then took IPv6 clients past an IPv4-only firewall (each
// IPv6 address its own MaxPortConnsPerClient share), listed as [::]:PORT,
// and the documented removal answered 404.
func TestPublishIPv4WildcardIsIPv4Only(t *testing.T) {
	if ln, err := net.Listen("tcp6", "[::1]:0"); err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	} else {
		_ = ln.Close()
	}
	fe := newFakeEnclave(t, 5000)
	h, _ := startHost(t, host.Config{DialEnclave: fe.dial})
	ctl := newControl(t, h)

	var tcp host.PortJSON
	ctl.do("POST", "/v1/ports", host.PortJSON{Network: "tcp", Host: "0.0.0.0:0", VSockPort: 5000}, http.StatusCreated, &tcp)
	ap, err := netip.ParseAddrPort(tcp.Addr)
	if err != nil {
		t.Fatal(err)
	}
	if want := netip.AddrPortFrom(netip.IPv4Unspecified(), ap.Port()); ap != want {
		t.Errorf("TCP port published on 0.0.0.0 lists as %s, want %s", ap, want)
	}
	if err := roundTrip(fmt.Sprintf("127.0.0.1:%d", ap.Port())); err != nil {
		t.Fatalf("IPv4 client: %v", err)
	}
	if c, err := net.DialTimeout("tcp6", fmt.Sprintf("[::1]:%d", ap.Port()), 5*time.Second); err == nil {
		_ = c.Close()
		t.Errorf("an IPv6 client reached the TCP port published on 0.0.0.0:%d", ap.Port())
	}

	var udp host.PortJSON
	ctl.do("POST", "/v1/ports", host.PortJSON{Network: "udp", Host: "0.0.0.0:0", EnclavePort: 53}, http.StatusCreated, &udp)
	up, err := netip.ParseAddrPort(udp.Addr)
	if err != nil {
		t.Fatal(err)
	}
	if want := netip.AddrPortFrom(netip.IPv4Unspecified(), up.Port()); up != want {
		t.Errorf("UDP port published on 0.0.0.0 lists as %s, want %s", up, want)
	}
	// The port's IPv6 side is free: nothing of quench-host listens there.
	if pc, err := net.ListenPacket("udp6", fmt.Sprintf("[::1]:%d", up.Port())); err != nil {
		t.Errorf("UDP port published on 0.0.0.0:%d holds IPv6 too: %v", up.Port(), err)
	} else {
		_ = pc.Close()
	}

	// Removal by the address the port was published on.
	ctl.do("DELETE", fmt.Sprintf("/v1/ports/tcp/0.0.0.0:%d", ap.Port()), nil, http.StatusNoContent, nil)
	ctl.do("DELETE", fmt.Sprintf("/v1/ports/udp/0.0.0.0:%d", up.Port()), nil, http.StatusNoContent, nil)
	if ps := h.Ports(); len(ps) != 0 {
		t.Errorf("ports left: %+v", ps)
	}
}

// TestRemovePortDeadline: connections still open when the drain deadline
// passes are closed.
func TestRemovePortDeadline(t *testing.T) {
	fe := newFakeEnclave(t, 5000)
	h, _ := startHost(t, host.Config{Publish: []host.Publish{fastPort(t, 5000)}, DialEnclave: fe.dial})
	addr := h.Published()[0].String()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	if _, err := r.ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := h.RemovePort(ctx, "tcp", addr); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := r.ReadString('\n'); err == nil || errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("connection not closed after the drain deadline: %v", err)
	}
	if len(h.Ports()) != 0 {
		t.Errorf("ports left: %+v", h.Ports())
	}
	if err := h.RemovePort(context.Background(), "tcp", addr); !errors.Is(err, host.ErrPortNotFound) {
		t.Errorf("second RemovePort: %v", err)
	}
}

// FuzzPortJSON: control API bodies decode and validate without panics.
func FuzzPortJSON(f *testing.F) {
	f.Add([]byte(`{"network":"tcp","host":"127.0.0.1:0","vsock_port":5000}`))
	f.Add([]byte(`{"network":"udp","host":"[::1]:53","enclave_port":53}`))
	f.Add([]byte(`{"host":"0.0.0.0:1","enclave_port":1,"vsock_port":2}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var p host.PortJSON
		if json.Unmarshal(b, &p) != nil {
			return
		}
		spec, err := p.Spec()
		if err != nil {
			return
		}
		_, _ = host.New(host.Config{Publish: []host.Publish{spec}, DialEnclave: func(context.Context, uint32) (net.Conn, error) { return nil, errors.New("no") }})
		_ = spec.String()
	})
}

// TestPublishedPortRidesOutEMFILE: a published port's accept loop retries
// descriptor exhaustion (EMFILE) instead of stopping for good.
func TestPublishedPortRidesOutEMFILE(t *testing.T) {
	var fl *testutil.FailingListener
	t.Cleanup(host.SetListenPublished(func(network, addr string) (net.Listener, error) {
		ln, err := net.Listen(network, addr)
		if err != nil {
			return nil, err
		}
		fl = testutil.FailAccepts(ln, syscall.EMFILE, 3)
		return fl, nil
	}))
	fe := newFakeEnclave(t, 5000)
	h, _ := startHost(t, host.Config{Publish: []host.Publish{fastPort(t, 5000)}, DialEnclave: fe.dial})
	if err := roundTrip(h.Published()[0].String()); err != nil {
		t.Fatal(err)
	}
	if fl.Left() != 0 {
		t.Fatalf("%d accept failures never happened", fl.Left())
	}
}
