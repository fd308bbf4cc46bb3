package e2e

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/quenchnet/quench/attestation"
	"github.com/quenchnet/quench/enclave"
	"github.com/quenchnet/quench/host"
	"github.com/quenchnet/quench/internal/endpoint"
	"github.com/quenchnet/quench/internal/testutil"
)

// usSoakEnv is TestSoak's system for a Go app importing package enclave in
// userspace mode: quench-host (the library) and the enclave in this
// process, on the VSOCK stand-in, as examples/hello runs.
type usSoakEnv struct {
	t           *testing.T
	dir         string
	tunnelPort  int // -publish → the enclave's :443 through the frame tunnel
	ingressPort int // -publish-vsock → the enclave's ingress listener
	hostHTTP    int // a server on the host's loopback (192.168.127.254)

	h      *host.Host
	served chan struct{}
	e      *enclave.Enclave
	att    attestation.Attester
}

func newUSSoakEnv(t *testing.T) *usSoakEnv {
	u := &usSoakEnv{t: t, dir: t.TempDir(), tunnelPort: testutil.FreePort(t), ingressPort: testutil.FreePort(t)}
	hl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u.hostHTTP = hl.Addr().(*net.TCPAddr).Port
	serveHTTP(t, hl, "hello from the host")
	if u.att, err = attestation.NewDevAttester(attestation.DevConfig{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if u.e != nil {
			_ = u.e.Close()
		}
		if u.h != nil {
			u.stopHost()
		}
	})
	return u
}

func (u *usSoakEnv) startHost() {
	u.t.Helper()
	pub, err := host.ParsePublish(fmt.Sprintf("127.0.0.1:%d:443", u.tunnelPort))
	if err != nil {
		u.t.Fatal(err)
	}
	fast, err := host.ParsePublishVSock(fmt.Sprintf("127.0.0.1:%d:8443", u.ingressPort))
	if err != nil {
		u.t.Fatal(err)
	}
	h, err := host.New(host.Config{
		Publish: []host.Publish{pub, fast},
		DialEnclave: func(ctx context.Context, port uint32) (net.Conn, error) {
			return endpoint.Dial(ctx, endpoint.Addr{Scheme: "vsock", CID: 16, Port: port}, endpoint.Options{VSockDir: u.dir})
		},
	})
	if err != nil {
		u.t.Fatal(err)
	}
	if err := h.Start(context.Background()); err != nil {
		u.t.Fatal(err)
	}
	ln, err := endpoint.Listen(endpoint.Addr{Scheme: "vsock", CID: endpoint.AnyCID, Port: 1024},
		endpoint.Options{VSockDir: u.dir, LocalCID: endpoint.ParentCID})
	if err != nil {
		_ = h.Close()
		u.t.Fatal(err)
	}
	u.h, u.served = h, make(chan struct{})
	go func() { defer close(u.served); _ = h.Serve(ln) }()
}

func (u *usSoakEnv) stopHost() {
	_ = u.h.Close()
	<-u.served
	u.h = nil
}

func (u *usSoakEnv) startEnclave() {
	u.t.Helper()
	big := make([]byte, soakBigBody)
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "soak app in process; you are %s", r.RemoteAddr)
	})
	mux.HandleFunc("/big", func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write(big) })
	opts := endpoint.Options{VSockDir: u.dir}
	e, err := enclave.New(enclave.Config{
		Network: enclave.NetworkUserspace,
		DialHost: func(ctx context.Context) (net.Conn, error) {
			return endpoint.Dial(ctx, endpoint.Addr{Scheme: "vsock", CID: endpoint.ParentCID, Port: 1024}, opts)
		},
		Handler: mux,
		IngressListen: func() (net.Listener, error) {
			return endpoint.Listen(endpoint.Addr{Scheme: "vsock", CID: 16, Port: 8443}, opts)
		},
		InternalAddr: "-",
		Attester:     u.att,
	})
	if err != nil {
		u.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := e.Start(ctx); err != nil {
		u.t.Fatal(err)
	}
	if err := e.Ready(); err != nil {
		u.t.Fatal(err)
	}
	u.e = e
}

