package keysync

import (
	"bytes"
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quenchnet/quench/attestation"
)

// Errors. Handlers answer them with a status code; Syncer methods wrap them.
var (
	// ErrUndecided: leader election has not finished (HTTP 503).
	ErrUndecided = errors.New("keysync: leader election in progress")
	// ErrNotLeader: the operation needs the leader (HTTP 410 on PUT
	// /enclave/state, as nitriding).
	ErrNotLeader = errors.New("keysync: this enclave is not the leader")
	// ErrNotWorker: the operation needs a worker (HTTP 410 on GET
	// /enclave/state).
	ErrNotWorker = errors.New("keysync: this enclave is not a worker")
	// ErrNotSynced: a worker has received no key material yet (HTTP 503).
	ErrNotSynced = errors.New("keysync: no key material received from the leader yet")
	// ErrTooLarge: a body or the state exceeds its limit (HTTP 413).
	ErrTooLarge = errors.New("keysync: too large")
	// ErrMalformed: a peer sent something that does not parse (HTTP 400).
	ErrMalformed = errors.New("keysync: malformed message")
	// ErrRefused: a peer's attestation document failed verification or
	// does not bind what it must (HTTP 403). Nothing was synced.
	ErrRefused = errors.New("keysync: peer refused")
	// ErrStaleNonce: a sync message names no outstanding nonce (replayed,
	// expired or never issued; HTTP 409). Nothing was synced.
	ErrStaleNonce = errors.New("keysync: unknown, expired or reused nonce")
	// ErrBusy: a worker is already handling as many synchronisation
	// requests as it holds outstanding nonces (HTTP 503 with Retry-After).
	// Nothing was read or synced.
	ErrBusy = errors.New("keysync: too many synchronisation requests in progress")
)

// Role is an enclave's place in its deployment.
type Role int32

// Roles.
const (
	RoleUndecided Role = iota // leader election in progress
	RoleLeader                // holds the key material, syncs workers
	RoleWorker                // receives the key material
)

func (r Role) String() string {
	switch r {
	case RoleUndecided:
		return "undecided"
	case RoleLeader:
		return "leader"
	case RoleWorker:
		return "worker"
	}
	return "Role(" + strconv.Itoa(int(r)) + ")"
}

// Defaults of Config.
const (
	DefaultPort               = 444 // nitriding's -ext-priv-port
	DefaultHeartbeatInterval  = 30 * time.Second
	DefaultElectionRetry      = time.Second
	DefaultSyncTimeout        = 30 * time.Second
	DefaultMaxDocumentAge     = 5 * time.Minute
	DefaultMaxStateSize       = 1 << 20 // nitriding's maxKeyMaterialLen
	DefaultMaxConcurrentSyncs = 8
)

// DefaultPCRs are the measurements compared between leader and workers:
// PCR0 (enclave image), PCR1 (kernel and boot ramfs), PCR2 (application).
// PCR3 (IAM role) and PCR4 (parent instance ID) differ between instances
// of one deployment.
var DefaultPCRs = []uint{0, 1, 2}

