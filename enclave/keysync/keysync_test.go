package keysync

import (
	"bytes"
	"context"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/quenchnet/quench/attestation"
)

// handlerRef lets a server start before its Syncer exists (the Syncer
// needs the server's address).
type handlerRef struct{ h atomic.Pointer[http.Handler] }

func (r *handlerRef) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	h := r.h.Load()
	if h == nil {
		http.Error(w, "not yet", http.StatusServiceUnavailable)
		return
	}
	(*h).ServeHTTP(w, req)
}

// node is one enclave of a test deployment: a Syncer behind an httptest
// TLS server.
type node struct {
	s    *Syncer
	srv  *httptest.Server
	addr string
	ref  *handlerRef
	own  *tls.Certificate                // the certificate it starts with
	cert atomic.Pointer[tls.Certificate] // the certificate it serves
}

func testCert(tb testing.TB) *tls.Certificate {
	tb.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "keysync test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		tb.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
}

func devAttester(tb testing.TB, pcr0 byte) *attestation.DevAttester {
	tb.Helper()
	pcrs := map[uint][]byte{}
	if pcr0 != 0 {
		pcrs[0] = bytes.Repeat([]byte{pcr0}, 48)
	}
	a, err := attestation.NewDevAttester(attestation.DevConfig{PCRs: pcrs})
	if err != nil {
		tb.Fatal(err)
	}
	return a
}

// newServer starts an httptest TLS server whose handler is set later.
func newServer(tb testing.TB) (*httptest.Server, *handlerRef) {
	ref := &handlerRef{}
	srv := httptest.NewUnstartedServer(ref)
	srv.StartTLS()
	tb.Cleanup(srv.Close)
	return srv, ref
}

// newNode makes a node whose leader is at leader ("" = itself).
func newNode(tb testing.TB, att attestation.Attester, roots *x509.CertPool, leader string, mod func(*Config)) *node {
	tb.Helper()
	srv, ref := newServer(tb)
	n := &node{srv: srv, ref: ref, addr: srv.Listener.Addr().String(), own: testCert(tb)}
	n.cert.Store(n.own)
	if leader == "" {
		leader = n.addr
	}
	cfg := Config{
		Attester:          att,
		Roots:             roots,
		Leader:            leader,
		Advertise:         n.addr,
		HeartbeatInterval: 40 * time.Millisecond,
		WorkerTimeout:     300 * time.Millisecond,
		ElectionRetry:     20 * time.Millisecond,
		SyncTimeout:       5 * time.Second,
		Certificate:       n.cert.Load,
		InstallCertificate: func(c *tls.Certificate) error {
			n.cert.Store(c)
			return nil
		},
	}
	if mod != nil {
		mod(&cfg)
	}
	s, err := New(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	n.s = s
	h := s.ExternalHandler()
	ref.h.Store(&h)
	return n
}

func (n *node) start(tb testing.TB) {
	tb.Helper()
	if err := n.s.Start(context.Background()); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = n.s.Close() })
}

func waitFor(tb testing.TB, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func stateOf(tb testing.TB, n *node) (int, string) {
	tb.Helper()
	rec := httptest.NewRecorder()
	n.s.StateHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, StatePath, nil))
	return rec.Code, rec.Body.String()
}

func putState(tb testing.TB, n *node, body string) int {
	tb.Helper()
	rec := httptest.NewRecorder()
	n.s.StateHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodPut, StatePath, strings.NewReader(body)))
	return rec.Code
}

// TestLeaderAndWorkers: election, the app's state and the certificate reach
// both workers, new state is pushed, heartbeats keep the list and a dead
// worker is dropped.
func TestLeaderAndWorkers(t *testing.T) {
	att := devAttester(t, 0)
	leader := newNode(t, att, att.Roots(), "", nil)
	w1 := newNode(t, att, att.Roots(), leader.addr, nil)
	w2 := newNode(t, att, att.Roots(), leader.addr, nil)

	// Before election: 503 on both methods.
	if code, _ := stateOf(t, w1); code != http.StatusServiceUnavailable {
		t.Errorf("GET state before election: %d, want 503", code)
	}
	if code := putState(t, leader, "x"); code != http.StatusServiceUnavailable {
		t.Errorf("PUT state before election: %d, want 503", code)
	}

	leader.start(t)
	<-leader.s.Decided()
	if got := leader.s.Role(); got != RoleLeader {
		t.Fatalf("leader's role = %v", got)
	}
	if code := putState(t, leader, "app secret v1"); code != http.StatusOK {
		t.Fatalf("PUT state on the leader: %d", code)
	}
	w1.start(t)
	w2.start(t)
	for _, w := range []*node{w1, w2} {
		select {
		case <-w.s.Synced():
		case <-time.After(10 * time.Second):
			t.Fatalf("worker %s not synced", w.addr)
		}
		if got := w.s.Role(); got != RoleWorker {
			t.Errorf("worker's role = %v", got)
		}
		code, body := stateOf(t, w)
		if code != http.StatusOK || body != "app secret v1" {
			t.Errorf("worker GET state = %d %q", code, body)
		}
		if !bytes.Equal(w.cert.Load().Certificate[0], leader.own.Certificate[0]) {
			t.Errorf("worker %s does not have the leader's certificate", w.addr)
		}
		// Role-specific refusals, with nitriding's codes.
		if code := putState(t, w, "nope"); code != http.StatusGone {
			t.Errorf("PUT state on a worker: %d, want 410", code)
		}
	}
	if code, _ := stateOf(t, leader); code != http.StatusGone {
		t.Errorf("GET state on the leader: %d, want 410", code)
	}
	want := []string{w1.addr, w2.addr}
	if want[0] > want[1] {
		want[0], want[1] = want[1], want[0]
	}
	waitFor(t, "both workers listed", func() bool { return len(leader.s.Workers()) == 2 })
	if diff := cmp.Diff(want, leader.s.Workers()); diff != "" {
		t.Errorf("workers (-want +got):\n%s", diff)
	}

	// New state reaches the workers.
	if code := putState(t, leader, "app secret v2"); code != http.StatusOK {
		t.Fatal(code)
	}
	for _, w := range []*node{w1, w2} {
		waitFor(t, "v2 on "+w.addr, func() bool { _, b := stateOf(t, w); return b == "app secret v2" })
	}

	// Heartbeats keep the workers listed past WorkerTimeout.
	time.Sleep(2 * leader.s.cfg.WorkerTimeout)
	if got := len(leader.s.Workers()); got != 2 {
		t.Errorf("after 2 worker timeouts with heartbeats, %d workers listed, want 2", got)
	}
	// A dead worker is dropped.
	if err := w2.s.Close(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "dead worker dropped", func() bool {
		ws := leader.s.Workers()
		return len(ws) == 1 && ws[0] == w1.addr
	})
}

