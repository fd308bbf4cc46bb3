package e2e

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/net/dns/dnsmessage"

	"github.com/quenchnet/quench/internal/testutil"
)

// fastRefusal bounds how long a refusal by the enclave's egress filter
// may take: it answers at once (a RST to the SYN, NXDOMAIN to the query),
// so this is a generous bound, not a benchmark. A dropped SYN would be
// retransmitted only after 1 s.
const fastRefusal = time.Second

// TestEnclaveEgressPolicy runs quench-enclave -allow in TAP mode (the
// namespace stands in for the enclave) behind a quench-host without any
// policy of its own, so that whatever is refused is refused inside the
// enclave: by the frame-level egress filter that package enclave installs
// on the TAP device for Config.Egress, which polices every program's
// kernel sockets. The test's own sockets in the namespace stand for such
// programs.
//
// Rules: allowed.example:HOSTHTTP/tcp (a hostname rule, matched through
// the DNS answers the filter saw), 192.168.127.254:ADDRHTTP/tcp (an
// address rule: a service on the host's loopback) and
// 192.168.127.0/24:HOSTUDP/udp (a CIDR rule). The upstream DNS server
// answers allowed.example and denied.example, both with the host's
// loopback address.
func TestEnclaveEgressPolicy(t *testing.T) {
	env := newEnclaveEnv(t)

	// Host services on 127.0.0.1, which the enclave reaches at
	// 192.168.127.254: env.hostHTTP (hostname rule) and env.hostUDP (CIDR
	// rule) from newEnclaveEnv, plus one HTTP server for the address
	// rule, and an HTTP server and a UDP echo that no rule allows, which
	// count what reaches them.
	addrHTTP := listenHostHTTP(t)
	refusedHTTP, refusedConns := listenCountingHTTP(t)
	refusedUDP, refusedDatagrams := listenCountingUDPEcho(t)

	// The upstream DNS server, counting the queries that reach it by name.
	dpc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	upstream := &countingDNS{PacketConn: dpc, names: map[string]int{}}
	t.Cleanup(func() { _ = dpc.Close() })
	go testutil.ServeDNS(upstream, map[string]netip.Addr{
		"allowed.example.": netip.MustParseAddr(hostLoopback),
		"denied.example.":  netip.MustParseAddr(hostLoopback),
	})
	env.dnsPort = dpc.LocalAddr().(*net.UDPAddr).Port // startHost passes it as -dns

	// The enclave also serves HTTPS (to its HTTP server on :8080), for
	// /enclave/config through a published port.
	public := testutil.FreePort(t)
	env.startHost("-publish", fmt.Sprintf("127.0.0.1:%d:443", public))
	rules := []string{
		fmt.Sprintf("allowed.example:%d/tcp", env.hostHTTP),
		fmt.Sprintf("%s:%d/tcp", hostLoopback, addrHTTP),
		fmt.Sprintf("192.168.127.0/24:%d/udp", env.hostUDP),
	}
	args := []string{"-app-url", "http://127.0.0.1:8080", "-internal-addr", "127.0.0.1:8079", "-dev-attester", "-metrics", "127.0.0.1:8078"}
	for _, r := range rules {
		args = append(args, "-allow", r)
	}
	env.startEnclave(args...)
	ctx := context.Background()
	testutil.WaitFor(t, 20*time.Second, "inbound HTTP through the published port", func() error { return env.checkInbound(ctx) })

	hostAddr := func(port int) string { return net.JoinHostPort(hostLoopback, strconv.Itoa(port)) }

	// Before the enclave has resolved allowed.example, nothing allows its
	// address: a hostname rule matches only through DNS answers.
	t.Run("hostname rule needs a DNS answer", func(t *testing.T) {
		d, err := env.dialIn(hostAddr(env.hostHTTP))
		checkRefused(t, "before resolving allowed.example", d, err)
	})

	resolveAllowed := func() error {
		return env.ns.Do(func() error {
			got, err := testutil.QueryA("192.168.127.1:53", "allowed.example")
			if err != nil || len(got) == 0 || got[0].String() != hostLoopback {
				return fmt.Errorf("allowed.example: %v, %v; want %s", got, err, hostLoopback)
			}
			return nil
		})
	}
	t.Run("DNS allowed name", func(t *testing.T) {
		if err := resolveAllowed(); err != nil {
			t.Fatal(err)
		}
		if n := upstream.count("allowed.example."); n == 0 {
			t.Error("allowed.example did not go through the host's DNS to the upstream server")
		}
	})
	// A name no hostname rule allows: NXDOMAIN at once, from the filter;
	// the query never leaves the enclave.
	t.Run("DNS denied name", func(t *testing.T) {
		var took time.Duration
		err := env.ns.Do(func() error {
			start := time.Now()
			got, err := testutil.QueryA("192.168.127.1:53", "denied.example")
			took = time.Since(start)
			if err == nil {
				return fmt.Errorf("denied.example resolved to %v, want NXDOMAIN", got)
			}
			if !strings.Contains(err.Error(), "RCodeNameError") {
				return fmt.Errorf("denied.example: %v (after %v), want NXDOMAIN", err, took)
			}
			return nil
		})
		if err != nil {
			t.Error(err)
		} else if took > fastRefusal {
			t.Errorf("NXDOMAIN for denied.example after %v, want under %v", took, fastRefusal)
		}
		if n := upstream.count("denied.example."); n != 0 {
			t.Errorf("denied.example reached the upstream DNS server %d times, want 0 (answered in the enclave)", n)
		}
	})

	// resolv.conf names the enclave's DNS proxy, which answers over UDP and
	// TCP on the enclave's loopback; over TCP it checks the questions and
	// answers itself and passes the questions on through quench-host (the
	// frame filter lets exactly its socket through), while a program's own
	// DNS over TCP to the host is refused.
	t.Run("DNS proxy", func(t *testing.T) {
		resolv, err := os.ReadFile(filepath.Join(env.dir, "resolv.conf"))
		if err != nil || !strings.Contains(string(resolv), "nameserver 127.0.0.1\n") || strings.Contains(string(resolv), "192.168.127.1") {
			t.Errorf("resolv.conf %q (%v), want nameserver 127.0.0.1 only", resolv, err)
		}
		before := upstream.count("allowed.example.")
		for _, netw := range []string{"udp", "tcp"} {
			err := env.ns.Do(func() error {
				r, err := dnsExchange(netw, "127.0.0.1:53", "allowed.example.")
				if err != nil {
					return err
				}
				if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 || !strings.HasSuffix(r.Answer[0].String(), hostLoopback) {
					return fmt.Errorf("allowed.example: %v", r)
				}
				if r, err = dnsExchange(netw, "127.0.0.1:53", "denied.example."); err != nil {
					return err
				}
				if r.Rcode != dns.RcodeNameError {
					return fmt.Errorf("denied.example: %s, want NXDOMAIN", dns.RcodeToString[r.Rcode])
				}
				return nil
			})
			if err != nil {
				t.Errorf("%s: %v", netw, err)
			}
		}
		if n := upstream.count("allowed.example."); n < before+2 {
			t.Errorf("allowed.example reached the upstream server %d times through the proxy, want 2 (UDP and TCP)", n-before)
		}
		if n := upstream.count("denied.example."); n != 0 {
			t.Errorf("denied.example reached the upstream DNS server %d times, want 0", n)
		}
		d, err := env.dialIn("192.168.127.1:53")
		checkRefused(t, "a program's own DNS over TCP to the host", d, err)
	})

	// The proxy's connection to the host's DNS passed by a permission for
	// its socket's port; once it has ended, its flow lingers (1 min after
	// the FINs). A program that binds that port and connects to the host's
	// DNS must be refused, not let onto the old flow to ask it, unchecked,
	// a name no rule allows. The port is free at once when the host closed
	// first (its DNS server closes a connection idle for 8 s; the program
	// keeps its own to the proxy busy with refused names meanwhile, which
	// do not reach the host), so that the proxy's socket skips TIME_WAIT.
	t.Run("DNS proxy's port reused", func(t *testing.T) {
		before := upstream.count("denied.example.")
		var took time.Duration
		err := env.ns.Do(func() error {
			c, err := net.Dial("tcp", "127.0.0.1:53")
			if err != nil {
				return err
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(30 * time.Second))
			if err := dnsAskTCP(c, "allowed.example."); err != nil {
				return fmt.Errorf("through the proxy: %w", err)
			}
			port, err := proxyUpstreamPort("01") // ESTABLISHED
			if err != nil {
				return err
			}
			for deadline := time.Now().Add(15 * time.Second); ; {
				if p, err := proxyUpstreamPort("08"); err == nil && p == port { // CLOSE_WAIT: the host closed
					break
				}
				if time.Now().After(deadline) {
					return errors.New("the host's DNS did not close the proxy's idle connection")
				}
				if err := dnsAskTCP(c, "denied.example."); err != nil {
					return fmt.Errorf("through the proxy: %w", err)
				}
				time.Sleep(500 * time.Millisecond)
			}
			c.Close() // the proxy closes its connection to the host's DNS
			time.Sleep(300 * time.Millisecond)
			d := net.Dialer{LocalAddr: &net.TCPAddr{Port: port}, Timeout: 3 * time.Second}
			start := time.Now()
			up, err := d.Dial("tcp4", "192.168.127.1:53")
			took = time.Since(start)
			if err != nil {
				return err
			}
			defer up.Close()
			_ = up.SetDeadline(time.Now().Add(5 * time.Second))
			if err := dnsAskTCP(up, "denied.example."); err != nil {
				return fmt.Errorf("connected from the proxy's port %d; then: %w", port, err)
			}
			return fmt.Errorf("connected from the proxy's port %d and asked the host's DNS directly", port)
		})
		checkRefused(t, "a program's DNS over TCP from the proxy's former port", took, err)
		if n := upstream.count("denied.example."); n != before {
			t.Errorf("denied.example reached the upstream DNS server %d times, want 0", n-before)
		}
	})

	t.Run("TCP allowed by hostname rule", func(t *testing.T) {
		if err := resolveAllowed(); err != nil { // the filter learns the address
			t.Fatal(err)
		}
		if err := env.getHostHTTP(hostAddr(env.hostHTTP)); err != nil {
			t.Errorf("allowed.example:%d: %v", env.hostHTTP, err)
		}
	})
	t.Run("TCP allowed by address rule", func(t *testing.T) {
		if err := env.getHostHTTP(hostAddr(addrHTTP)); err != nil {
			t.Errorf("%s: %v", hostAddr(addrHTTP), err)
		}
	})
	// No rule: the same address as both rules', on another port.
	t.Run("TCP refused", func(t *testing.T) {
		d, err := env.dialIn(hostAddr(refusedHTTP))
		checkRefused(t, hostAddr(refusedHTTP), d, err)
		if n := refusedConns.Load(); n != 0 {
			t.Errorf("the refused server accepted %d connections, want 0", n)
		}
	})

	t.Run("UDP allowed by CIDR rule", func(t *testing.T) {
		err := env.ns.Do(func() error {
			ok, err := net.Dial("udp", hostAddr(env.hostUDP))
			if err != nil {
				return err
			}
			defer ok.Close()
			if err := udpRoundTrips(ok, "allowed"); err != nil {
				return fmt.Errorf("%s: %v", hostAddr(env.hostUDP), err)
			}
			return nil
		})
		if err != nil {
			t.Error(err)
		}
	})
	// No rule: dropped in the enclave, which answers with an ICMP
	// "administratively prohibited"; the connected socket sees an error on
	// a later read (the errno is not checked, only logged).
	t.Run("UDP refused", func(t *testing.T) {
		err := env.ns.Do(func() error {
			no, err := net.Dial("udp", hostAddr(refusedUDP))
			if err != nil {
				return err
			}
			defer no.Close()
			for i := range 3 {
				if _, err := no.Write([]byte("refused")); err != nil {
					t.Logf("write %d to %s: %v", i, hostAddr(refusedUDP), err)
				}
				time.Sleep(50 * time.Millisecond)
			}
			_ = no.SetReadDeadline(time.Now().Add(time.Second))
			buf := make([]byte, 64)
			n, err := no.Read(buf)
			if err == nil {
				return fmt.Errorf("refused UDP port echoed %q", buf[:n])
			}
			t.Logf("read from %s: %v", hostAddr(refusedUDP), err)
			return nil
		})
		if err != nil {
			t.Error(err)
		}
		time.Sleep(100 * time.Millisecond) // datagrams on their way through the host
		if n := refusedDatagrams.Load(); n != 0 {
			t.Errorf("the refused UDP server received %d datagrams, want 0", n)
		}
	})

	// Connections into the enclave pass whatever the policy: their
	// replies go to clients no rule names.
	t.Run("inbound", func(t *testing.T) {
		if err := env.checkInbound(ctx); err != nil {
			t.Errorf("published TCP port: %v", err)
		}
		c, err := net.Dial("udp", fmt.Sprintf("127.0.0.1:%d", env.udpPort))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := udpRoundTrips(c, "ping in"); err != nil {
			t.Errorf("published UDP port: %v", err)
		}
	})

	// Clients can audit the attested policy: /enclave/config lists it.
	// The refusals above are counted (at least: a resolver may retry).
	t.Run("metrics", func(t *testing.T) {
		var body []byte
		err := env.ns.Do(func() error {
			// Dialled here, on the namespace's thread (an http.Client would
			// dial from another).
			c, err := net.DialTimeout("tcp", "127.0.0.1:8078", 5*time.Second)
			if err != nil {
				return err
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := io.WriteString(c, "GET /metrics HTTP/1.0\r\n\r\n"); err != nil {
				return err
			}
			body, err = io.ReadAll(c)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		for _, kind := range []string{"tcp", "udp", "dns"} {
			prefix := fmt.Sprintf("quench_enclave_egress_refused_total{kind=%q} ", kind)
			i := strings.Index(string(body), prefix)
			if i < 0 {
				t.Errorf("no %s in the metrics", prefix)
				continue
			}
			line, _, _ := strings.Cut(string(body[i+len(prefix):]), "\n")
			if n, err := strconv.ParseFloat(line, 64); err != nil || n < 1 {
				t.Errorf("%s%s, want at least 1", prefix, line)
			}
		}
	})

	t.Run("config", func(t *testing.T) {
		tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}
		defer tr.CloseIdleConnections()
		c := &http.Client{Transport: tr, Timeout: 5 * time.Second}
		var body []byte
		testutil.WaitFor(t, 10*time.Second, "/enclave/config", func() error {
			resp, err := c.Get(fmt.Sprintf("https://127.0.0.1:%d/enclave/config", public))
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			if body, err = io.ReadAll(resp.Body); err != nil {
				return err
			}
			if resp.StatusCode != http.StatusOK {
				return fmt.Errorf("%s: %s", resp.Status, body)
			}
			return nil
		})
		var cfg struct {
			Egress   []string `json:"egress"`
			DNSProxy string   `json:"dns_proxy"`
		}
		if err := json.Unmarshal(body, &cfg); err != nil {
			t.Fatalf("%v: %s", err, body)
		}
		if fmt.Sprint(cfg.Egress) != fmt.Sprint(rules) {
			t.Errorf("egress %q, want %q", cfg.Egress, rules)
		}
		if cfg.DNSProxy != "127.0.0.1" {
			t.Errorf("dns_proxy %q, want 127.0.0.1", cfg.DNSProxy)
		}
	})
}

// checkRefused wants a connection attempt refused at once: ECONNREFUSED (a
// RST to the SYN) within fastRefusal.
func checkRefused(t *testing.T, what string, took time.Duration, err error) {
	t.Helper()
	switch {
	case err == nil:
		t.Errorf("%s: connected, want connection refused", what)
	case !errors.Is(err, syscall.ECONNREFUSED):
		t.Errorf("%s: %v after %v, want connection refused", what, err, took)
	case took > fastRefusal:
		t.Errorf("%s: refused after %v, want under %v", what, took, fastRefusal)
	}
}

// dialIn opens a TCP connection to addr from inside the enclave and closes
// it; it returns how long the attempt took.
func (env *enclaveEnv) dialIn(addr string) (took time.Duration, err error) {
	err = env.ns.Do(func() error {
		start := time.Now()
		c, err := net.DialTimeout("tcp", addr, 3*time.Second)
		took = time.Since(start)
		if err != nil {
			return err
		}
		return c.Close()
	})
	return took, err
}

// listenHostHTTP serves "hello from the host" on the host's 127.0.0.1 and
// returns the port.
func listenHostHTTP(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	serveHTTP(t, ln, "hello from the host")
	return ln.Addr().(*net.TCPAddr).Port
}

// listenCountingHTTP is listenHostHTTP counting the accepted connections.
func listenCountingHTTP(t *testing.T) (int, *atomic.Int64) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cl := &countingListener{Listener: ln}
	serveHTTP(t, cl, "hello from the host")
	return ln.Addr().(*net.TCPAddr).Port, &cl.n
}

type countingListener struct {
	net.Listener
	n atomic.Int64
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

// listenCountingUDPEcho runs a UDP echo on the host's 127.0.0.1 counting
// the datagrams it receives.
func listenCountingUDPEcho(t *testing.T) (int, *atomic.Int64) {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cpc := &countingPacketConn{PacketConn: pc}
	serveUDPEcho(t, cpc)
	return pc.LocalAddr().(*net.UDPAddr).Port, &cpc.n
}

type countingPacketConn struct {
	net.PacketConn
	n atomic.Int64
}

func (c *countingPacketConn) ReadFrom(b []byte) (int, net.Addr, error) {
	n, from, err := c.PacketConn.ReadFrom(b)
	if err == nil {
		c.n.Add(1)
	}
	return n, from, err
}

// countingDNS counts the DNS queries read from the PacketConn by question
// name (lower case, with the trailing dot).
type countingDNS struct {
	net.PacketConn
	mu    sync.Mutex
	names map[string]int // guarded by mu
}

func (c *countingDNS) ReadFrom(b []byte) (int, net.Addr, error) {
	n, from, err := c.PacketConn.ReadFrom(b)
	if err == nil {
		var p dnsmessage.Parser
		if _, perr := p.Start(b[:n]); perr == nil {
			if q, perr := p.Question(); perr == nil {
				c.mu.Lock()
				c.names[strings.ToLower(q.Name.String())]++
				c.mu.Unlock()
			}
		}
	}
	return n, from, err
}

func (c *countingDNS) count(name string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.names[name]
}

// dnsExchange asks server one A question over netw ("udp" or "tcp"). The
// socket is created in the calling thread, so it works inside NS.Do.
func dnsExchange(netw, server, name string) (*dns.Msg, error) {
	c := &dns.Client{Net: netw, Timeout: 3 * time.Second}
	m := new(dns.Msg)
	m.SetQuestion(name, dns.TypeA)
	r, _, err := c.Exchange(m, server)
	return r, err
}

// dnsAskTCP asks name (A) on the DNS-over-TCP connection c and reads the
// answer.
func dnsAskTCP(c net.Conn, name string) error {
	m := new(dns.Msg)
	m.SetQuestion(name, dns.TypeA)
	b, err := m.Pack()
	if err != nil {
		return err
	}
	if _, err := c.Write(append([]byte{byte(len(b) >> 8), byte(len(b))}, b...)); err != nil {
		return err
	}
	var n [2]byte
	if _, err := io.ReadFull(c, n[:]); err != nil {
		return err
	}
	_, err = io.ReadFull(c, make([]byte, int(n[0])<<8|int(n[1])))
	return err
}

// proxyUpstreamPort returns the local port of the DNS proxy's TCP
// connection to the host's DNS (192.168.127.1:53) in state (as
// /proc/net/tcp gives it), from the calling thread's network namespace.
func proxyUpstreamPort(state string) (int, error) {
	b, err := os.ReadFile("/proc/thread-self/net/tcp")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) < 4 || f[2] != "017FA8C0:0035" || f[3] != state { // 192.168.127.1:53
			continue
		}
		_, p, ok := strings.Cut(f[1], ":")
		if !ok {
			continue
		}
		port, err := strconv.ParseUint(p, 16, 16)
		if err != nil {
			return 0, err
		}
		return int(port), nil
	}
	return 0, fmt.Errorf("no connection from the DNS proxy to the host's DNS in state %s", state)
}
