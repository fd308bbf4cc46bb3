package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/quenchnet/quench/internal/testutil"
)

// The tests in this file compare what applications on kernel sockets see
// through quench (TAP mode: NAT egress, published ports, the fast path)
// with what a direct kernel connection gives them: half-closes, abortive
// closes, refusals and big transfers.

// tcpPath is a way through quench for TCP connections under test: dial
// makes the client's end, accept returns the server's end of it.
type tcpPath struct {
	name   string
	dial   func() (net.Conn, error)                     // the client's end (may run in the namespace)
	accept func(within time.Duration) (net.Conn, error) // the server's end of that connection
}

// natPath: the client in the enclave dials a server on the host's
// loopback through 192.168.127.254.
func natPath(t *testing.T, env *enclaveEnv) tcpPath {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	addr := net.JoinHostPort(hostLoopback, strconv.Itoa(ln.Addr().(*net.TCPAddr).Port))
	return tcpPath{
		name: "NAT egress",
		dial: func() (c net.Conn, err error) {
			err = env.ns.Do(func() error {
				c, err = net.DialTimeout("tcp", addr, 5*time.Second)
				return err
			})
			return c, err
		},
		accept: acceptWithin(ln),
	}
}

// publishPath: a client on the host's loopback dials a published port to
// a server in the enclave.
func publishPath(t *testing.T, env *enclaveEnv, hostPort, enclavePort int) tcpPath {
	var ln net.Listener
	if err := env.ns.Do(func() (err error) {
		ln, err = net.Listen("tcp", ":"+strconv.Itoa(enclavePort))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	return tcpPath{
		dial: func() (net.Conn, error) {
			return net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(hostPort), 5*time.Second)
		},
		accept: acceptWithin(ln),
	}
}

func acceptWithin(ln net.Listener) func(time.Duration) (net.Conn, error) {
	return func(within time.Duration) (net.Conn, error) {
		if tl, ok := ln.(*net.TCPListener); ok {
			_ = tl.SetDeadline(time.Now().Add(within))
		}
		return ln.Accept()
	}
}

// connect dials p and returns both ends, with a deadline on each.
func (p tcpPath) connect(t *testing.T) (client, server net.Conn) {
	t.Helper()
	client, err := p.dial()
	if err != nil {
		t.Fatalf("%s: dial: %v", p.name, err)
	}
	server, err = p.accept(10 * time.Second)
	if err != nil {
		client.Close()
		t.Fatalf("%s: accept: %v", p.name, err)
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	dl := time.Now().Add(20 * time.Second)
	_ = client.SetDeadline(dl)
	_ = server.SetDeadline(dl)
	return client, server
}

// checkHalfClose: closer shuts its write side; the other end reads EOF,
// then keeps sending n bytes, all of which closer reads.
func checkHalfClose(t *testing.T, closer, other net.Conn, n int) {
	t.Helper()
	if _, err := closer.Write([]byte("request")); err != nil {
		t.Fatal(err)
	}
	if err := closer.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(other)
	if err != nil || string(got) != "request" {
		t.Fatalf("other side read %q, %v; want \"request\" then EOF", got, err)
	}
	data := pattern(n)
	errc := make(chan error, 1)
	go func() {
		_, err := other.Write(data)
		if err == nil {
			err = other.(*net.TCPConn).CloseWrite()
		}
		errc <- err
	}()
	back, err := io.ReadAll(closer)
	if err != nil {
		t.Fatalf("half-closed side reading the reply: %v after %d of %d bytes", err, len(back), n)
	}
	if err := <-errc; err != nil {
		t.Fatalf("writing after the peer's half-close: %v", err)
	}
	if !bytes.Equal(back, data) {
		t.Fatalf("half-closed side read %d bytes (sha %x), want %d (sha %x)", len(back), sha256.Sum256(back), n, sha256.Sum256(data))
	}
}

// checkReset: aborter closes with SO_LINGER 0; the other end's read fails
// with ECONNRESET, as between two kernel sockets, and not with a clean EOF.
func checkReset(t *testing.T, aborter, other net.Conn) {
	t.Helper()
	// Some traffic first so that both ends are established everywhere.
	if _, err := aborter.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 1)
	if _, err := io.ReadFull(other, b); err != nil {
		t.Fatal(err)
	}
	_ = aborter.(*net.TCPConn).SetLinger(0)
	_ = aborter.Close()
	_, err := io.ReadAll(other)
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("after the peer's abortive close, read returned %v, want ECONNRESET", err)
	}
}