// TestForeignPCRsRefused: a worker whose image differs is never synced, in
// either direction.
func TestForeignPCRsRefused(t *testing.T) {
	good := devAttester(t, 0)
	bad := devAttester(t, 7)
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(good.RootPEM())
	roots.AppendCertsFromPEM(bad.RootPEM())

	leader := newNode(t, good, roots, "", nil)
	leader.start(t)
	<-leader.s.Decided()
	if code := putState(t, leader, "secret"); code != http.StatusOK {
		t.Fatal(code)
	}
	w := newNode(t, bad, roots, leader.addr, nil)
	w.start(t)
	<-w.s.Decided()
	if w.s.Role() != RoleWorker {
		t.Fatalf("role %v", w.s.Role())
	}
	// The leader tries at every heartbeat and refuses each time.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := leader.s.SyncWith(ctx, w.addr)
	if !errors.Is(err, ErrRefused) || !errors.Is(err, attestation.ErrPCRMismatch) {
		t.Fatalf("SyncWith a foreign worker: %v, want ErrRefused and ErrPCRMismatch", err)
	}
	time.Sleep(10 * w.s.cfg.HeartbeatInterval)
	if code, _ := stateOf(t, w); code != http.StatusServiceUnavailable {
		t.Errorf("foreign worker's state: %d, want 503 (never synced)", code)
	}
	if len(leader.s.Workers()) != 0 {
		t.Errorf("foreign worker listed: %v", leader.s.Workers())
	}
	if !bytes.Equal(w.cert.Load().Certificate[0], w.own.Certificate[0]) {
		t.Error("foreign worker got the leader's certificate")
	}
}

// fakeLeader drives a worker's /enclave/sync by hand.
type fakeLeader struct {
	t   *testing.T
	w   *node
	c   *http.Client
	url string
}

func newFakeLeader(t *testing.T, w *node) *fakeLeader {
	tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}
	t.Cleanup(tr.CloseIdleConnections)
	return &fakeLeader{t: t, w: w, c: &http.Client{Transport: tr, Timeout: 5 * time.Second}, url: "https://" + w.addr + SyncPath}
}

// begin runs GET /enclave/sync and returns the worker's nonce, key and the
// leader nonce used.
func (f *fakeLeader) begin() (workerNonce []byte, pub *ecdh.PublicKey, leaderNonce []byte) {
	f.t.Helper()
	leaderNonce = make([]byte, NonceSize)
	_, _ = rand.Read(leaderNonce)
	resp, err := f.c.Get(f.url + "?nonce=" + hex.EncodeToString(leaderNonce))
	if err != nil {
		f.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		f.t.Fatalf("GET sync: %s %s", resp.Status, b)
	}
	doc, _, err := decodeSyncMessage(b, false, DefaultMaxStateSize)
	if err != nil {
		f.t.Fatal(err)
	}
	res, err := attestation.Verify(doc, attestation.Options{Time: time.Now(), Roots: f.w.s.cfg.Roots, Nonce: leaderNonce})
	if err != nil {
		f.t.Fatal(err)
	}
	pub, err = ecdh.X25519().NewPublicKey(res.PublicKey)
	if err != nil {
		f.t.Fatal(err)
	}
	return res.UserData, pub, leaderNonce
}