// Config configures a Syncer. Fields must not be changed after New.
type Config struct {
	// Attester produces this enclave's documents. Required.
	Attester attestation.Attester

	// Roots are the trusted roots for peers' documents (and this
	// enclave's own, from which Start learns its PCRs). Default: the AWS
	// Nitro root. With a development attester, its Roots.
	Roots *x509.CertPool

	// Leader is host:port of the leader's external endpoint (nitriding:
	// -fqdn-leader and -ext-priv-port). Required.
	Leader string

	// Advertise is where the leader reaches this enclave's external
	// endpoint, host or host:port, sent in heartbeats as worker_hostname.
	// Default: empty; the leader then uses the heartbeat's source address.
	Advertise string

	// WorkerPort is the port the leader uses for a worker whose heartbeat
	// names no port. Default: Leader's port (one port for the deployment,
	// as nitriding).
	WorkerPort int

	// Dial opens connections to peers. Default: a net.Dialer.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)

	// PCRs lists the PCR indices that must be equal in peers' documents
	// and this enclave's own. Default: DefaultPCRs.
	PCRs []uint

	// Certificate returns the TLS certificate the leader hands to its
	// workers; nil (or returning nil) syncs no certificate.
	Certificate func() *tls.Certificate

	// InstallCertificate is called on a worker with the leader's
	// certificate. Default: nil (the certificate is dropped).
	InstallCertificate func(*tls.Certificate) error

	// OnSync is called on a worker after it installed new key material.
	// Default: nil.
	OnSync func(Keys)

	// HeartbeatInterval is how often workers send heartbeats.
	// Default: DefaultHeartbeatInterval (30 s).
	HeartbeatInterval time.Duration

	// WorkerTimeout drops a worker from the leader's list when no
	// heartbeat arrived for this long. Default: 3 × HeartbeatInterval.
	WorkerTimeout time.Duration

	// ElectionRetry is the pause between leader-election attempts.
	// Default: DefaultElectionRetry (1 s).
	ElectionRetry time.Duration

	// SyncTimeout bounds one synchronisation, on the leader (both
	// requests) and on the worker (how long its nonce stays valid).
	// Default: DefaultSyncTimeout (30 s).
	SyncTimeout time.Duration

	// MaxConcurrentSyncs bounds the leader's synchronisations in flight,
	// started by heartbeats from workers whose keys are out of date.
	// Heartbeats are unauthenticated (the sync itself is attested), so
	// whoever reaches the external endpoint could otherwise start any
	// number of them, each a goroutine and a dial held up to SyncTimeout.
	// Past the bound, such heartbeats (and SetState's pushes) start no
	// sync: the worker is synced after a later heartbeat, since its key
	// material still differs. Dropped syncs are counted
	// (Syncer.DroppedSyncs) and logged at most once a minute. A worker
	// already being synced is never synced twice at once. Default:
	// DefaultMaxConcurrentSyncs (8).
	MaxConcurrentSyncs int

	// MaxDocumentAge bounds the age of peers' documents. Default:
	// DefaultMaxDocumentAge (5 min).
	MaxDocumentAge time.Duration

	// MaxStateSize bounds the app's state. Default: DefaultMaxStateSize
	// (1 MiB, nitriding's).
	MaxStateSize int

	// Now returns the current time, for document verification. Default:
	// time.Now.
	Now func() time.Time

	// Logger receives operational logs. Default: discard.
	Logger *slog.Logger
}

