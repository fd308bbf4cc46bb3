package e2e

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/quenchnet/quench/internal/endpoint"
	"github.com/quenchnet/quench/internal/testutil"
)

// EnvSoakRounds names the environment variable that sets TestSoak's rounds
// per phase (`make soak` sets it high; `make test` runs the default).
const EnvSoakRounds = "QUENCH_SOAK_ROUNDS"

// soakEnv is the whole system under mixed load: quench-host on the VSOCK
// stand-in, quench-enclave in TAP mode in a namespace with the development
// attester, an app on the enclave's loopback, and every path into and out
// of the enclave at once.
type soakEnv struct {
	t        *testing.T
	bin, dir string
	ns       *testutil.NS
	env      []string

	hostArgs, enclaveArgs []string
	host, enclave         *testutil.Process

	tunnelPort  int // -publish → the enclave's public HTTPS server (:443) through the frame tunnel
	ingressPort int // -publish-vsock → -ingress: the public HTTPS server over the fast path
	forwardPort int // -publish-vsock → -forward: the app's plain HTTP over the fast path
	hostMetrics int // quench-host -metrics
	hostHTTP    int // a server on the host's loopback, reached from the enclave through NAT
}

const (
	soakEnclaveMetrics = "127.0.0.1:9090" // in the namespace
	soakAppAddr        = "127.0.0.1:8081" // in the namespace
	soakBigBody        = 1 << 20
	soakProxyPort      = 8000 // quench-host -vsock-proxy: the parent's VSOCK port
)

func newSoakEnv(t *testing.T) *soakEnv {
	t.Helper()
	testutil.RequireRoot(t)
	s := &soakEnv{t: t, bin: testutil.Binaries(t), dir: t.TempDir(), ns: testutil.NewNS(t)}
	s.env = append(os.Environ(), endpoint.EnvVSockDir+"="+s.dir)
	s.tunnelPort, s.ingressPort, s.forwardPort = testutil.FreePort(t), testutil.FreePort(t), testutil.FreePort(t)
	s.hostMetrics = testutil.FreePort(t)

	// The app, on the enclave's loopback: a short answer, and a 1 MiB one
	// for clients that give up half-way.
	big := make([]byte, soakBigBody)
	app := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/big" {
			_, _ = w.Write(big)
			return
		}
		fmt.Fprintf(w, "soak app; you are %s", r.RemoteAddr)
	})
	var ln net.Listener
	if err := s.ns.Do(func() (err error) {
		ln, err = net.Listen("tcp", soakAppAddr)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: app, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })

	hl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s.hostHTTP = hl.Addr().(*net.TCPAddr).Port
	serveHTTP(t, hl, "hello from the host")

	s.hostArgs = []string{
		"-listen", "vsock://:1024", "-enclave-cid", "16",
		"-publish", fmt.Sprintf("127.0.0.1:%d:443", s.tunnelPort),
		"-publish-vsock", fmt.Sprintf("127.0.0.1:%d:8443", s.ingressPort),
		"-publish-vsock", fmt.Sprintf("127.0.0.1:%d:8080", s.forwardPort),
		"-metrics", fmt.Sprintf("127.0.0.1:%d", s.hostMetrics),
		// vsock-proxy's role, to the same server on the host's loopback.
		"-vsock-proxy", fmt.Sprintf("%d:127.0.0.1:%d", soakProxyPort, s.hostHTTP),
		// The enclave's log, on a VSOCK stream of its own.
		"-enclave-logs", "vsock://:1025",
	}
	s.enclaveArgs = []string{
		"-host", "vsock://3:1024", "-resolv-conf", filepath.Join(s.dir, "resolv.conf"),
		"-app-url", "http://" + soakAppAddr, "-ingress", "vsock://16:8443",
		"-forward", "vsock://16:8080=" + soakAppAddr,
		"-metrics", soakEnclaveMetrics, "-dev-attester",
		"-dev-root-out", filepath.Join(s.dir, "dev-root.pem"),
		"-log-to", "vsock://3:1025",
		// An egress policy for what the load reaches (the egress NAT
		// path), so that the TAP egress filter carries every frame of
		// the tunnel through the disruptions too.
		"-allow", fmt.Sprintf("%s:%d/tcp", hostLoopback, s.hostHTTP),
	}
	return s
}