func (f *fakeLeader) post(body []byte) (int, string) {
	f.t.Helper()
	resp, err := f.c.Post(f.url, "application/json", bytes.NewReader(body))
	if err != nil {
		f.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func message(doc, enc []byte) []byte {
	b, _ := json.Marshal(syncMessage{Document: base64.StdEncoding.EncodeToString(doc), EncryptedKeys: base64.StdEncoding.EncodeToString(enc)})
	return b
}

// TestWorkerRefusesBadSync: forged, tampered, foreign-image, unbound and
// replayed leader messages and oversized bodies are refused with clear
// errors, and nothing is installed; a correct one is accepted once.
func TestWorkerRefusesBadSync(t *testing.T) {
	att := devAttester(t, 0)
	foreignRoot := devAttester(t, 0) // same PCRs, root not trusted
	otherImage := devAttester(t, 9)  // trusted root, other PCR0
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(att.RootPEM())
	roots.AppendCertsFromPEM(otherImage.RootPEM())

	// A worker whose leader (a dead address) answers nothing: make it a
	// worker by answering its election request with 410 ourselves.
	w := newLoneWorker(t, att, roots)
	f := newFakeLeader(t, w)
	keys, _ := json.Marshal(&Keys{State: []byte("the secret")})
	ctx := context.Background()

	build := func(signer attestation.Attester, workerNonce []byte, pub *ecdh.PublicKey, leaderNonce []byte, bindOther bool) (doc, enc []byte) {
		enc, err := seal(pub, keys, syncAAD(workerNonce, leaderNonce))
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(enc)
		if bindOther {
			sum[0] ^= 1
		}
		doc, err = signer.Attest(ctx, attestation.Request{Nonce: workerNonce, UserData: sum[:]})
		if err != nil {
			t.Fatal(err)
		}
		return doc, enc
	}

	tests := []struct {
		name     string
		body     func() []byte
		wantCode int
		wantMsg  string
	}{
		{name: "malformed JSON", body: func() []byte { return []byte("{") }, wantCode: 400, wantMsg: "malformed"},
		{name: "no keys", body: func() []byte { return []byte(`{"document":"AAAA"}`) }, wantCode: 400, wantMsg: "no encrypted_keys"},
		{name: "garbage document", body: func() []byte { return message([]byte("not cbor"), []byte("x")) }, wantCode: 403, wantMsg: "refused"},
		{name: "oversized", body: func() []byte { return bytes.Repeat([]byte("a"), maxSyncBody(DefaultMaxStateSize)+1) }, wantCode: 413, wantMsg: "too large"},
		{name: "untrusted root", body: func() []byte {
			wn, pub, ln := f.begin()
			return message(build(foreignRoot, wn, pub, ln, false))
		}, wantCode: 403, wantMsg: "refused"},
		{name: "other image", body: func() []byte {
			wn, pub, ln := f.begin()
			return message(build(otherImage, wn, pub, ln, false))
		}, wantCode: 403, wantMsg: "PCR"},
		{name: "tampered document", body: func() []byte {
			wn, pub, ln := f.begin()
			doc, enc := build(att, wn, pub, ln, false)
			doc[len(doc)-1] ^= 1 // signature
			return message(doc, enc)
		}, wantCode: 403, wantMsg: "refused"},
		{name: "document does not bind the keys", body: func() []byte {
			wn, pub, ln := f.begin()
			return message(build(att, wn, pub, ln, true))
		}, wantCode: 403, wantMsg: "does not bind"},
		{name: "unknown nonce", body: func() []byte {
			_, pub, ln := f.begin()
			other := make([]byte, NonceSize)
			return message(build(att, other, pub, ln, false))
		}, wantCode: 409, wantMsg: "nonce"},
		{name: "wrong associated data", body: func() []byte {
			wn, pub, _ := f.begin()
			return message(build(att, wn, pub, make([]byte, NonceSize), false))
		}, wantCode: 403, wantMsg: "decrypt"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, msg := f.post(tc.body())
			if code != tc.wantCode || !strings.Contains(msg, tc.wantMsg) {
				t.Errorf("got %d %q, want %d containing %q", code, msg, tc.wantCode, tc.wantMsg)
			}
			if code, _ := stateOf(t, w); code != http.StatusServiceUnavailable {
				t.Errorf("state after a refused sync: %d, want 503", code)
			}
		})
	}

	// A correct message is accepted once; its replay is refused.
	wn, pub, ln := f.begin()
	good := message(build(att, wn, pub, ln, false))
	if code, msg := f.post(good); code != http.StatusOK {
		t.Fatalf("good sync: %d %s", code, msg)
	}
	if code, body := stateOf(t, w); code != 200 || body != "the secret" {
		t.Fatalf("state %d %q", code, body)
	}
	if code, msg := f.post(good); code != http.StatusConflict {
		t.Errorf("replay: %d %s, want 409", code, msg)
	}
}

// TestLeaderRefusesBadWorker: the leader refuses a worker answer with the
// wrong nonce (replayed document) or without a usable key.
func TestLeaderRefusesBadWorker(t *testing.T) {
	att := devAttester(t, 0)
	leader := newNode(t, att, att.Roots(), "", nil)
	leader.start(t)
	<-leader.s.Decided()

	var mu sync.Mutex
	var answer func(leaderNonce []byte) []byte
	srv, ref := newServer(t)
	var h http.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet {
			t.Errorf("leader posted keys to a refused worker")
			return
		}
		n, _ := attestation.ParseNonce(r.URL.Query().Get("nonce"))
		mu.Lock()
		defer mu.Unlock()
		_, _ = w.Write(answer(n))
	})
	ref.h.Store(&h)
	ctx := context.Background()
	key, _ := ecdh.X25519().GenerateKey(rand.Reader)
	wn := make([]byte, NonceSize)
	doc := func(req attestation.Request) []byte {
		d, err := att.Attest(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := json.Marshal(syncMessage{Document: base64.StdEncoding.EncodeToString(d)})
		return b
	}
	stale := doc(attestation.Request{Nonce: make([]byte, NonceSize), UserData: wn, PublicKey: key.PublicKey().Bytes()})
	for _, tc := range []struct {
		name   string
		answer func(n []byte) []byte
		want   error
	}{
		{"replayed document", func([]byte) []byte { return stale }, attestation.ErrNonceMismatch},
		{"no public key", func(n []byte) []byte { return doc(attestation.Request{Nonce: n, UserData: wn}) }, ErrRefused},
		{"short user data", func(n []byte) []byte {
			return doc(attestation.Request{Nonce: n, UserData: wn[:4], PublicKey: key.PublicKey().Bytes()})
		}, ErrRefused},
		{"keys in the answer", func(n []byte) []byte {
			return []byte(`{"document":"AAAA","encrypted_keys":"AAAA"}`)
		}, ErrMalformed},
		{"not JSON", func([]byte) []byte { return []byte("<html>") }, ErrMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mu.Lock()
			answer = tc.answer
			mu.Unlock()
			err := leader.s.SyncWith(ctx, srv.Listener.Addr().String())
			if !errors.Is(err, tc.want) {
				t.Errorf("got %v, want %v", err, tc.want)
			}
		})
	}
}