func (c Config) withDefaults() (Config, error) {
	if c.Attester == nil {
		return c, errors.New("keysync: Attester is required")
	}
	if c.Leader == "" {
		return c, errors.New("keysync: Leader (host:port of the leader's external endpoint) is required")
	}
	_, port, err := net.SplitHostPort(c.Leader)
	if err != nil {
		return c, fmt.Errorf("keysync: Leader %q: want host:port: %w", c.Leader, err)
	}
	if err := checkHostPort(c.Leader); err != nil {
		return c, fmt.Errorf("keysync: Leader: %w", err)
	}
	if c.Advertise != "" {
		if err := checkHostPort(c.Advertise); err != nil {
			return c, fmt.Errorf("keysync: Advertise: %w", err)
		}
	}
	if c.WorkerPort == 0 {
		p, _ := strconv.Atoi(port)
		c.WorkerPort = p
	}
	if c.WorkerPort <= 0 || c.WorkerPort > 65535 {
		return c, fmt.Errorf("keysync: WorkerPort %d out of range", c.WorkerPort)
	}
	if c.Dial == nil {
		d := &net.Dialer{Timeout: 10 * time.Second}
		c.Dial = d.DialContext
	}
	if c.PCRs == nil {
		c.PCRs = DefaultPCRs
	}
	for _, i := range c.PCRs {
		if i > 31 {
			return c, fmt.Errorf("keysync: PCR index %d out of range [0, 31]", i)
		}
	}
	if c.HeartbeatInterval == 0 {
		c.HeartbeatInterval = DefaultHeartbeatInterval
	}
	if c.WorkerTimeout == 0 {
		c.WorkerTimeout = 3 * c.HeartbeatInterval
	}
	if c.ElectionRetry == 0 {
		c.ElectionRetry = DefaultElectionRetry
	}
	if c.SyncTimeout == 0 {
		c.SyncTimeout = DefaultSyncTimeout
	}
	if c.MaxDocumentAge == 0 {
		c.MaxDocumentAge = DefaultMaxDocumentAge
	}
	if c.MaxStateSize == 0 {
		c.MaxStateSize = DefaultMaxStateSize
	}
	for name, d := range map[string]time.Duration{"HeartbeatInterval": c.HeartbeatInterval, "WorkerTimeout": c.WorkerTimeout,
		"ElectionRetry": c.ElectionRetry, "SyncTimeout": c.SyncTimeout, "MaxDocumentAge": c.MaxDocumentAge} {
		if d < 0 {
			return c, fmt.Errorf("keysync: negative %s %s", name, d)
		}
	}
	if c.MaxConcurrentSyncs == 0 {
		c.MaxConcurrentSyncs = DefaultMaxConcurrentSyncs
	}
	if c.MaxConcurrentSyncs < 0 {
		return c, fmt.Errorf("keysync: negative MaxConcurrentSyncs %d", c.MaxConcurrentSyncs)
	}
	if c.MaxStateSize < 0 {
		return c, fmt.Errorf("keysync: negative MaxStateSize %d", c.MaxStateSize)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c, nil
}

// maxPending bounds the worker's outstanding sync nonces, and the
// synchronisation requests it handles at once (see Syncer.handling).
const maxPending = 4

// pendingSync is a worker's half of a synchronisation in progress.
type pendingSync struct {
	workerNonce, leaderNonce []byte
	key                      *ecdh.PrivateKey
	expires                  time.Time
}

// Syncer runs key synchronisation for one enclave. Create it with New,
// serve ExternalHandler and StateHandler, then call Start; Close must be
// called once Start succeeded.
type Syncer struct {
	cfg    Config
	log    *slog.Logger
	client *http.Client
	nonce  [NonceSize]byte // election nonce
	salt   [saltSize]byte  // Keys.Salt of the key material the leader hands out

	role    atomic.Int32
	decided chan struct{} // closed when the role is decided
	once    sync.Once     // closes decided

	pcrs map[uint][]byte // own PCRs (cfg.PCRs), set by Start; read-only after

	mu       sync.Mutex
	state    []byte               // guarded by mu: leader's state, or the worker's synced state
	synced   bool                 // guarded by mu: a worker received keys
	keysHash [sha256.Size]byte    // guarded by mu: hash of the worker's keys
	stateGen uint64               // guarded by mu: the leader's SetState calls
	leaderHC leaderHashCache      // guarded by mu: see leaderHash
	workers  map[string]time.Time // guarded by mu: leader's workers, last heartbeat
	syncing  map[string]bool      // guarded by mu: leader's syncs in flight
	pending  []pendingSync        // guarded by mu: worker's outstanding syncs
	started  bool                 // guarded by mu
	closed   bool                 // guarded by mu

	// handling holds one token per /enclave/sync request a worker is
	// handling (at most maxPending): POST bodies, up to maxSyncBody each,
	// are read whole before anything in them can be verified, and each GET
	// is an attestation (the NSM serves one at a time), so a peer must not
	// make the worker hold any number of them at once.
	handling chan struct{}

	dropped  atomic.Uint64 // heartbeats that started no sync: MaxConcurrentSyncs in flight
	lastDrop atomic.Int64  // unix nanoseconds of the last log of a dropped sync

	syncedCh chan struct{} // closed at a worker's first sync
	ctx      context.Context
	cancel   context.CancelFunc
	wg       sync.WaitGroup
}

// New validates cfg and returns a Syncer. It does no I/O.
func New(cfg Config) (*Syncer, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	s := &Syncer{
		cfg:      cfg,
		log:      cfg.Logger,
		decided:  make(chan struct{}),
		workers:  map[string]time.Time{},
		syncing:  map[string]bool{},
		syncedCh: make(chan struct{}),
		handling: make(chan struct{}, maxPending),
	}
	if _, err := rand.Read(s.nonce[:]); err != nil {
		return nil, fmt.Errorf("keysync: nonce: %w", err)
	}
	if _, err := rand.Read(s.salt[:]); err != nil {
		return nil, fmt.Errorf("keysync: salt: %w", err)
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.client = &http.Client{
		Timeout: cfg.SyncTimeout,
		// The protocol has no redirects, and whoever answers may be the
		// host: following one would aim this enclave's requests at any
		// URL the host names, plain http:// to its own loopback services
		// (the internal server, the app) included. A 3xx is an answer
		// like any other non-200.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		Transport: &http.Transport{
			DialContext: cfg.Dial,
			// Peers' certificates are not checked: authenticity comes
			// from attestation documents, confidentiality of the keys
			// from their encryption to an attested key.
			TLSClientConfig:       &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS12}, //nolint:gosec // see above
			TLSHandshakeTimeout:   10 * time.Second,
			ResponseHeaderTimeout: cfg.SyncTimeout,
			MaxIdleConnsPerHost:   2,
			// Idle connections in total, not only per host: heartbeats
			// name any worker address, and every sync whose peer
			// answered (the host answers any address) would otherwise
			// leave one behind for IdleConnTimeout.
			MaxIdleConns:    2 * cfg.MaxConcurrentSyncs,
			IdleConnTimeout: 90 * time.Second,
		},
	}
	return s, nil
}