func (s *soakEnv) startHost() {
	s.t.Helper()
	cmd := exec.Command(filepath.Join(s.bin, "quench-host"), s.hostArgs...)
	cmd.Env = s.env
	s.host = testutil.Start(s.t, "quench-host", cmd)
	testutil.WaitFor(s.t, 10*time.Second, "quench-host listening", func() error {
		c, err := net.Dial("unix", endpoint.StandInPath(s.dir, endpoint.ParentCID, 1024))
		if err != nil {
			return err
		}
		return c.Close()
	})
}

func (s *soakEnv) startEnclave() {
	s.t.Helper()
	cmd := s.ns.Command(filepath.Join(s.bin, "quench-enclave"), s.enclaveArgs...)
	cmd.Env = s.env
	s.enclave = testutil.Start(s.t, "quench-enclave", cmd)
}

// soakClient is one kind of traffic the load mixes.
type soakClient struct {
	name string
	do   func(ctx context.Context) error
}

// soakTransports are the clients' two HTTP transports: one that keeps
// connections alive and one that opens a new connection per request. TLS
// certificates are not checked: documents bind the self-signed certificate.
func soakTransports() (keep, fresh *http.Transport, closeIdle func()) {
	tlsConf := &tls.Config{InsecureSkipVerify: true}
	keep = &http.Transport{TLSClientConfig: tlsConf, MaxIdleConnsPerHost: 64}
	fresh = &http.Transport{TLSClientConfig: tlsConf, DisableKeepAlives: true}
	return keep, fresh, func() { keep.CloseIdleConnections(); fresh.CloseIdleConnections() }
}

// soakRequest GETs url with tr and hands the response to check.
func soakRequest(ctx context.Context, tr *http.Transport, url string, check func(*http.Response) error) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := tr.RoundTrip(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	return check(resp)
}

// soakGet GETs url and wants a 200 whose body contains want.
func soakGet(tr *http.Transport, url, want string) func(context.Context) error {
	return func(ctx context.Context) error {
		return soakRequest(ctx, tr, url, func(resp *http.Response) error {
			b, err := io.ReadAll(resp.Body)
			if err != nil {
				return err
			}
			if resp.StatusCode != http.StatusOK || !strings.Contains(string(b), want) {
				return fmt.Errorf("GET %s: %s %.80q", url, resp.Status, b)
			}
			return nil
		})
	}
}

// soakAbandon reads the first KiB of a long answer and closes.
func soakAbandon(tr *http.Transport, url string) func(context.Context) error {
	return func(ctx context.Context) error {
		return soakRequest(ctx, tr, url, func(resp *http.Response) error {
			_, err := io.ReadFull(resp.Body, make([]byte, 1024))
			return err
		})
	}
}

// soakAttest asks for an attestation document with a fresh nonce.
func soakAttest(tr *http.Transport, base string) func(context.Context) error {
	return func(ctx context.Context) error {
		var nonce [20]byte
		_, _ = rand.Read(nonce[:])
		return soakGet(tr, base+"/enclave/attestation?nonce="+hex.EncodeToString(nonce[:]), "")(ctx)
	}
}

// soakConnectClose opens a connection to each port and closes it before
// sending anything. It is paced: unpaced, two workers open ~3000
// connections a second, more than the machine retires, and fill
// quench-host's connection limit (which then resets clients, as designed).
func soakConnectClose(ports ...int) func(context.Context) error {
	return func(ctx context.Context) error {
		time.Sleep(5 * time.Millisecond)
		for _, p := range ports {
			var d net.Dialer
			c, err := d.DialContext(ctx, "tcp", fmt.Sprintf("127.0.0.1:%d", p))
			if err != nil {
				return err
			}
			_ = c.Close()
		}
		return nil
	}
}