// checkBulkEcho: the server echoes what the client sends, 16 MiB written
// and read at once, which must come back intact.
func checkBulkEcho(t *testing.T, p tcpPath) {
	t.Helper()
	c, s := p.connect(t)
	go func() { _, _ = io.Copy(s, s); _ = s.(*net.TCPConn).CloseWrite() }()
	if err := testutil.EchoRoundTrip(c, pattern(16<<20)); err != nil {
		t.Fatalf("%s: %v", p.name, err)
	}
}

func pattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i/251)
	}
	return b
}

// checkStreamPath checks what an app relies on from a TCP connection along
// p: bulk both ways, half-close both ways, and, with resets, an abortive
// close on either side reaching the other as a reset.
func checkStreamPath(t *testing.T, p tcpPath, resets bool) {
	t.Helper()
	t.Run("bulk both ways", func(t *testing.T) { checkBulkEcho(t, p) })
	t.Run("client half-closes", func(t *testing.T) {
		c, s := p.connect(t)
		checkHalfClose(t, c, s, 4<<20)
	})
	t.Run("server half-closes", func(t *testing.T) {
		c, s := p.connect(t)
		checkHalfClose(t, s, c, 4<<20)
	})
	if !resets {
		return
	}
	t.Run("server resets", func(t *testing.T) {
		c, s := p.connect(t)
		checkReset(t, s, c)
	})
	t.Run("client resets", func(t *testing.T) {
		c, s := p.connect(t)
		checkReset(t, c, s)
	})
}

// TestNATInteropTCP: NAT egress from the enclave to the host's loopback.
func TestNATInteropTCP(t *testing.T) {
	env := newEnclaveEnv(t)
	env.startHost()
	env.startEnclave()
	testutil.WaitFor(t, 20*time.Second, "egress", env.checkEgressHTTP)
	p := natPath(t, env)

	checkStreamPath(t, p, true)
	t.Run("refused", func(t *testing.T) {
		port := testutil.FreePort(t)
		start := time.Now()
		err := env.ns.Do(func() error {
			c, err := net.DialTimeout("tcp", net.JoinHostPort(hostLoopback, strconv.Itoa(port)), 10*time.Second)
			if err == nil {
				c.Close()
			}
			return err
		})
		if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Fatalf("dial to a closed host port: %v, want ECONNREFUSED", err)
		}
		if d := time.Since(start); d > 3*time.Second {
			t.Errorf("refusal took %v", d)
		}
	})
}

// TestPublishInteropTCP: a published port to a server in the enclave.
func TestPublishInteropTCP(t *testing.T) {
	env := newEnclaveEnv(t)
	port := testutil.FreePort(t)
	env.startHost("-publish", fmt.Sprintf("127.0.0.1:%d:9090", port))
	env.startEnclave()
	ctx := context.Background()
	testutil.WaitFor(t, 20*time.Second, "inbound", func() error { return env.checkInbound(ctx) })
	p := publishPath(t, env, port, 9090)
	p.name = "published port"

	checkStreamPath(t, p, true)
}

// fastPath: a client on the host's loopback dials a -publish-vsock port;
// quench-enclave -forward relays it to a server in the enclave.
func TestFastPathInteropTCP(t *testing.T) {
	env := newEnclaveEnv(t)
	vs := t.TempDir()
	port := testutil.FreePort(t)
	env.startHost("-vsock-dir", vs, "-enclave-cid", "16", "-publish-vsock", fmt.Sprintf("127.0.0.1:%d:8091", port))
	env.startEnclave("-vsock-dir", vs, "-forward", "vsock://16:8091=127.0.0.1:9091")
	p := publishPath(t, env, port, 9091)
	p.name = "fast path"
	testutil.WaitFor(t, 20*time.Second, "fast path up", func() error {
		c, err := p.dial()
		if err != nil {
			return err
		}
		defer c.Close()
		s, err := p.accept(time.Second)
		if err != nil {
			return err
		}
		return s.Close()
	})

	checkStreamPath(t, p, false) // VSOCK carries no reset: see docs/host-ops.md
}