// Start learns this enclave's PCRs from a document of its own (verified
// with Roots) and starts leader election in the background; once decided,
// a worker sends heartbeats and a leader tracks its workers. ExternalHandler
// must be served by then (the leader finds itself through it). Start
// returns an error when the own document does not verify or lacks a PCR.
func (s *Syncer) Start(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return fmt.Errorf("keysync: %w", net.ErrClosed)
	}
	if s.started {
		return errors.New("keysync: already started")
	}
	pcrs, err := s.ownPCRs(ctx)
	if err != nil {
		return err
	}
	s.pcrs = pcrs
	s.started = true
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.run(s.ctx)
	}()
	return nil
}

func (s *Syncer) ownPCRs(ctx context.Context) (map[uint][]byte, error) {
	nonce := make([]byte, NonceSize)
	if _, err := rand.Read(nonce); err != nil {
		return nil, fmt.Errorf("keysync: nonce: %w", err)
	}
	doc, err := s.cfg.Attester.Attest(ctx, attestation.Request{Nonce: nonce})
	if err != nil {
		return nil, fmt.Errorf("keysync: own attestation document: %w", err)
	}
	res, err := attestation.Verify(doc, attestation.Options{Time: s.cfg.Now(), Roots: s.cfg.Roots, Nonce: nonce})
	if err != nil {
		return nil, fmt.Errorf("keysync: own attestation document does not verify with the configured roots (a development attester needs its Roots in Config.Roots): %w", err)
	}
	pcrs := make(map[uint][]byte, len(s.cfg.PCRs))
	for _, i := range s.cfg.PCRs {
		v, ok := res.PCRs[i]
		if !ok {
			return nil, fmt.Errorf("keysync: own attestation document has no PCR%d", i)
		}
		pcrs[i] = v
	}
	return pcrs, nil
}

// Close stops election, heartbeats and syncs in flight, and waits for
// them. A second call returns an error wrapping net.ErrClosed.
func (s *Syncer) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return fmt.Errorf("keysync: %w", net.ErrClosed)
	}
	s.closed = true
	s.mu.Unlock()
	s.cancel()
	s.wg.Wait()
	s.client.CloseIdleConnections()
	return nil
}

