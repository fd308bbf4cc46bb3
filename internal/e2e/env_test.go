package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/quenchnet/quench/internal/testutil"
)

// enclaveEnv is one simulated enclave: a namespace with a TAP device, the
// host daemon, and services on both sides.
type enclaveEnv struct {
	t        *testing.T
	dir      string
	bin      string
	ns       *testutil.NS
	hostSock string
	hostArgs []string
	host     *testutil.Process
	enclave  *testutil.Process

	httpPort int // published host port → enclave :8080 (HTTP)
	udpPort  int // published host port → enclave :7007/udp (echo)
	hostHTTP int // HTTP server on the host's 127.0.0.1
	hostUDP  int // UDP echo on the host's 127.0.0.1
	dnsPort  int // upstream DNS server on the host's 127.0.0.1
}

const hostLoopback = "192.168.127.254"

// newEnclaveEnv starts an HTTP server and a UDP echo server inside a fresh
// namespace, and the same on the host's loopback, plus an upstream DNS
// server; it does not start the daemons.
func newEnclaveEnv(t *testing.T) *enclaveEnv {
	t.Helper()
	testutil.RequireRoot(t)
	env := &enclaveEnv{
		t:   t,
		dir: t.TempDir(),
		bin: testutil.Binaries(t),
		ns:  testutil.NewNS(t),
	}
	env.hostSock = filepath.Join(env.dir, "host.sock")
	env.httpPort = testutil.FreePort(t)
	env.udpPort = testutil.FreeUDPPort(t)

	// Inside the enclave: HTTP on :8080 and UDP echo on :7007. The sockets
	// are created in the namespace and served from ordinary goroutines.
	var ln net.Listener
	var pc net.PacketConn
	if err := env.ns.Do(func() (err error) {
		if ln, err = net.Listen("tcp", ":8080"); err != nil {
			return err
		}
		pc, err = net.ListenPacket("udp", ":7007")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	serveHTTP(t, ln, "hello from the enclave")
	serveUDPEcho(t, pc)

	// On the host: HTTP, UDP echo and DNS on 127.0.0.1.
	hl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	env.hostHTTP = hl.Addr().(*net.TCPAddr).Port
	serveHTTP(t, hl, "hello from the host")
	hpc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	env.hostUDP = hpc.LocalAddr().(*net.UDPAddr).Port
	serveUDPEcho(t, hpc)
	dpc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	env.dnsPort = dpc.LocalAddr().(*net.UDPAddr).Port
	go testutil.ServeDNS(dpc, map[string]netip.Addr{"upstream.example.": netip.MustParseAddr("203.0.113.7")})
	t.Cleanup(func() { _ = dpc.Close() })
	return env
}

func serveHTTP(t *testing.T, ln net.Listener, body string) {
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "%s; you are %s", body, r.RemoteAddr)
		}),
		ReadHeaderTimeout: 5 * time.Second,
	}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
}

func serveUDPEcho(t *testing.T, pc net.PacketConn) {
	go func() {
		buf := make([]byte, 65535)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = pc.WriteTo(buf[:n], from)
		}
	}()
	t.Cleanup(func() { _ = pc.Close() })
}

// startHost starts quench-host with the env's published ports plus extra
// arguments.
func (env *enclaveEnv) startHost(extra ...string) {
	env.t.Helper()
	env.hostArgs = append([]string{
		"-listen", "unix://" + env.hostSock,
		"-publish", fmt.Sprintf("127.0.0.1:%d:8080", env.httpPort),
		"-publish", fmt.Sprintf("127.0.0.1:%d:7007/udp", env.udpPort),
		"-dns", fmt.Sprintf("127.0.0.1:%d", env.dnsPort),
		"-log-level", "debug",
	}, extra...)
	env.host = testutil.Start(env.t, "quench-host", exec.Command(filepath.Join(env.bin, "quench-host"), env.hostArgs...))
	testutil.WaitForFile(env.t, env.hostSock, 10*time.Second)
}