func (s *soakEnv) clients() (cs []soakClient, closeIdle func()) {
	keep, fresh, closeTransports := soakTransports()
	// A program in the enclave that dials the parent's VSOCK port, as
	// kmstool does, a new connection per request.
	proxy := &http.Transport{DisableKeepAlives: true, DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", endpoint.StandInPath(s.dir, endpoint.ParentCID, soakProxyPort))
	}}
	closeIdle = func() { closeTransports(); proxy.CloseIdleConnections() }
	tunnel := fmt.Sprintf("https://127.0.0.1:%d", s.tunnelPort)
	ingress := fmt.Sprintf("https://127.0.0.1:%d", s.ingressPort)
	forward := fmt.Sprintf("http://127.0.0.1:%d", s.forwardPort)
	return []soakClient{
		{"tunnel keep-alive", soakGet(keep, tunnel+"/", "soak app")},
		{"tunnel new connections", soakGet(fresh, tunnel+"/", "soak app")},
		{"ingress keep-alive", soakGet(keep, ingress+"/", "soak app; you are")},
		{"ingress new connections", soakGet(fresh, ingress+"/", "soak app")},
		{"forward keep-alive", soakGet(keep, forward+"/", "soak app")},
		{"attestation", soakAttest(keep, ingress)},
		{"abandoned downloads", func(ctx context.Context) error {
			if err := soakAbandon(fresh, tunnel+"/big")(ctx); err != nil {
				return err
			}
			return soakAbandon(fresh, forward+"/big")(ctx)
		}},
		{"connect and close", soakConnectClose(s.tunnelPort, s.ingressPort, s.forwardPort)},
		{"egress NAT", s.getHostHTTP},
		{"vsock-proxy", soakGet(proxy, "http://kms.example/", "hello from the host")},
	}, closeIdle
}

// getHostHTTP GETs the server on the host's loopback from inside the
// enclave's namespace, through quench-host's NAT.
func (s *soakEnv) getHostHTTP(ctx context.Context) error {
	var d net.Dialer
	if dl, ok := ctx.Deadline(); ok {
		d.Deadline = dl
	}
	return getHostHTTPIn(s.ns, &d, net.JoinHostPort(hostLoopback, strconv.Itoa(s.hostHTTP)))
}

// soakLoad runs every client in its own goroutines until stop is called;
// stop returns the calls that failed per client.
func (s *soakEnv) soakLoad(workers int) (stop func() map[string]int64) {
	cs, closeIdle := s.clients()
	return runLoad(cs, closeIdle, workers)
}

// runLoad runs each client in workers goroutines (testutil.Load) until
// stop is called; stop closes idle connections and returns the calls that
// succeeded ("ok") and those that failed per client. A path that is down
// fails at once, so a failed call is followed by a short pause.
func runLoad(cs []soakClient, closeIdle func(), workers int) (stop func() map[string]int64) {
	stops := make([]func() testutil.LoadResult, len(cs))
	for i, c := range cs {
		stops[i] = testutil.Load(workers, func() error {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			err := c.do(ctx)
			if err != nil {
				time.Sleep(50 * time.Millisecond)
			}
			return err
		})
	}
	return func() map[string]int64 {
		m := map[string]int64{}
		for i, c := range cs {
			r := stops[i]()
			m["ok"] += r.OK
			if r.Failed > 0 {
				m[c.name] = r.Failed
			}
		}
		closeIdle()
		return m
	}
}

// checkAll runs each client once and returns the first failure, and the
// clients that took longer than half a second (a SYN retransmitted, say).
func (s *soakEnv) checkAll() (slow []string, err error) {
	cs, closeIdle := s.clients()
	defer closeIdle()
	return checkClients(cs)
}

func checkClients(cs []soakClient) (slow []string, err error) {
	for _, c := range cs {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		start := time.Now()
		err := c.do(ctx)
		cancel()
		if err != nil {
			return slow, fmt.Errorf("%s: %w", c.name, err)
		}
		if d := time.Since(start); d > 500*time.Millisecond {
			slow = append(slow, fmt.Sprintf("%s %v", c.name, d.Round(time.Millisecond)))
		}
	}
	return slow, nil
}