// Role returns this enclave's role.
func (s *Syncer) Role() Role { return Role(s.role.Load()) }

// Decided is closed once the role is decided.
func (s *Syncer) Decided() <-chan struct{} { return s.decided }

// Synced is closed once a worker installed key material for the first time.
func (s *Syncer) Synced() <-chan struct{} { return s.syncedCh }

func (s *Syncer) decide(r Role) bool {
	if !s.role.CompareAndSwap(int32(RoleUndecided), int32(r)) {
		return false
	}
	s.once.Do(func() { close(s.decided) })
	s.log.Info("key sync: role decided", "role", r.String(), "leader", s.cfg.Leader)
	return true
}

// SetState sets the app's state on the leader and pushes it to every
// listed worker (at most MaxConcurrentSyncs at once; the others get it
// after their next heartbeat). It fails with ErrUndecided, ErrNotLeader or ErrTooLarge.
func (s *Syncer) SetState(b []byte) error {
	switch s.Role() {
	case RoleUndecided:
		return ErrUndecided
	case RoleWorker:
		return ErrNotLeader
	}
	if len(b) > s.cfg.MaxStateSize {
		return fmt.Errorf("%w: state of %d bytes, at most %d", ErrTooLarge, len(b), s.cfg.MaxStateSize)
	}
	s.mu.Lock()
	s.state = bytes.Clone(b)
	s.stateGen++
	workers := make([]string, 0, len(s.workers))
	for w := range s.workers {
		workers = append(workers, w)
	}
	s.mu.Unlock()
	s.log.Info("key sync: app state set", "bytes", len(b), "workers", len(workers))
	for _, w := range workers {
		s.syncAsync(w)
	}
	return nil
}

// State returns the state a worker received. It fails with ErrUndecided,
// ErrNotWorker or ErrNotSynced.
func (s *Syncer) State() ([]byte, error) {
	switch s.Role() {
	case RoleUndecided:
		return nil, ErrUndecided
	case RoleLeader:
		return nil, ErrNotWorker
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.synced {
		return nil, ErrNotSynced
	}
	return bytes.Clone(s.state), nil
}

// Workers returns the leader's workers (host:port of their external
// endpoints), sorted; empty on workers.
func (s *Syncer) Workers() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]string, 0, len(s.workers))
	for w := range s.workers {
		out = append(out, w)
	}
	slices.Sort(out)
	return out
}

// run is the background loop: election, then the role's loop.
func (s *Syncer) run(ctx context.Context) {
	if !s.elect(ctx) {
		return
	}
	switch s.Role() {
	case RoleLeader:
		s.monitor(ctx)
	case RoleWorker:
		s.heartbeats(ctx)
	}
}

// elect asks the leader's endpoint until the role is decided; false when
// ctx ended first.
func (s *Syncer) elect(ctx context.Context) bool {
	u := url.URL{Scheme: "https", Host: s.cfg.Leader, Path: LeaderPath, RawQuery: "nonce=" + hex.EncodeToString(s.nonce[:])}
	attempts := 0
	for {
		if s.Role() != RoleUndecided {
			return true
		}
		code, err := s.get(ctx, u.String())
		switch {
		case err != nil:
			attempts++
			if attempts%10 == 1 {
				s.log.Warn("key sync: leader endpoint unreachable; retrying", "leader", s.cfg.Leader, "attempts", attempts, "err", err)
			}
		case code == http.StatusGone:
			s.decide(RoleWorker)
		case code == http.StatusOK:
			// Our own handler decides if the request reached us.
		default:
			s.log.Warn("key sync: unexpected answer from the leader endpoint", "leader", s.cfg.Leader, "status", code)
		}
		if s.Role() != RoleUndecided {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-s.decided:
			return true
		case <-time.After(s.cfg.ElectionRetry):
		}
	}
}

