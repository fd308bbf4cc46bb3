package enclave_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/quenchnet/quench/attestation"
	"github.com/quenchnet/quench/enclave"
	"github.com/quenchnet/quench/enclave/keysync"
	"github.com/quenchnet/quench/host"
	"github.com/quenchnet/quench/internal/testutil"
)

// These tests run three enclaves (userspace mode, each with its own
// in-process quench-host) that synchronise keys over the real path: the
// worker's netstack → its host's NAT (host loopback 192.168.127.254) →
// the leader's host's published port → the leader's key sync listener.

// ksHostLoopback is the host-loopback address of the hosts' default
// virtual network: connections to it reach 127.0.0.1 on this machine.
const ksHostLoopback = "192.168.127.254"

type ksEnclave struct {
	enc     *enclave.Enclave
	public  string // 127.0.0.1:PORT published to :443
	sync    string // 127.0.0.1:PORT published to :444
	intBase string
}

// ksHost starts a host publishing 127.0.0.1:0 to the enclave's :443 and
// :444; it returns the socket and the two published addresses.
func ksHost(tb testing.TB) (sock, public, sync string) {
	tb.Helper()
	sock = filepath.Join(tb.TempDir(), "host.sock")
	h := startTestHost(tb, sock, host.Config{}, "127.0.0.1:0:443", "127.0.0.1:0:444")
	return sock, h.Published()[0].String(), h.Published()[1].String()
}

func ksPort(tb testing.TB, addr string) string {
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		tb.Fatal(err)
	}
	return p
}

// ksStart starts an enclave whose key sync leader is reached at
// leaderSync (a published address on this machine); mods adjust its
// Config.
func ksStart(tb testing.TB, att attestation.Attester, sock, public, sync, leaderSync string, mods ...func(*enclave.Config)) *ksEnclave {
	tb.Helper()
	cfg := enclave.Config{
		DialHost:     testutil.DialUnix(sock),
		ReconnectMin: 10 * time.Millisecond,
		ReconnectMax: 200 * time.Millisecond,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprint(w, "app")
		}),
		InternalAddr: "127.0.0.1:0",
		Attester:     att,
		DrainTimeout: 2 * time.Second,
		FQDNLeader:   net.JoinHostPort(ksHostLoopback, ksPort(tb, leaderSync)),
		KeySync: keysync.Config{
			Advertise:         net.JoinHostPort(ksHostLoopback, ksPort(tb, sync)),
			HeartbeatInterval: 50 * time.Millisecond,
			WorkerTimeout:     time.Second,
			ElectionRetry:     20 * time.Millisecond,
		},
	}
	for _, mod := range mods {
		mod(&cfg)
	}
	e := startEnclave(tb, cfg)
	addrs, err := e.Addrs()
	if err != nil {
		tb.Fatal(err)
	}
	if addrs.Sync == nil {
		tb.Fatal("no key sync address")
	}
	return &ksEnclave{enc: e, public: public, sync: sync, intBase: "http://" + addrs.Internal.String()}
}

func ksDo(tb testing.TB, method, u, body string) (int, string) {
	tb.Helper()
	req, err := http.NewRequest(method, u, strings.NewReader(body))
	if err != nil {
		tb.Fatal(err)
	}
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Do(req)
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// ksServedCert returns the leaf certificate served on addr.
func ksServedCert(tb testing.TB, addr string) []byte {
	tb.Helper()
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		tb.Fatal(err)
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0].Raw
}

func TestKeySyncThreeEnclaves(t *testing.T) {
	att, err := attestation.NewDevAttester(attestation.DevConfig{})
	if err != nil {
		t.Fatal(err)
	}
	socks, pubs, syncs := make([]string, 3), make([]string, 3), make([]string, 3)
	for i := range 3 {
		socks[i], pubs[i], syncs[i] = ksHost(t)
	}
	leader := ksStart(t, att, socks[0], pubs[0], syncs[0], syncs[0])
	ls, err := leader.enc.KeySync()
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-ls.Decided():
	case <-time.After(10 * time.Second):
		t.Fatal("leader election did not finish")
	}
	if ls.Role() != keysync.RoleLeader {
		t.Fatalf("leader's role %v", ls.Role())
	}
	if code, body := ksDo(t, http.MethodPut, leader.intBase+enclave.StatePath, "app keys v1"); code != http.StatusOK {
		t.Fatalf("PUT /enclave/state on the leader: %d %s", code, body)
	}
	leaderCert := ksServedCert(t, leader.public)

	workers := []*ksEnclave{
		ksStart(t, att, socks[1], pubs[1], syncs[1], syncs[0]),
		ksStart(t, att, socks[2], pubs[2], syncs[2], syncs[0]),
	}
	for i, w := range workers {
		deadline := time.Now().Add(15 * time.Second)
		for {
			code, body := ksDo(t, http.MethodGet, w.intBase+enclave.StatePath, "")
			if code == http.StatusOK && body == "app keys v1" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("worker %d: GET /enclave/state = %d %q", i, code, body)
			}
			time.Sleep(20 * time.Millisecond)
		}
		// The worker serves the leader's certificate, and its documents
		// bind it (VerifyRemote checks the hash of the certificate on
		// the connection).
		if got := ksServedCert(t, w.public); !bytes.Equal(got, leaderCert) {
			t.Errorf("worker %d serves its own certificate, not the leader's", i)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := attestation.VerifyRemote(ctx, "https://"+w.public, attestation.RemoteConfig{
			Options:   attestation.Options{Time: time.Now(), Roots: att.Roots()},
			TLSConfig: &tls.Config{InsecureSkipVerify: true},
		})
		cancel()
		if err != nil {
			t.Errorf("worker %d: attestation after sync: %v", i, err)
		}
		var h enclave.Health
		resp, err := (&http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}).Get("https://" + w.public + enclave.HealthPath)
		if err != nil {
			t.Fatal(err)
		}
		_ = json.NewDecoder(resp.Body).Decode(&h)
		resp.Body.Close()
		if h.KeySync != "worker" {
			t.Errorf("worker %d health key_sync = %q", i, h.KeySync)
		}
	}
	ws := ls.Workers()
	deadline := time.Now().Add(10 * time.Second)
	for len(ws) != 2 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
		ws = ls.Workers()
	}
	if len(ws) != 2 {
		t.Errorf("leader lists workers %v, want 2", ws)
	}
	// Role-specific status codes on the internal server.
	if code, _ := ksDo(t, http.MethodGet, leader.intBase+enclave.StatePath, ""); code != http.StatusGone {
		t.Errorf("GET state on the leader: %d, want 410", code)
	}
	if code, _ := ksDo(t, http.MethodPut, workers[0].intBase+enclave.StatePath, "x"); code != http.StatusGone {
		t.Errorf("PUT state on a worker: %d, want 410", code)
	}
}