// TestNATInteropUDP: datagrams of several sizes, up to ones IP must
// fragment at MTU 1500, both ways through the NAT and a published port.
func TestNATInteropUDP(t *testing.T) {
	for _, mtu := range []string{"65520", "1500"} {
		t.Run("mtu "+mtu, func(t *testing.T) { testNATInteropUDP(t, mtu) })
	}
}

func testNATInteropUDP(t *testing.T, mtu string) {
	env := newEnclaveEnv(t)
	env.startHost("-mtu", mtu)
	env.startEnclave("-mtu", mtu)
	ctx := context.Background()
	testutil.WaitFor(t, 20*time.Second, "inbound", func() error { return env.checkInbound(ctx) })
	sizes := []int{0, 1, 1472, 8000, 60000, 65507}
	echo := func(c net.Conn) error {
		for _, n := range sizes {
			msg := pattern(n)
			var last error
			for range 5 {
				if last = udpEcho(c, msg); last == nil {
					break
				}
			}
			if last != nil {
				return fmt.Errorf("%d bytes: %w", n, last)
			}
		}
		return nil
	}
	t.Run("egress", func(t *testing.T) {
		err := env.ns.Do(func() error {
			c, err := net.Dial("udp", net.JoinHostPort(hostLoopback, strconv.Itoa(env.hostUDP)))
			if err != nil {
				return err
			}
			defer c.Close()
			return echo(c)
		})
		if err != nil {
			t.Fatal(err)
		}
	})
	t.Run("published", func(t *testing.T) {
		c, err := net.Dial("udp", fmt.Sprintf("127.0.0.1:%d", env.udpPort))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := echo(c); err != nil {
			t.Fatal(err)
		}
	})
}

func udpEcho(c net.Conn, msg []byte) error {
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Write(msg); err != nil {
		return err
	}
	buf := make([]byte, 65536)
	n, err := c.Read(buf)
	if err != nil {
		return err
	}
	if !bytes.Equal(buf[:n], msg) {
		return fmt.Errorf("echo of %d bytes, want %d", n, len(msg))
	}
	return nil
}

// TestPublishRefused: a published port (and a fast-path port) whose
// enclave side refuses the connection (nothing listens) resets the client,
// which reads ECONNRESET, the nearest to the ECONNREFUSED of a direct
// connection, and not a clean EOF, which reads as a server that accepted
// and closed without a word.
func TestPublishRefused(t *testing.T) {
	env := newEnclaveEnv(t)
	vs := t.TempDir()
	tunnel, fast := testutil.FreePort(t), testutil.FreePort(t)
	env.startHost("-publish", fmt.Sprintf("127.0.0.1:%d:9999", tunnel),
		"-vsock-dir", vs, "-enclave-cid", "16", "-publish-vsock", fmt.Sprintf("127.0.0.1:%d:8092", fast))
	env.startEnclave()
	ctx := context.Background()
	testutil.WaitFor(t, 20*time.Second, "inbound", func() error { return env.checkInbound(ctx) })
	for name, port := range map[string]int{"published": tunnel, "fast path": fast} {
		t.Run(name, func(t *testing.T) {
			c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(port), 5*time.Second)
			if errors.Is(err, syscall.ECONNRESET) {
				return // reset even before connect returned
			}
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			b, err := io.ReadAll(c)
			if !errors.Is(err, syscall.ECONNRESET) {
				t.Fatalf("read %q, %v; want ECONNRESET", b, err)
			}
		})
	}
}