func (s *Syncer) get(ctx context.Context, u string) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return 0, err
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return 0, err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10))
	_ = resp.Body.Close()
	return resp.StatusCode, nil
}

// monitor drops workers whose heartbeats stopped.
func (s *Syncer) monitor(ctx context.Context) {
	t := time.NewTicker(max(s.cfg.WorkerTimeout/4, time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.prune(time.Now())
		}
	}
}

func (s *Syncer) prune(now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for w, seen := range s.workers {
		if now.Sub(seen) > s.cfg.WorkerTimeout {
			delete(s.workers, w)
			s.log.Info("key sync: worker dropped: no heartbeat", "worker", w, "last_seen", seen, "workers", len(s.workers))
		}
	}
}

// heartbeats sends the worker's heartbeats until ctx ends.
func (s *Syncer) heartbeats(ctx context.Context) {
	u := url.URL{Scheme: "https", Host: s.cfg.Leader, Path: HeartbeatPath}
	t := time.NewTicker(s.cfg.HeartbeatInterval)
	defer t.Stop()
	for {
		if err := s.heartbeat(ctx, u.String()); err != nil && ctx.Err() == nil {
			s.log.Warn("key sync: heartbeat failed", "leader", s.cfg.Leader, "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (s *Syncer) heartbeat(ctx context.Context, u string) error {
	hb := heartbeat{WorkerHostname: s.cfg.Advertise}
	s.mu.Lock()
	if s.synced {
		hb.HashedKeys = base64.StdEncoding.EncodeToString(s.keysHash[:])
	}
	s.mu.Unlock()
	body, err := json.Marshal(hb)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := s.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("keysync: leader answered %s: %s", resp.Status, bytes.TrimSpace(msg))
	}
	return nil
}

// leaderKeys is the key material the leader hands out now.
func (s *Syncer) leaderKeys() (*Keys, error) {
	k, _, err := s.leaderKeysGen()
	return k, err
}

// leaderKeysGen is leaderKeys with the certificate it holds and the state
// generation (stateGen) it was made of.
func (s *Syncer) leaderKeysGen() (*Keys, uint64, error) {
	var cert *tls.Certificate
	if s.cfg.Certificate != nil {
		cert = s.cfg.Certificate()
	}
	s.mu.Lock()
	state, gen := s.state, s.stateGen
	s.mu.Unlock()
	k, err := keysFromCertificate(cert, state)
	if err != nil {
		return nil, 0, err
	}
	k.Salt = s.salt[:]
	return k, gen, nil
}

// leaderHashCache is the last hash leaderHash computed and what it was
// computed of.
type leaderHashCache struct {
	ok   bool
	leaf []byte // the certificate's leaf (DER); nil for none
	gen  uint64 // stateGen
	sum  [sha256.Size]byte
}

// leaderHash is leaderKeys().Hash(), computed again only when the
// certificate or the state changed: every heartbeat compares with it, and
// heartbeats are unauthenticated and cost their sender a few bytes, so
// hashing the whole state (up to MaxStateSize) for each would let anyone
// who reaches the key sync port spin the leader's CPU.
func (s *Syncer) leaderHash() ([sha256.Size]byte, error) {
	var leaf []byte
	if s.cfg.Certificate != nil {
		if c := s.cfg.Certificate(); c != nil && len(c.Certificate) > 0 {
			leaf = c.Certificate[0]
		}
	}
	s.mu.Lock()
	c := s.leaderHC
	hit := c.ok && c.gen == s.stateGen && bytes.Equal(c.leaf, leaf)
	s.mu.Unlock()
	if hit {
		return c.sum, nil
	}
	k, gen, err := s.leaderKeysGen()
	if err != nil {
		return [sha256.Size]byte{}, err
	}
	var kl []byte
	if len(k.CertChain) > 0 {
		kl = k.CertChain[0]
	}
	sum := k.Hash()
	s.mu.Lock()
	s.leaderHC = leaderHashCache{ok: true, leaf: kl, gen: gen, sum: sum}
	s.mu.Unlock()
	return sum, nil
}

// syncAsync synchronises worker in the background unless a sync with it is
// already in flight or MaxConcurrentSyncs are (then it counts and, at most
// once a minute, logs the drop).
func (s *Syncer) syncAsync(worker string) {
	s.mu.Lock()
	if s.closed || s.syncing[worker] {
		s.mu.Unlock()
		return
	}
	if len(s.syncing) >= s.cfg.MaxConcurrentSyncs {
		s.mu.Unlock()
		n := s.dropped.Add(1)
		now := time.Now().UnixNano()
		if last := s.lastDrop.Load(); now-last >= int64(time.Minute) && s.lastDrop.CompareAndSwap(last, now) {
			s.log.Warn("key sync: sync with worker not started: MaxConcurrentSyncs in flight (heartbeats are unauthenticated: a flood, or many workers at once); it is retried at the worker's next heartbeat",
				"worker", worker, "max", s.cfg.MaxConcurrentSyncs, "dropped_total", n)
		}
		return
	}
	s.syncing[worker] = true
	s.wg.Add(1)
	s.mu.Unlock()
	go func() {
		defer s.wg.Done()
		ctx, cancel := context.WithTimeout(s.ctx, s.cfg.SyncTimeout)
		err := s.SyncWith(ctx, worker)
		cancel()
		s.mu.Lock()
		delete(s.syncing, worker)
		if err == nil {
			s.workers[worker] = time.Now()
		}
		n := len(s.workers)
		s.mu.Unlock()
		if err != nil {
			if s.ctx.Err() == nil {
				s.log.Warn("key sync: sync with worker failed", "worker", worker, "err", err)
			}
			return
		}
		s.log.Info("key sync: worker synced", "worker", worker, "workers", n)
	}()
}

// DroppedSyncs is how many synchronisations (from heartbeats or SetState)
// were not started because MaxConcurrentSyncs were in flight.
func (s *Syncer) DroppedSyncs() uint64 { return s.dropped.Load() }

// SyncWith runs one synchronisation with the worker whose external
// endpoint is at hostport (the leader's side of the protocol; see the
// package doc). Only the leader may call it.
func (s *Syncer) SyncWith(ctx context.Context, hostport string) error {
	if s.Role() != RoleLeader {
		return ErrNotLeader
	}
	leaderNonce := make([]byte, NonceSize)
	if _, err := rand.Read(leaderNonce); err != nil {
		return fmt.Errorf("keysync: nonce: %w", err)
	}
	u := url.URL{Scheme: "https", Host: hostport, Path: SyncPath}
	q := u
	q.RawQuery = "nonce=" + hex.EncodeToString(leaderNonce)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, q.String(), nil)
	if err != nil {
		return fmt.Errorf("keysync: %w", err)
	}
	body, err := s.do(req, maxSyncBody(s.cfg.MaxStateSize))
	if err != nil {
		return err
	}
	doc, _, err := decodeSyncMessage(body, false, s.cfg.MaxStateSize)
	if err != nil {
		return err
	}
	res, err := s.verifyPeer(doc, leaderNonce)
	if err != nil {
		return err
	}
	if len(res.UserData) != NonceSize {
		return fmt.Errorf("%w: worker's document: user_data is %d bytes, want its %d-byte nonce", ErrRefused, len(res.UserData), NonceSize)
	}
	pub, err := ecdh.X25519().NewPublicKey(res.PublicKey)
	if err != nil {
		return fmt.Errorf("%w: worker's document: public_key is not an X25519 key", ErrRefused)
	}
	workerNonce := res.UserData

	keys, err := s.leaderKeys()
	if err != nil {
		return err
	}
	plain, err := json.Marshal(keys)
	if err != nil {
		return fmt.Errorf("keysync: %w", err)
	}
	enc, err := seal(pub, plain, syncAAD(workerNonce, leaderNonce))
	if err != nil {
		return fmt.Errorf("keysync: encrypt: %w", err)
	}
	sum := sha256.Sum256(enc)
	ldoc, err := s.cfg.Attester.Attest(ctx, attestation.Request{Nonce: workerNonce, UserData: sum[:]})
	if err != nil {
		return fmt.Errorf("keysync: attest: %w", err)
	}
	msg, err := json.Marshal(syncMessage{
		Document:      base64.StdEncoding.EncodeToString(ldoc),
		EncryptedKeys: base64.StdEncoding.EncodeToString(enc),
	})
	if err != nil {
		return fmt.Errorf("keysync: %w", err)
	}
	req, err = http.NewRequestWithContext(ctx, http.MethodPost, u.String(), bytes.NewReader(msg))
	if err != nil {
		return fmt.Errorf("keysync: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	_, err = s.do(req, 4<<10)
	return err
}

// do sends req and returns the body of a 200 answer, at most limit bytes.
func (s *Syncer) do(req *http.Request, limit int) ([]byte, error) {
	resp, err := s.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("keysync: %s %s: %w", req.Method, req.URL.Path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, int64(limit)+1))
	if err != nil {
		return nil, fmt.Errorf("keysync: %s %s: read: %w", req.Method, req.URL.Path, err)
	}
	if resp.StatusCode != http.StatusOK {
		if len(b) > 512 {
			b = b[:512]
		}
		return nil, fmt.Errorf("keysync: %s %s: peer answered %s: %s", req.Method, req.URL.Path, resp.Status, bytes.TrimSpace(b))
	}
	if len(b) > limit {
		return nil, fmt.Errorf("%w: %s %s: answer above %d bytes", ErrTooLarge, req.Method, req.URL.Path, limit)
	}
	return b, nil
}

// verifyPeer checks a peer's document: chain, own PCRs, nonce (unless
// nil), age.
func (s *Syncer) verifyPeer(doc, nonce []byte) (*attestation.Result, error) {
	if len(s.pcrs) == 0 {
		// Not started: without our own PCRs nothing can be compared.
		return nil, fmt.Errorf("%w: not started", ErrRefused)
	}
	res, err := attestation.Verify(doc, attestation.Options{
		Time:   s.cfg.Now(),
		Roots:  s.cfg.Roots,
		PCRs:   s.pcrs,
		Nonce:  nonce,
		MaxAge: s.cfg.MaxDocumentAge,
	})
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrRefused, err)
	}
	return res, nil
}