func TestKeySyncOff(t *testing.T) {
	env := svStart(t, nil)
	if code, body := ksDo(t, http.MethodGet, env.intBase+enclave.StatePath, ""); code != http.StatusForbidden {
		t.Errorf("GET /enclave/state without key sync: %d %s, want 403", code, body)
	}
	if _, err := env.enc.KeySync(); err == nil {
		t.Error("KeySync() without FQDNLeader: no error")
	}
}

func TestKeySyncConfigErrors(t *testing.T) {
	app := http.NotFoundHandler()
	for _, tc := range []struct {
		name string
		cfg  enclave.Config
		want string
	}{
		{"leader without serving", enclave.Config{FQDNLeader: "leader.internal"}, "FQDNLeader needs serving"},
		{"sync addr without leader", enclave.Config{Handler: app, SyncAddr: ":444"}, "without FQDNLeader"},
		{"bad sync addr", enclave.Config{Handler: app, FQDNLeader: "l", SyncAddr: "444"}, "SyncAddr"},
		{"sync on the public port", enclave.Config{Handler: app, FQDNLeader: "l", SyncAddr: ":443"}, "also the public"},
		{"no port", enclave.Config{Handler: app, FQDNLeader: "l", SyncAddr: ":0"}, "names no port"},
		{"bad leader", enclave.Config{Handler: app, FQDNLeader: "a/b"}, "key synchronisation"},
		{"bad tuning", enclave.Config{Handler: app, FQDNLeader: "l", KeySync: keysync.Config{SyncTimeout: -time.Second}}, "negative SyncTimeout"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := enclave.New(tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
	// Defaults: nitriding's port for the leader.
	e, err := enclave.New(enclave.Config{Handler: app, FQDNLeader: "leader.internal"})
	if err != nil {
		t.Fatal(err)
	}
	if got := e.Config().KeySync.Leader; got != "leader.internal:444" {
		t.Errorf("KeySync.Leader = %q, want leader.internal:444", got)
	}
	if got := e.Config().SyncAddr; got != enclave.DefaultSyncAddr {
		t.Errorf("SyncAddr = %q", got)
	}
}

// TestKeySyncStartFails: an attester whose documents the key sync roots do
// not accept fails Start with a clear error, and releases everything.
func TestKeySyncStartFails(t *testing.T) {
	att, err := attestation.NewDevAttester(attestation.DevConfig{})
	if err != nil {
		t.Fatal(err)
	}
	sock, _, _ := ksHost(t)
	e, err := enclave.New(enclave.Config{
		DialHost:     testutil.DialUnix(sock),
		Handler:      http.NotFoundHandler(),
		InternalAddr: "127.0.0.1:0",
		Attester:     att,
		FQDNLeader:   "leader.internal",
		KeySync:      keysync.Config{Roots: attestation.AWSNitroRoots()},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = e.Start(ctx)
	if err == nil || !strings.Contains(err.Error(), "own attestation document does not verify") {
		t.Fatalf("Start: %v, want the own-document error", err)
	}
	if err := e.Close(); err != nil {
		t.Errorf("Close after a failed Start: %v", err)
	}
}

// TestPprofRefusesKeySync: while profiling is on, the public attestation
// endpoints refuse (profiles expose process memory); key synchronisation
// attests too (GET /enclave/sync answers any caller's nonce) and hands out
// or receives the TLS key and the app's state, so it is refused as well:
// New fails rather than serve it.
func TestPprofRefusesKeySync(t *testing.T) {
	_, err := enclave.New(enclave.Config{Handler: http.NotFoundHandler(), Pprof: true, FQDNLeader: "leader.internal"})
	if err == nil || !strings.Contains(err.Error(), "Pprof") || !strings.Contains(err.Error(), "FQDNLeader") {
		t.Fatalf("New with Pprof and FQDNLeader: %v, want a refusal naming both", err)
	}
	// Each alone is fine.
	for _, cfg := range []enclave.Config{
		{Handler: http.NotFoundHandler(), Pprof: true},
		{Handler: http.NotFoundHandler(), FQDNLeader: "leader.internal"},
	} {
		if _, err := enclave.New(cfg); err != nil {
			t.Errorf("New: %v", err)
		}
	}
}