func TestElectionHandler(t *testing.T) {
	att := devAttester(t, 0)
	n := newNode(t, att, att.Roots(), "127.0.0.1:1", nil) // unreachable leader: stays undecided
	h := n.s.ExternalHandler()
	get := func(q string) int {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, LeaderPath+q, nil))
		return rec.Code
	}
	if got := get("?nonce=zz"); got != http.StatusBadRequest {
		t.Errorf("bad nonce: %d", got)
	}
	if got := get("?nonce=" + strings.Repeat("00", NonceSize)); got != http.StatusOK || n.s.Role() != RoleUndecided {
		t.Errorf("foreign nonce: %d, role %v", got, n.s.Role())
	}
	if got := get("?nonce=" + hex.EncodeToString(n.s.nonce[:])); got != http.StatusOK || n.s.Role() != RoleLeader {
		t.Errorf("own nonce: %d, role %v", got, n.s.Role())
	}
	if got := get("?nonce=" + strings.Repeat("00", NonceSize)); got != http.StatusGone {
		t.Errorf("after designation: %d, want 410", got)
	}
	// Heartbeats: malformed and oversized bodies.
	for _, tc := range []struct {
		body string
		want int
	}{
		{"{", 400},
		{`{"hashed_keys":"bm90IGEgaGFzaA=="}`, 400},
		{`{"worker_hostname":"a/b"}`, 400},
		{strings.Repeat(" ", maxHeartbeatBody+1), 413},
	} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, HeartbeatPath, strings.NewReader(tc.body)))
		if rec.Code != tc.want {
			t.Errorf("heartbeat %.20q: %d, want %d", tc.body, rec.Code, tc.want)
		}
	}
}

func TestConfigErrors(t *testing.T) {
	att := devAttester(t, 0)
	for _, tc := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"no attester", Config{Leader: "a:1"}, "Attester is required"},
		{"no leader", Config{Attester: att}, "Leader"},
		{"leader without port", Config{Attester: att, Leader: "leader"}, "host:port"},
		{"bad advertise", Config{Attester: att, Leader: "a:1", Advertise: "x/y"}, "Advertise"},
		{"bad PCR", Config{Attester: att, Leader: "a:1", PCRs: []uint{40}}, "PCR index"},
		{"negative", Config{Attester: att, Leader: "a:1", SyncTimeout: -1}, "negative SyncTimeout"},
		{"negative max syncs", Config{Attester: att, Leader: "a:1", MaxConcurrentSyncs: -1}, "negative MaxConcurrentSyncs"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want %q", err, tc.want)
			}
		})
	}
	// Own document must verify with Roots.
	s, err := New(Config{Attester: att, Leader: "127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(context.Background()); err == nil || !strings.Contains(err.Error(), "own attestation document") {
		t.Errorf("Start with the AWS root and a dev attester: %v", err)
	}
	_ = s.Close()
}