// usage is what a process holds: open descriptors (from /proc) and
// goroutines (from its metrics).
type usage struct{ fds, goroutines int }

func (u usage) String() string { return fmt.Sprintf("%d fds, %d goroutines", u.fds, u.goroutines) }

func (s *soakEnv) usage(p *testutil.Process, metrics func() (*http.Response, error)) (usage, error) {
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", p.Cmd.Process.Pid))
	if err != nil {
		return usage{}, err
	}
	resp, err := metrics()
	if err != nil {
		return usage{}, err
	}
	defer resp.Body.Close()
	g := -1
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "go_goroutines "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				return usage{}, err
			}
			g = int(f)
		}
	}
	if g < 0 {
		return usage{}, fmt.Errorf("no go_goroutines in the metrics")
	}
	return usage{fds: len(ents), goroutines: g}, nil
}

func (s *soakEnv) hostUsage() (usage, error) {
	return s.usage(s.host, func() (*http.Response, error) {
		return http.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", s.hostMetrics))
	})
}

func (s *soakEnv) enclaveUsage() (usage, error) {
	return s.usage(s.enclave, func() (*http.Response, error) {
		var c net.Conn
		if err := s.ns.Do(func() (err error) {
			c, err = net.DialTimeout("tcp", soakEnclaveMetrics, 3*time.Second)
			return err
		}); err != nil {
			return nil, err
		}
		tr := &http.Transport{DialContext: func(context.Context, string, string) (net.Conn, error) { return c, nil }, DisableKeepAlives: true}
		return (&http.Client{Transport: tr, Timeout: 5 * time.Second}).Get("http://enclave/metrics")
	})
}

// baseline is the least of a few readings over two seconds, once the
// warm-up's connections have had a moment to close.
func (s *soakEnv) baseline(what string, get func() (usage, error)) usage {
	s.t.Helper()
	b := usage{fds: 1 << 30, goroutines: 1 << 30}
	for range 8 {
		time.Sleep(250 * time.Millisecond)
		u, err := get()
		if err != nil {
			s.t.Fatalf("%s: %v", what, err)
		}
		b.fds, b.goroutines = min(b.fds, u.fds), min(b.goroutines, u.goroutines)
	}
	s.t.Logf("%s baseline: %v", what, b)
	return b
}