// TestMTUMismatchLogged: with different MTUs on quench-host and
// quench-enclave, TCP works (each side's MSS) but a large UDP datagram is a
// frame the smaller side rejects, ending the stream. That side must say so
// as an error that names its MTU and the fix, not an info line about a
// disconnected stream.
func TestMTUMismatchLogged(t *testing.T) {
	mismatch := func(t *testing.T, hostMTU, enclaveMTU string) *enclaveEnv {
		env := newEnclaveEnv(t)
		env.startHost("-mtu", hostMTU)
		env.startEnclave("-mtu", enclaveMTU)
		ctx := context.Background()
		testutil.WaitFor(t, 20*time.Second, "inbound", func() error { return env.checkInbound(ctx) })
		return env
	}
	logged := func(t *testing.T, p *testutil.Process, want ...string) {
		testutil.WaitFor(t, 10*time.Second, "the MTU error", func() error {
		lines:
			for _, line := range strings.Split(p.Output(), "\n") {
				for _, w := range append([]string{"level=ERROR", "8042 bytes", "-mtu"}, want...) {
					if !strings.Contains(line, w) {
						continue lines
					}
				}
				return nil
			}
			return fmt.Errorf("no error naming the MTUs in:\n%s", p.Output())
		})
	}
	send := func(addr string) error {
		c, err := net.Dial("udp", addr)
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.Write(make([]byte, 8000))
		return err
	}
	t.Run("enclave larger", func(t *testing.T) {
		env := mismatch(t, "1500", "65520")
		if err := env.ns.Do(func() error {
			return send(net.JoinHostPort(hostLoopback, strconv.Itoa(env.hostUDP)))
		}); err != nil {
			t.Fatal(err)
		}
		logged(t, env.host, "host_mtu=1500")
	})
	t.Run("host larger", func(t *testing.T) {
		env := mismatch(t, "65520", "1500")
		if err := send(net.JoinHostPort("127.0.0.1", strconv.Itoa(env.udpPort))); err != nil {
			t.Fatal(err)
		}
		logged(t, env.enclave, "enclave_mtu=1500")
	})
}