func TestSealOpen(t *testing.T) {
	key, _ := ecdh.X25519().GenerateKey(rand.Reader)
	other, _ := ecdh.X25519().GenerateKey(rand.Reader)
	aad := []byte("aad")
	env, err := seal(key.PublicKey(), []byte("plain"), aad)
	if err != nil {
		t.Fatal(err)
	}
	got, err := open(key, env, aad)
	if err != nil || string(got) != "plain" {
		t.Fatalf("open: %q %v", got, err)
	}
	for name, f := range map[string]func() ([]byte, error){
		"other key":     func() ([]byte, error) { return open(other, env, aad) },
		"other aad":     func() ([]byte, error) { return open(key, env, []byte("x")) },
		"flipped byte":  func() ([]byte, error) { e := bytes.Clone(env); e[40] ^= 1; return open(key, e, aad) },
		"short":         func() ([]byte, error) { return open(key, env[:10], aad) },
		"wrong version": func() ([]byte, error) { e := bytes.Clone(env); e[0] = 9; return open(key, e, aad) },
	} {
		if _, err := f(); !errors.Is(err, errDecrypt) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestKeysRoundTrip(t *testing.T) {
	c := testCert(t)
	k, err := keysFromCertificate(c, []byte("s"))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(k)
	got, err := decodeKeys(b, DefaultMaxStateSize)
	if err != nil {
		t.Fatal(err)
	}
	if got.Hash() != k.Hash() {
		t.Error("hash changed in transit")
	}
	gc, err := got.Certificate()
	if err != nil || !bytes.Equal(gc.Certificate[0], c.Certificate[0]) {
		t.Fatalf("certificate: %v", err)
	}
	// A key that does not match the certificate is refused.
	k2, _ := keysFromCertificate(testCert(t), nil)
	got.CertKey = k2.CertKey
	if _, err := got.Certificate(); !errors.Is(err, ErrMalformed) {
		t.Errorf("mismatched key: %v", err)
	}
	// State above the limit.
	big, _ := json.Marshal(&Keys{State: make([]byte, 100)})
	if _, err := decodeKeys(big, 10); !errors.Is(err, ErrTooLarge) {
		t.Errorf("big state: %v", err)
	}
	// The hash separates fields.
	a := Keys{State: []byte("ab")}
	bb := Keys{CertKey: []byte("a"), State: []byte("b")}
	if a.Hash() == bb.Hash() {
		t.Error("hash is ambiguous")
	}
}

func FuzzDecodeSyncMessage(f *testing.F) {
	f.Add([]byte(`{"document":"AAAA","encrypted_keys":"AAAA"}`), true)
	f.Add([]byte(`{"document":"AAAA"}`), false)
	f.Add([]byte(`{}`), true)
	f.Add([]byte(`[1,2]`), false)
	f.Add([]byte(`{"document":"\n","encrypted_keys":"\r\n"}`), true)
	f.Fuzz(func(t *testing.T, b []byte, withKeys bool) {
		doc, enc, err := decodeSyncMessage(b, withKeys, 1024)
		if err != nil {
			return
		}
		if len(doc) == 0 || len(doc) > attestation.MaxDocumentSize {
			t.Fatalf("document of %d bytes accepted", len(doc))
		}
		if withKeys && len(enc) == 0 {
			t.Fatal("keys missing")
		}
	})
}

func FuzzDecodeHeartbeat(f *testing.F) {
	f.Add([]byte(`{"hashed_keys":"` + base64.StdEncoding.EncodeToString(make([]byte, 32)) + `","worker_hostname":"ip-10-0-0-1.ec2.internal"}`))
	f.Add([]byte(`{"worker_hostname":"[::1]:444"}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		hash, hp, err := decodeHeartbeat(b)
		if err != nil {
			return
		}
		if hash != nil && len(hash) != sha256.Size {
			t.Fatalf("hash of %d bytes", len(hash))
		}
		if hp != "" && checkHostPort(hp) != nil {
			t.Fatalf("bad host %q accepted", hp)
		}
	})
}

func FuzzDecodeKeys(f *testing.F) {
	c := testCert(f)
	k, _ := keysFromCertificate(c, []byte("state"))
	b, _ := json.Marshal(k)
	f.Add(b)
	f.Add([]byte(`{"state":"AAAA"}`))
	f.Add([]byte(`{"cert_chain":["AAAA"]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		k, err := decodeKeys(b, 1<<10)
		if err != nil {
			return
		}
		if len(k.State) > 1<<10 {
			t.Fatal("state above limit")
		}
		_, _ = k.Certificate() // must not panic
		_ = k.Hash()
	})
}

func FuzzOpen(f *testing.F) {
	key, _ := ecdh.X25519().GenerateKey(rand.Reader)
	env, _ := seal(key.PublicKey(), []byte("x"), nil)
	f.Add(env)
	f.Add([]byte{1})
	f.Fuzz(func(t *testing.T, b []byte) {
		if pt, err := open(key, b, nil); err == nil && !bytes.Equal(b, env) {
			t.Fatalf("forged envelope opened: %q", pt)
		}
	})
}

// TestCloseNoLeaks: after Close (and the servers' Close) no goroutine of a
// leader or worker is left.
func TestCloseNoLeaks(t *testing.T) {
	before := runtime.NumGoroutine()
	func() {
		att := devAttester(t, 0)
		leader := newNode(t, att, att.Roots(), "", nil)
		w := newNode(t, att, att.Roots(), leader.addr, nil)
		leader.start(t)
		w.start(t)
		select {
		case <-w.s.Synced():
		case <-time.After(10 * time.Second):
			t.Fatal("not synced")
		}
		for _, n := range []*node{leader, w} {
			if err := n.s.Close(); err != nil {
				t.Fatal(err)
			}
			if err := n.s.Close(); !errors.Is(err, net.ErrClosed) {
				t.Errorf("second Close: %v", err)
			}
			n.srv.Close()
		}
	}()
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<16)
			t.Fatalf("%d goroutines, %d before:\n%s", runtime.NumGoroutine(), before, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func BenchmarkSealOpen(b *testing.B) {
	key, _ := ecdh.X25519().GenerateKey(rand.Reader)
	plain := make([]byte, 4<<10)
	aad := syncAAD(make([]byte, NonceSize), make([]byte, NonceSize))
	b.ReportAllocs()
	b.SetBytes(int64(len(plain)))
	for b.Loop() {
		env, err := seal(key.PublicKey(), plain, aad)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := open(key, env, aad); err != nil {
			b.Fatal(err)
		}
	}
}

// TestHeartbeatFloodBounded: every unauthenticated heartbeat naming a new
// worker_hostname would start a background sync (goroutine, dial, up to
// SyncTimeout). Whoever reaches the key sync port (the host, any VPC peer)
// must not grow the leader's goroutines and connections without limit:
// syncs in flight are capped at MaxConcurrentSyncs, the rest counted, and
// one worker is never synced twice at once.
func TestHeartbeatFloodBounded(t *testing.T) {
	att := devAttester(t, 0)
	var leaderAddr string
	var dials sync.Map // addr -> *atomic.Int32
	n := newNode(t, att, att.Roots(), "", func(c *Config) {
		c.SyncTimeout = 30 * time.Second
		c.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
			if addr == leaderAddr {
				var d net.Dialer
				return d.DialContext(ctx, network, addr)
			}
			v, _ := dials.LoadOrStore(addr, new(atomic.Int32))
			v.(*atomic.Int32).Add(1)
			<-ctx.Done() // a black-holed worker address
			return nil, ctx.Err()
		}
	})
	leaderAddr = n.addr
	n.start(t)
	waitFor(t, "leader", func() bool { return n.s.Role() == RoleLeader })
	before := runtime.NumGoroutine()
	h := n.s.ExternalHandler()
	heartbeat := func(worker string) {
		t.Helper()
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, HeartbeatPath, strings.NewReader(`{"worker_hostname":"`+worker+`"}`)))
		if rec.Code != http.StatusOK {
			t.Fatalf("heartbeat for %s: %d", worker, rec.Code)
		}
	}
	// The same worker, again and again: one sync.
	for range 20 {
		heartbeat("10.9.9.9:444")
	}
	const flood = 5000
	for i := range flood {
		heartbeat(fmt.Sprintf("10.%d.%d.1:444", i/256, i%256))
	}
	time.Sleep(200 * time.Millisecond)
	if grown := runtime.NumGoroutine() - before; grown > 100 {
		t.Fatalf("%d forged heartbeats left %d more goroutines on the leader (syncs in flight, each up to SyncTimeout): no bound", flood, grown)
	}
	n.s.mu.Lock()
	inFlight := len(n.s.syncing)
	n.s.mu.Unlock()
	if inFlight > DefaultMaxConcurrentSyncs {
		t.Errorf("%d syncs in flight, want at most %d", inFlight, DefaultMaxConcurrentSyncs)
	}
	if d := n.s.DroppedSyncs(); d < flood-DefaultMaxConcurrentSyncs {
		t.Errorf("DroppedSyncs = %d, want at least %d", d, flood-DefaultMaxConcurrentSyncs)
	}
	if v, ok := dials.Load("10.9.9.9:444"); !ok || v.(*atomic.Int32).Load() != 1 {
		t.Errorf("repeated heartbeats of one worker: want exactly 1 dial, got %v", v)
	}
}

// TestForgedHeartbeatsListNoWorker: heartbeats are unauthenticated, and the
// hash of the leader's key material they carry is no secret (genuine workers
// send it over TLS whose certificate nobody checks, so the host reads it;
// without a certificate and state, as with ACME before the first PUT
// /enclave/state, it is the hash of empty Keys). Heartbeats with the current
// hash and made-up worker_hostnames must not list workers the leader never
// synced: each entry would stay for WorkerTimeout (memory without bound)
// and take SetState's pushes away from the genuine workers.
func TestForgedHeartbeatsListNoWorker(t *testing.T) {
	att := devAttester(t, 0)
	var leaderAddr string
	n := newNode(t, att, att.Roots(), "", func(c *Config) {
		c.WorkerTimeout = time.Hour
		c.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
			if addr == leaderAddr {
				var d net.Dialer
				return d.DialContext(ctx, network, addr)
			}
			return nil, errors.New("no enclave at this address")
		}
	})
	leaderAddr = n.addr
	n.start(t)
	waitFor(t, "leader", func() bool { return n.s.Role() == RoleLeader })
	if code := putState(t, n, "app secret"); code != http.StatusOK {
		t.Fatal(code)
	}
	keys, err := n.s.leaderKeys()
	if err != nil {
		t.Fatal(err)
	}
	sum := keys.Hash() // what every synced worker's heartbeat shows
	hash := base64.StdEncoding.EncodeToString(sum[:])
	h := n.s.ExternalHandler()
	const forged = 2000
	for i := range forged {
		forgeHeartbeat(t, h, i, fmt.Sprintf(`"hashed_keys":%q,`, hash))
	}
	waitNoSyncs(t, n.s, "syncs with the forged workers to end")
	if got := len(n.s.Workers()); got != 0 {
		t.Fatalf("%d forged heartbeats with the leader's hash listed %d workers that were never synced (kept for WorkerTimeout, pushed to at every SetState)", forged, got)
	}
}