// takePending removes and returns the outstanding sync for workerNonce.
func (s *Syncer) takePending(workerNonce []byte, now time.Time) (pendingSync, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, p := range s.pending {
		if bytes.Equal(p.workerNonce, workerNonce) {
			s.pending = slices.Delete(s.pending, i, i+1)
			return p, now.Before(p.expires)
		}
	}
	return pendingSync{}, false
}

func (s *Syncer) addPending(p pendingSync) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	s.pending = slices.DeleteFunc(s.pending, func(q pendingSync) bool { return !now.Before(q.expires) })
	if len(s.pending) >= maxPending {
		s.pending = slices.Delete(s.pending, 0, 1)
	}
	s.pending = append(s.pending, p)
}

// install stores keys received from the leader.
func (s *Syncer) install(k *Keys) error {
	cert, err := k.Certificate()
	if err != nil {
		return err
	}
	if cert != nil && s.cfg.InstallCertificate != nil {
		if err := s.cfg.InstallCertificate(cert); err != nil {
			return fmt.Errorf("keysync: install certificate: %w", err)
		}
	}
	s.mu.Lock()
	s.state = k.State
	s.keysHash = k.Hash()
	first := !s.synced
	s.synced = true
	s.mu.Unlock()
	if first {
		close(s.syncedCh)
	}
	if s.cfg.OnSync != nil {
		s.cfg.OnSync(*k)
	}
	return nil
}