// TestNATUDPRefused: a datagram from the enclave that the host cannot
// deliver is answered with an ICMP port unreachable, so that a connected
// socket reads ECONNREFUSED at once, as on a direct path, instead of
// waiting out its timeout:
//   - to a closed port on the host: the host's socket read ECONNREFUSED
//     (the kernel's ICMP) and went on, answering nothing;
//   - to an address the host refuses (the EC2 metadata address, blocked by
//     default), as a rejecting firewall does and as the host resets a TCP
//     SYN there; it was dropped without a word.
func TestNATUDPRefused(t *testing.T) {
	env := newEnclaveEnv(t)
	env.startHost()
	env.startEnclave()
	testutil.WaitFor(t, 20*time.Second, "egress", env.checkEgressHTTP)
	for name, addr := range map[string]string{
		"closed port":     net.JoinHostPort(hostLoopback, strconv.Itoa(testutil.FreeUDPPort(t))),
		"refused address": "169.254.169.254:53",
	} {
		t.Run(name, func(t *testing.T) {
			err := env.ns.Do(func() error {
				c, err := net.Dial("udp", addr)
				if err != nil {
					return err
				}
				defer c.Close()
				var last error
				for range 3 {
					_ = c.SetDeadline(time.Now().Add(2 * time.Second))
					if _, err := c.Write([]byte("anyone?")); err != nil && !errors.Is(err, syscall.ECONNREFUSED) {
						return err
					}
					if _, last = c.Read(make([]byte, 64)); errors.Is(last, syscall.ECONNREFUSED) {
						return nil
					}
				}
				return fmt.Errorf("read: %v, want ECONNREFUSED", last)
			})
			if err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestManyConns: 1000 concurrent connections, all open at once, each an
// echo of its own bytes: from the enclave through the NAT, and from the
// host through a published port and the fast path.
func TestManyConns(t *testing.T) {
	env := newEnclaveEnv(t)
	vs := t.TempDir()
	pub, fast := testutil.FreePort(t), testutil.FreePort(t)
	env.startHost("-publish", fmt.Sprintf("127.0.0.1:%d:9095", pub),
		"-vsock-dir", vs, "-enclave-cid", "16", "-publish-vsock", fmt.Sprintf("127.0.0.1:%d:8095", fast))
	env.startEnclave("-vsock-dir", vs, "-forward", "vsock://16:8095=127.0.0.1:9095")
	testutil.WaitFor(t, 20*time.Second, "egress", env.checkEgressHTTP)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	testutil.Echo(t, ln)
	var eln net.Listener
	if err := env.ns.Do(func() (err error) { eln, err = net.Listen("tcp", ":9095"); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = eln.Close() })
	testutil.Echo(t, eln)

	natAddr := net.JoinHostPort(hostLoopback, strconv.Itoa(ln.Addr().(*net.TCPAddr).Port))
	dialNAT := func() (c net.Conn, err error) {
		err = env.ns.Do(func() error { c, err = net.DialTimeout("tcp", natAddr, 10*time.Second); return err })
		return c, err
	}
	dialHost := func(port int) func() (net.Conn, error) {
		return func() (net.Conn, error) {
			return net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(port), 10*time.Second)
		}
	}
	testutil.WaitFor(t, 20*time.Second, "fast path up", func() error {
		c, err := dialHost(fast)()
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(2 * time.Second))
		return testutil.EchoRoundTrip(c, []byte("up?"))
	})
	for _, tc := range []struct {
		name string
		dial func() (net.Conn, error)
	}{{"NAT", dialNAT}, {"published", dialHost(pub)}, {"fast path", dialHost(fast)}} {
		t.Run(tc.name, func(t *testing.T) {
			const n = 1000
			conns := make([]net.Conn, 0, n)
			defer func() {
				for _, c := range conns {
					c.Close()
				}
			}()
			for i := range n {
				c, err := tc.dial()
				if err != nil {
					t.Fatalf("connection %d: %v", i, err)
				}
				conns = append(conns, c)
			}
			errc := make(chan error, n)
			for i, c := range conns {
				go func() {
					_ = c.SetDeadline(time.Now().Add(30 * time.Second))
					errc <- testutil.EchoRoundTrip(c, []byte(fmt.Sprintf("connection %d", i)))
				}()
			}
			for range n {
				if err := <-errc; err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

// TestNATConnAcrossHostRestart: a NAT connection open while quench-host
// restarts is gone with the old host's stack. The enclave's next write must
// end it with a reset, as from a peer that lost the connection, within
// seconds, not leave the application waiting.
func TestNATConnAcrossHostRestart(t *testing.T) {
	env := newEnclaveEnv(t)
	env.startHost()
	env.startEnclave()
	testutil.WaitFor(t, 20*time.Second, "egress", env.checkEgressHTTP)
	p := natPath(t, env)
	c, s := p.connect(t)
	if _, err := c.Write([]byte("before")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(s, make([]byte, 6)); err != nil {
		t.Fatal(err)
	}
	env.restartHost()
	testutil.WaitFor(t, 20*time.Second, "egress after the restart", env.checkEgressHTTP)
	start := time.Now()
	_ = c.SetDeadline(time.Now().Add(15 * time.Second))
	_, werr := c.Write([]byte("after"))
	_, rerr := c.Read(make([]byte, 16))
	t.Logf("write: %v, read: %v after %v", werr, rerr, time.Since(start))
	if !errors.Is(werr, syscall.ECONNRESET) && !errors.Is(rerr, syscall.ECONNRESET) {
		t.Fatalf("after the host restarted: write %v, read %v; want ECONNRESET", werr, rerr)
	}
}

// checkAnswerThenReset: the server reads part of a request, answers and
// closes with the rest unread, which resets the connection (an HTTP 413).
// The client, still sending, must read the whole answer before the reset,
// as it does on a direct connection when the answer fits its receive
// buffer: passing the reset on must not drop bytes relayed before it.
// (A direct connection loses what did not reach the client's buffer before
// the reset, so the answer is small.)
func checkAnswerThenReset(t *testing.T, p tcpPath) {
	t.Helper()
	c, s := p.connect(t)
	go func() { _, _ = c.Write(make([]byte, 8<<20)) }()
	if _, err := io.ReadFull(s, make([]byte, 1024)); err != nil {
		t.Fatal(err)
	}
	answer := pattern(4096)
	if _, err := s.Write(answer); err != nil {
		t.Fatal(err)
	}
	_ = s.Close() // unread bytes: a reset
	got, err := io.ReadAll(c)
	if !bytes.Equal(got, answer) {
		t.Fatalf("client read %d bytes of the %d-byte answer, then %v", len(got), len(answer), err)
	}
}

func TestAnswerThenReset(t *testing.T) {
	env := newEnclaveEnv(t)
	port := testutil.FreePort(t)
	env.startHost("-publish", fmt.Sprintf("127.0.0.1:%d:9090", port))
	env.startEnclave()
	ctx := context.Background()
	testutil.WaitFor(t, 20*time.Second, "inbound", func() error { return env.checkInbound(ctx) })
	np := natPath(t, env)
	pp := publishPath(t, env, port, 9090)
	pp.name = "published port"
	for range 10 {
		t.Run("NAT", func(t *testing.T) { checkAnswerThenReset(t, np) })
		t.Run("published", func(t *testing.T) { checkAnswerThenReset(t, pp) })
	}
}

// TestNATUDPFlowsOfOneExchange: an enclave app that makes each UDP
// request from a fresh socket (a stub resolver, a metrics client) leaves
// behind a flow per request, held for the flow timeout. At the flow limit
// (here 50) new requests were dropped until old flows timed out, 90 s, while
// on a direct path each is answered. Flows that were one answered request
// make room now; a conversation (a request after an answer) keeps its flow,
// and so its host-side port.
func TestNATUDPFlowsOfOneExchange(t *testing.T) {
	env := newEnclaveEnv(t)
	env.startHost("-max-nat-udp-flows-per-enclave", "50")
	env.startEnclave()
	testutil.WaitFor(t, 20*time.Second, "egress", env.checkEgressHTTP)
	// A UDP server on the host that answers with the sender's address.
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pc.Close() })
	go func() {
		buf := make([]byte, 2048)
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = pc.WriteTo([]byte(from.String()), from)
		}
	}()
	addr := net.JoinHostPort(hostLoopback, strconv.Itoa(pc.LocalAddr().(*net.UDPAddr).Port))
	ask := askWhoAmI
	err = env.ns.Do(func() error {
		conv, err := net.Dial("udp", addr)
		if err != nil {
			return err
		}
		defer conv.Close()
		first, err := ask(conv)
		if err != nil {
			return fmt.Errorf("conversation: %w", err)
		}
		if _, err := ask(conv); err != nil {
			return fmt.Errorf("conversation: %w", err)
		}
		for i := range 200 {
			c, err := net.Dial("udp", addr)
			if err != nil {
				return err
			}
			_, err = ask(c)
			c.Close()
			if err != nil {
				return fmt.Errorf("request %d from a fresh socket: %w", i, err)
			}
		}
		again, err := ask(conv)
		if err != nil {
			return fmt.Errorf("conversation after the requests: %w", err)
		}
		if again != first {
			return fmt.Errorf("conversation's host-side address changed from %s to %s: its flow was ended", first, again)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestPublishUDPClientsOfOneRequest: a UDP service in the enclave (a DNS
// server) behind a published port, asked by clients that each use a fresh
// source port. Every source is a flow held for the flow timeout; at the
// flow limit (here 50) new clients were dropped for up to 90 s. Flows that
// were one answered request make room now; a conversation keeps its flow,
// and so the enclave-side port its server sees.
func TestPublishUDPClientsOfOneRequest(t *testing.T) {
	env := newEnclaveEnv(t)
	port := testutil.FreeUDPPort(t)
	env.startHost("-publish", fmt.Sprintf("127.0.0.1:%d:7008/udp", port), "-max-port-udp-flows", "50")
	env.startEnclave()
	ctx := context.Background()
	testutil.WaitFor(t, 20*time.Second, "inbound", func() error { return env.checkInbound(ctx) })
	// In the enclave: a UDP server that answers with the sender's address.
	var pc net.PacketConn
	if err := env.ns.Do(func() (err error) { pc, err = net.ListenPacket("udp", ":7008"); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pc.Close() })
	go func() {
		buf := make([]byte, 2048)
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = pc.WriteTo([]byte(from.String()), from)
		}
	}()
	addr := "127.0.0.1:" + strconv.Itoa(port)
	ask := askWhoAmI
	conv, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conv.Close()
	first, err := ask(conv)
	if err != nil {
		t.Fatalf("conversation: %v", err)
	}
	if _, err := ask(conv); err != nil {
		t.Fatalf("conversation: %v", err)
	}
	for i := range 200 {
		c, err := net.Dial("udp", addr)
		if err != nil {
			t.Fatal(err)
		}
		_, err = ask(c)
		c.Close()
		if err != nil {
			t.Fatalf("request %d from a fresh socket: %v", i, err)
		}
	}
	again, err := ask(conv)
	if err != nil {
		t.Fatalf("conversation after the requests: %v", err)
	}
	if again != first {
		t.Fatalf("the enclave saw the conversation from %s, then from %s: its flow was ended", first, again)
	}
}

// askWhoAmI asks the "who am I?" UDP service on c (it answers with the
// sender's address as it saw it), up to three times a second apart.
func askWhoAmI(c net.Conn) (string, error) {
	var last error
	for range 3 {
		_ = c.SetDeadline(time.Now().Add(time.Second))
		if _, err := c.Write([]byte("who am I?")); err != nil {
			return "", err
		}
		buf := make([]byte, 64)
		n, err := c.Read(buf)
		if err == nil {
			return string(buf[:n]), nil
		}
		last = err
	}
	return "", last
}