// restartHost kills quench-host hard and starts it again with the same
// arguments; it returns when the new one listens.
func (env *enclaveEnv) restartHost() {
	env.t.Helper()
	env.host.Kill()
	env.host = testutil.Start(env.t, "quench-host (restarted)", exec.Command(filepath.Join(env.bin, "quench-host"), env.hostArgs...))
	testutil.WaitFor(env.t, 10*time.Second, "restarted host listening", func() error {
		c, err := net.Dial("unix", env.hostSock)
		if err != nil {
			return err
		}
		return c.Close()
	})
}

// startEnclave runs quench-enclave in the namespace.
func (env *enclaveEnv) startEnclave(extra ...string) {
	env.t.Helper()
	args := append([]string{
		"-host", "unix://" + env.hostSock,
		"-resolv-conf", filepath.Join(env.dir, "resolv.conf"),
		"-log-level", "debug",
	}, extra...)
	env.enclave = testutil.Start(env.t, "quench-enclave", env.ns.Command(filepath.Join(env.bin, "quench-enclave"), args...))
}

// checkInbound GETs the enclave's HTTP server through the published port.
func (env *enclaveEnv) checkInbound(ctx context.Context) error {
	body, err := testutil.HTTPGet(ctx, fmt.Sprintf("http://127.0.0.1:%d/", env.httpPort))
	if err != nil {
		return err
	}
	if !strings.HasPrefix(body, "hello from the enclave") {
		return fmt.Errorf("unexpected body %q", body)
	}
	return nil
}

// checkEgressHTTP GETs the host's HTTP server from inside the enclave
// through 192.168.127.254.
func (env *enclaveEnv) checkEgressHTTP() error {
	return env.getHostHTTP(net.JoinHostPort(hostLoopback, strconv.Itoa(env.hostHTTP)))
}

// getHostHTTP GETs the host's HTTP server at addr from inside the enclave.
func (env *enclaveEnv) getHostHTTP(addr string) error {
	return env.getHostHTTPWith(&net.Dialer{Timeout: 3 * time.Second}, addr)
}

// getHostHTTPWith is getHostHTTP with the connection dialled by d. The
// request asks the server to close the connection after its answer, so the
// server's side closes first.
func (env *enclaveEnv) getHostHTTPWith(d *net.Dialer, addr string) error {
	return getHostHTTPIn(env.ns, d, addr)
}

// getHostHTTPIn GETs the host's HTTP server at addr from inside ns, on a
// connection dialled by d; its deadline bounds the whole exchange.
func getHostHTTPIn(ns *testutil.NS, d *net.Dialer, addr string) error {
	return ns.Do(func() error {
		c, err := d.Dial("tcp", addr)
		if err != nil {
			return err
		}
		defer c.Close()
		dl := d.Deadline
		if dl.IsZero() {
			dl = time.Now().Add(5 * time.Second)
		}
		_ = c.SetDeadline(dl)
		if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: host\r\nConnection: close\r\n\r\n"); err != nil {
			return err
		}
		b, err := io.ReadAll(c)
		if err != nil {
			return err
		}
		if !strings.Contains(string(b), "hello from the host") {
			return fmt.Errorf("unexpected response %q", b)
		}
		return nil
	})
}

// udpRoundTrip sends msg from a socket made by mk to addr and waits for
// the echo.
// udpRoundTrips tries udpRoundTrip up to five times (a datagram, or its
// echo, may be lost while ARP resolves) and returns the last error.
func udpRoundTrips(c net.Conn, msg string) error {
	var last error
	for range 5 {
		if last = udpRoundTrip(c, msg); last == nil {
			return nil
		}
	}
	return last
}

func udpRoundTrip(c net.Conn, msg string) error {
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Write([]byte(msg)); err != nil {
		return err
	}
	buf := make([]byte, 2048)
	n, err := c.Read(buf)
	if err != nil {
		return err
	}
	if string(buf[:n]) != msg {
		return fmt.Errorf("echo %q, want %q", buf[:n], msg)
	}
	return nil
}