// settled waits until get reports no more than base plus slack, and fails
// the test with the last reading if that does not happen within 20 s: what
// the load left behind after it stopped must go away.
func (s *soakEnv) settled(what string, base usage, get func() (usage, error)) usage {
	s.t.Helper()
	const fdSlack, goroutineSlack = 16, 32
	var last usage
	var lastErr error
	deadline := time.Now().Add(20 * time.Second)
	for {
		last, lastErr = get()
		if lastErr == nil && last.fds <= base.fds+fdSlack && last.goroutines <= base.goroutines+goroutineSlack {
			return last
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("%s: holds %v after the load stopped, %v before it (slack %d fds, %d goroutines); last error %v",
				what, last, base, fdSlack, goroutineSlack, lastErr)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// round runs load for a moment, applies disrupt, checks that every path
// serves again within 10 s, runs load a moment longer and stops it. disrupt
// returns when its outage began to end (the kill, or the thaw); the log
// gives the time from then to the end of the first check that every path
// passed, and to its start.
func (s *soakEnv) round(name string, disrupt func() time.Time) {
	s.t.Helper()
	stop := s.soakLoad(2)
	time.Sleep(700 * time.Millisecond)
	t0 := disrupt()
	var errs []string // what failed on the way back, for the log
	var attempt time.Time
	var slow []string
	testutil.WaitFor(s.t, 10*time.Second, "every path after "+name, func() error {
		attempt = time.Now()
		var err error
		slow, err = s.checkAll()
		if err != nil {
			errs = append(errs, fmt.Sprintf("%v: %v", attempt.Sub(t0).Round(time.Millisecond), err))
		}
		return err
	})
	recovered, checked := attempt.Sub(t0), time.Since(t0)
	if recovered > 2*time.Second {
		s.t.Logf("%s: slow recovery:\n%s", name, strings.Join(errs, "\n"))
	}
	time.Sleep(300 * time.Millisecond)
	calls := stop()
	time.Sleep(time.Second)
	h, herr := s.hostUsage()
	e, eerr := s.enclaveUsage()
	s.t.Logf("%s: every path served again by %v after (the passing check began at %v; slow in it: %v); calls %v; a second later quench-host %v (%v), quench-enclave %v (%v)",
		name, checked.Round(time.Millisecond), recovered.Round(time.Millisecond), slow, calls, h, herr, e, eerr)
}

// soakRounds is the rounds per phase: 2, or QUENCH_SOAK_ROUNDS.
func soakRounds(t *testing.T) int {
	v := os.Getenv(EnvSoakRounds)
	if v == "" {
		return 2
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		t.Fatalf("%s=%q: want a positive number of rounds", EnvSoakRounds, v)
	}
	return n
}

// TestSoak runs the whole system under a mix of traffic on every path (the
// frame tunnel, the ingress fast path into the HTTPS server and into a
// -forward, attestation, abandoned downloads, bare connects, egress
// through NAT) while the host daemon is killed, restarted and frozen, then
// while the enclave is killed and restarted, and frozen. After each phase the process
// that stayed up must hold no more descriptors and goroutines than before
// the load, give or take a small slack: nothing a disruption cuts may leak.
// Rounds per phase: 2, or QUENCH_SOAK_ROUNDS (make soak).
func TestSoak(t *testing.T) {
	if testing.Short() {
		t.Skip("soak: runs the whole system under load for a while")
	}
	rounds := soakRounds(t)
	s := newSoakEnv(t)
	s.startHost()
	s.startEnclave()
	testutil.WaitFor(t, 30*time.Second, "every path serving", func() error { _, err := s.checkAll(); return err })

	warmUp := func() {
		stop := s.soakLoad(2)
		time.Sleep(time.Second)
		t.Logf("warm-up: %v", stop())
	}
	// The disruptions of the process p returns: killed and started again,
	// then frozen for 1.5 s.
	kill := func(p func() *testutil.Process, start func()) func() time.Time {
		return func() time.Time {
			t0 := time.Now()
			p().Kill()
			start()
			return t0
		}
	}
	freeze := func(p func() *testutil.Process) func() time.Time {
		return func() time.Time {
			_ = p().Cmd.Process.Signal(syscall.SIGSTOP)
			time.Sleep(1500 * time.Millisecond)
			_ = p().Cmd.Process.Signal(syscall.SIGCONT)
			return time.Now()
		}
	}
	// phase disrupts the daemon named what while the other one (kept,
	// measured by measure) stays up and must keep nothing.
	phase := func(what, kept string, p func() *testutil.Process, start func(), measure func() (usage, error)) {
		warmUp()
		base := s.baseline(kept, measure)
		for i := range rounds {
			s.round(fmt.Sprintf("%s killed and restarted (%d/%d)", what, i+1, rounds), kill(p, start))
			s.round(fmt.Sprintf("%s frozen for 1.5 s (%d/%d)", what, i+1, rounds), freeze(p))
		}
		t.Logf("%s after %d rounds: %v", kept, rounds, s.settled(kept, base, measure))
	}
	phase("host", "quench-enclave", func() *testutil.Process { return s.host }, s.startHost, s.enclaveUsage)
	phase("enclave", "quench-host", func() *testutil.Process { return s.enclave }, s.startEnclave, s.hostUsage)
	// The last enclave's log reached the host that stayed up.
	if out := s.host.Output(); !strings.Contains(out, `msg=enclave enclave="unix:uid=0" stream=quench line="time=`) || !strings.Contains(out, `enclave up`) {
		t.Errorf("the enclaves' log lines did not reach quench-host")
	}
}