// newLoneWorker makes a started worker whose leader answers every election
// request with 410 (and nothing else).
func newLoneWorker(t *testing.T, att attestation.Attester, roots *x509.CertPool) *node {
	t.Helper()
	gone, gref := newServer(t)
	var h http.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusGone) })
	gref.h.Store(&h)
	w := newNode(t, att, roots, gone.Listener.Addr().String(), nil)
	w.start(t)
	<-w.s.Decided()
	if w.s.Role() != RoleWorker {
		t.Fatalf("role %v", w.s.Role())
	}
	return w
}

// TestSyncBodiesBounded: POST /enclave/sync is read whole (up to
// maxSyncBody, about 1.9 MB with the default state limit) before anything
// in it can be verified. Whoever reaches the key sync port (the host, any
// VPC peer) must not make a worker hold one such buffer per concurrent
// request (HTTP/2 allows 250 per connection): the enclave's memory would be
// theirs to exhaust.
func TestSyncBodiesBounded(t *testing.T) {
	att := devAttester(t, 0)
	w := newLoneWorker(t, att, att.Roots())
	const conns = 32
	limit := maxSyncBody(DefaultMaxStateSize)
	body := bytes.Repeat([]byte("A"), limit-1) // all but the last byte: the handler keeps waiting
	copy(body, `{"document":"`)

	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	var wg sync.WaitGroup
	var cs []net.Conn
	var mu sync.Mutex
	for range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := tls.Dial("tcp", w.addr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}})
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			cs = append(cs, c)
			mu.Unlock()
			_ = c.SetWriteDeadline(time.Now().Add(10 * time.Second))
			fmt.Fprintf(c, "POST %s HTTP/1.1\r\nHost: worker\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n", SyncPath, limit)
			_, _ = c.Write(body) // fails once the worker refused and closed
		}()
	}
	wg.Wait()
	defer func() {
		for _, c := range cs {
			_ = c.Close()
		}
	}()
	time.Sleep(200 * time.Millisecond) // the last writes reach the handlers
	runtime.GC()
	runtime.ReadMemStats(&after)
	grown := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	t.Logf("%d stalled POSTs of %d bytes: heap grew by %.1f MB", conns, limit, float64(grown)/(1<<20))
	if max := int64(8 * limit); grown > max {
		t.Fatalf("%d stalled POST /enclave/sync from an unauthenticated peer hold %.1f MB of the worker's heap (more than %.1f MB): no bound on bodies read at once",
			conns, float64(grown)/(1<<20), float64(max)/(1<<20))
	}
}

// gatedAttester holds Attest calls, once armed, until release is closed,
// and records how many were held at once.
type gatedAttester struct {
	attestation.Attester
	armed          atomic.Bool
	inFlight, peak atomic.Int32
	release        chan struct{}
}