func (u *usSoakEnv) clients() ([]soakClient, func()) {
	keep, fresh, closeIdle := soakTransports()
	tunnel := fmt.Sprintf("https://127.0.0.1:%d", u.tunnelPort)
	ingress := fmt.Sprintf("https://127.0.0.1:%d", u.ingressPort)
	e := u.e // the enclave of this load: a restarted one gets new clients
	egress := &http.Transport{DialContext: e.Dial, DisableKeepAlives: true}
	return []soakClient{
		{"tunnel keep-alive", soakGet(keep, tunnel+"/", "soak app in process")},
		{"tunnel new connections", soakGet(fresh, tunnel+"/", "soak app in process")},
		{"ingress keep-alive", soakGet(keep, ingress+"/", "soak app in process; you are 127.0.0.1:")},
		{"ingress new connections", soakGet(fresh, ingress+"/", "soak app in process")},
		{"attestation", soakAttest(keep, ingress)},
		{"abandoned downloads", func(ctx context.Context) error {
			if err := soakAbandon(fresh, tunnel+"/big")(ctx); err != nil {
				return err
			}
			return soakAbandon(fresh, ingress+"/big")(ctx)
		}},
		{"connect and close", soakConnectClose(u.tunnelPort, u.ingressPort)},
		{"egress NAT (enclave.Dial)", soakGet(egress, "http://"+net.JoinHostPort(hostLoopback, strconv.Itoa(u.hostHTTP))+"/", "hello from the host")},
	}, func() { closeIdle(); egress.CloseIdleConnections() }
}

// usage is this process's descriptors and goroutines: host, enclave and
// the test's clients (idle) together.
func (u *usSoakEnv) usage() (usage, error) {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return usage{}, err
	}
	return usage{fds: len(ents), goroutines: runtime.NumGoroutine()}, nil
}

func (u *usSoakEnv) round(name string, disrupt func() time.Time) {
	u.t.Helper()
	cs, closeIdle := u.clients()
	stop := runLoad(cs, closeIdle, 2)
	time.Sleep(700 * time.Millisecond)
	t0 := disrupt()
	calls := stop()            // the enclave's clients may be for one that is gone
	checking := time.Since(t0) // stop waits for requests cut by the disruption (up to their 5 s timeout)
	var slow, errs []string
	testutil.WaitFor(u.t, 10*time.Second, "every path after "+name, func() error {
		cs, closeIdle := u.clients()
		defer closeIdle()
		var err error
		slow, err = checkClients(cs)
		if err != nil {
			errs = append(errs, fmt.Sprintf("%v: %v", time.Since(t0).Round(time.Millisecond), err))
		}
		return err
	})
	recovered := time.Since(t0)
	if recovered-checking > 2*time.Second {
		u.t.Logf("%s: slow recovery:\n%s", name, strings.Join(errs, "\n"))
	}
	cs, closeIdle = u.clients()
	stop = runLoad(cs, closeIdle, 2)
	time.Sleep(300 * time.Millisecond)
	after := stop()
	time.Sleep(time.Second)
	now, err := u.usage()
	u.t.Logf("%s: checks began %v after, every path served again by %v after (slow in the passing check: %v); calls before %v, after %v; a second later %v (%v)",
		name, checking.Round(time.Millisecond), recovered.Round(time.Millisecond), slow, calls, after, now, err)
}

// TestSoakUserspace is TestSoak for a Go app importing package enclave in
// userspace mode (gVisor's TCP in the enclave), host and enclave in this
// process: load on every path (the frame tunnel, the ingress fast path,
// attestation, abandoned downloads, bare connects, egress through
// enclave.Dial) while quench-host is closed and started again, then while
// the enclave is closed and started again. Afterwards the process must
// hold no more descriptors and goroutines than before, give or take a
// small slack. It needs no root. Rounds per phase: 2, or QUENCH_SOAK_ROUNDS.
func TestSoakUserspace(t *testing.T) {
	if testing.Short() {
		t.Skip("soak: runs the whole system under load for a while")
	}
	rounds := soakRounds(t)
	u := newUSSoakEnv(t)
	u.startHost()
	u.startEnclave()
	check := func() error {
		cs, closeIdle := u.clients()
		defer closeIdle()
		_, err := checkClients(cs)
		return err
	}
	testutil.WaitFor(t, 30*time.Second, "every path serving", check)
	warmUp := func() {
		cs, closeIdle := u.clients()
		stop := runLoad(cs, closeIdle, 2)
		time.Sleep(time.Second)
		t.Logf("warm-up: %v", stop())
	}
	warmUp()
	s := &soakEnv{t: t}
	base := s.baseline("host and enclave (one process)", u.usage)
	for i := range rounds {
		u.round(fmt.Sprintf("host closed and started again (%d/%d)", i+1, rounds), func() time.Time {
			t0 := time.Now()
			u.stopHost()
			u.startHost()
			return t0
		})
	}
	for i := range rounds {
		u.round(fmt.Sprintf("enclave closed and started again (%d/%d)", i+1, rounds), func() time.Time {
			t0 := time.Now()
			if err := u.e.Close(); err != nil {
				t.Errorf("enclave Close: %v", err)
			}
			u.startEnclave()
			return t0
		})
	}
	t.Logf("after %d rounds each: %v", rounds, s.settled("host and enclave (one process)", base, u.usage))
}