func (g *gatedAttester) Attest(ctx context.Context, req attestation.Request) ([]byte, error) {
	if g.armed.Load() {
		n := g.inFlight.Add(1)
		defer g.inFlight.Add(-1)
		for p := g.peak.Load(); n > p && !g.peak.CompareAndSwap(p, n); p = g.peak.Load() {
		}
		select {
		case <-g.release:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return g.Attester.Attest(ctx, req)
}

// TestSyncAttestationsBounded: every GET /enclave/sync makes the worker
// attest, and anyone who reaches the key sync port may ask. The NSM serves
// one request at a time, so requests without a bound (they are outside
// enclave.Config.MaxAttestations) queue ahead of the public
// /enclave/attestation and of the genuine leader's sync, a goroutine each.
// A worker attests for at most maxPending of them at once and answers the
// others 503 at once.
func TestSyncAttestationsBounded(t *testing.T) {
	dev := devAttester(t, 0)
	g := &gatedAttester{Attester: dev, release: make(chan struct{})}
	w := newLoneWorker(t, g, dev.Roots())
	g.armed.Store(true)
	released := false
	defer func() {
		if !released {
			close(g.release)
		}
	}()

	tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	const requests = 40
	var answered atomic.Int32
	var busy atomic.Int32
	var wg sync.WaitGroup
	for range requests {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := c.Get("https://" + w.addr + SyncPath + "?nonce=" + strings.Repeat("ab", NonceSize))
			if err != nil {
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusServiceUnavailable {
				busy.Add(1)
			}
			answered.Add(1)
		}()
	}
	waitFor(t, "every request answered or attesting", func() bool {
		return answered.Load()+g.inFlight.Load() == requests
	})
	if p := g.peak.Load(); p > maxPending {
		t.Errorf("%d unauthenticated GET %s attested %d at once, want at most %d", requests, SyncPath, p, maxPending)
	}
	close(g.release)
	released = true
	wg.Wait()
	if b := busy.Load(); b < requests-maxPending {
		t.Errorf("%d answers 503, want at least %d", b, requests-maxPending)
	}
}

// TestNoRedirects: the protocol has no redirects, and whoever answers a
// peer request may be the host (peers' TLS certificates are not checked).
// Following a redirect would let the host aim the enclave's own requests
// (GET, or POST with its body for 307/308) at any URL it names, plain
// http:// to the enclave's loopback included: the internal server
// (/enclave/ready, /enclave/hash) and apps that trust loopback. No request
// of the election, of heartbeats or of a sync may follow one.
func TestNoRedirects(t *testing.T) {
	var hits atomic.Int32
	internal := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if hits.Add(1) == 1 {
			t.Logf("loopback service reached: %s %s", r.Method, r.URL)
		}
	}))
	defer internal.Close()
	att := devAttester(t, 0)

	for _, tc := range []struct {
		name   string
		answer func(w http.ResponseWriter, r *http.Request) // the host as the leader
	}{
		{"election", func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, internal.URL+"/enclave/ready", http.StatusFound)
		}},
		{"heartbeat", func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == LeaderPath {
				w.WriteHeader(http.StatusGone)
				return
			}
			http.Redirect(w, r, internal.URL+"/enclave/hash", http.StatusTemporaryRedirect)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hits.Store(0)
			host, ref := newServer(t)
			var h http.Handler = http.HandlerFunc(tc.answer)
			ref.h.Store(&h)
			n := newNode(t, att, att.Roots(), host.Listener.Addr().String(), nil)
			n.start(t)
			time.Sleep(10 * n.s.cfg.HeartbeatInterval)
			if got := hits.Load(); got != 0 {
				t.Errorf("the host's redirects made the enclave send %d requests to a loopback service", got)
			}
		})
	}

	t.Run("sync", func(t *testing.T) {
		hits.Store(0)
		leader := newNode(t, att, att.Roots(), "", nil)
		leader.start(t)
		waitFor(t, "leader", func() bool { return leader.s.Role() == RoleLeader })
		host, ref := newServer(t) // the host as a worker
		var h http.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, internal.URL+"/enclave/ready", http.StatusFound)
		})
		ref.h.Store(&h)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		err := leader.s.SyncWith(ctx, host.Listener.Addr().String())
		if err == nil {
			t.Error("SyncWith a redirecting worker succeeded")
		}
		if got := hits.Load(); got != 0 {
			t.Errorf("the host's redirect made the leader send %d requests to a loopback service (SyncWith: %v)", got, err)
		}
	})
}

// countedConn counts itself open until its first Close.
type countedConn struct {
	net.Conn
	once sync.Once
	open *atomic.Int32
}

func (c *countedConn) Close() error {
	c.once.Do(func() { c.open.Add(-1) })
	return c.Conn.Close()
}

// TestForgedWorkersLeaveNoIdleConns: every heartbeat naming a new
// worker_hostname makes the leader connect there. When whoever answers
// (the host: it answers any address) completes the exchange, even with a
// refused document, the connection is kept alive for reuse under that
// name for IdleConnTimeout (90 s): a descriptor, two goroutines and
// buffers each. Syncs in flight are bounded (TestHeartbeatFloodBounded),
// the connections they leave behind must be too.
func TestForgedWorkersLeaveNoIdleConns(t *testing.T) {
	att := devAttester(t, 0)
	fake, fref := newServer(t) // the host, answering as every worker
	var h http.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, `{}`) // not a document: refused
	})
	fref.h.Store(&h)
	var leaderAddr string
	var open atomic.Int32
	n := newNode(t, att, att.Roots(), "", func(c *Config) {
		c.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
			if addr != leaderAddr {
				addr = fake.Listener.Addr().String()
			}
			var d net.Dialer
			conn, err := d.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			open.Add(1)
			return &countedConn{Conn: conn, open: &open}, nil
		}
	})
	leaderAddr = n.addr
	n.start(t)
	waitFor(t, "leader", func() bool { return n.s.Role() == RoleLeader })
	hx := n.s.ExternalHandler()
	const forged = 200
	for i := range forged {
		forgeHeartbeat(t, hx, i, "")
		waitNoSyncs(t, n.s, "the forged sync to end")
	}
	if got, max := open.Load(), int32(2*DefaultMaxConcurrentSyncs); got > max {
		t.Fatalf("%d forged heartbeats left %d connections of the leader open (kept alive for 90 s each), want at most %d", forged, got, max)
	}
}

// TestHeartbeatHashNotGuessable: workers' heartbeats carry the hash of the
// key material, and the host reads them (peers do not check each other's
// TLS certificates, so it can stand in the middle). Without a certificate
// (ACME, where each enclave obtains its own) the key material is the app's
// state alone: its plain hash would let the host test guesses of the state
// offline (a PIN, a choice among few values) and see when it changes.
func TestHeartbeatHashNotGuessable(t *testing.T) {
	att := devAttester(t, 0)
	noCert := func(c *Config) { c.Certificate = func() *tls.Certificate { return nil } }
	leader := newNode(t, att, att.Roots(), "", noCert)
	var mu sync.Mutex
	var seen []string // hashed_keys of the heartbeats, as the host reads them
	ext := leader.s.ExternalHandler()
	var rec http.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == HeartbeatPath {
			b, _ := io.ReadAll(r.Body)
			var hb heartbeat
			if json.Unmarshal(b, &hb) == nil && hb.HashedKeys != "" {
				mu.Lock()
				seen = append(seen, hb.HashedKeys)
				mu.Unlock()
			}
			r.Body = io.NopCloser(bytes.NewReader(b))
		}
		ext.ServeHTTP(w, r)
	})
	leader.ref.h.Store(&rec)
	leader.start(t)
	waitFor(t, "leader", func() bool { return leader.s.Role() == RoleLeader })
	const secret = "4711"
	if code := putState(t, leader, secret); code != http.StatusOK {
		t.Fatal(code)
	}
	w := newNode(t, att, att.Roots(), leader.addr, noCert)
	w.start(t)
	waitFor(t, "a heartbeat of the synced worker", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(seen) > 0
	})
	guess := (&Keys{State: []byte(secret)}).Hash()
	mu.Lock()
	defer mu.Unlock()
	for _, h := range seen {
		if h == base64.StdEncoding.EncodeToString(guess[:]) {
			t.Fatalf("the heartbeat's hashed_keys is the plain hash of the state: the host confirms the guess %q offline", secret)
		}
	}
}

// TestHeartbeatCostIndependentOfState: every heartbeat (unauthenticated, a
// few bytes, many per connection) is compared with the hash of the leader's
// key material. Hashing the whole state again for each (up to
// MaxStateSize, 1 MiB) would let anyone who reaches the key sync port spin
// the leader's CPU at a thousandfold amplification; the hash changes only
// with the state or the certificate.
func TestHeartbeatCostIndependentOfState(t *testing.T) {
	att := devAttester(t, 0)
	var leaderAddr string
	n := newNode(t, att, att.Roots(), "", func(c *Config) {
		c.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
			if addr == leaderAddr {
				var d net.Dialer
				return d.DialContext(ctx, network, addr)
			}
			<-ctx.Done() // a black-holed worker: its one sync stays in flight
			return nil, ctx.Err()
		}
	})
	leaderAddr = n.addr
	n.start(t)
	waitFor(t, "leader", func() bool { return n.s.Role() == RoleLeader })
	h := n.s.ExternalHandler()
	const beats = 300
	// The fastest of a few rounds, against noise from other processes.
	perBeat := func() time.Duration {
		best := time.Duration(1<<63 - 1)
		for range 3 {
			start := time.Now()
			for range beats {
				rec := httptest.NewRecorder()
				h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, HeartbeatPath, strings.NewReader(`{"worker_hostname":"10.9.9.9:444"}`)))
				if rec.Code != http.StatusOK {
					t.Fatalf("heartbeat: %d", rec.Code)
				}
			}
			best = min(best, time.Since(start)/beats)
		}
		return best
	}
	if err := n.s.SetState([]byte("small")); err != nil {
		t.Fatal(err)
	}
	small := perBeat()
	if err := n.s.SetState(make([]byte, DefaultMaxStateSize)); err != nil {
		t.Fatal(err)
	}
	large := perBeat()
	t.Logf("one heartbeat: %v with 5 bytes of state, %v with %d", small, large, DefaultMaxStateSize)
	if large > 5*small+50*time.Microsecond {
		t.Errorf("a heartbeat costs the leader %v with %d bytes of state against %v with 5: the state is hashed for every unauthenticated heartbeat", large, DefaultMaxStateSize, small)
	}
	// New state and a new certificate still change the hash heartbeats are
	// compared with.
	for _, change := range []func(){
		func() { _ = n.s.SetState([]byte("new")) },
		func() { n.cert.Store(testCert(t)) },
	} {
		change()
		k, err := n.s.leaderKeys()
		if err != nil {
			t.Fatal(err)
		}
		if got, err := n.s.leaderHash(); err != nil || got != k.Hash() {
			t.Errorf("leaderHash after a change: %x, %v; want %x", got, err, k.Hash())
		}
	}
}

// forgeHeartbeat posts to h, a leader's external handler, an unauthenticated
// heartbeat from made-up worker i (10.x.y.1:444), with fields (JSON members
// followed by a comma) before worker_hostname.
func forgeHeartbeat(t *testing.T, h http.Handler, i int, fields string) {
	t.Helper()
	body := fmt.Sprintf(`{%s"worker_hostname":"10.%d.%d.1:444"}`, fields, i/256, i%256)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, HeartbeatPath, strings.NewReader(body)))
	if rec.Code != http.StatusOK {
		t.Fatalf("heartbeat %d: %d", i, rec.Code)
	}
}

// waitNoSyncs waits until s, a leader, has no sync in flight.
func waitNoSyncs(t *testing.T, s *Syncer, what string) {
	t.Helper()
	waitFor(t, what, func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return len(s.syncing) == 0
	})
}
