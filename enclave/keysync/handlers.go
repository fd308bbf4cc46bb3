package keysync

import (
	"bytes"
	"crypto/ecdh"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/quenchnet/quench/attestation"
)

// ExternalHandler serves the endpoints for other enclaves: LeaderPath,
// SyncPath and HeartbeatPath. Serve it with TLS on the external private
// listener.
func (s *Syncer) ExternalHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc(LeaderPath, s.handleLeader)
	mux.HandleFunc(SyncPath, s.handleSync)
	mux.HandleFunc(HeartbeatPath, s.handleHeartbeat)
	return mux
}

// StateHandler serves StatePath for the app (GET on workers, PUT on the
// leader), with nitriding's status codes: 503 during election (and on a
// worker before its first sync), 410 for the other role's method, 413 above
// MaxStateSize.
func (s *Syncer) StateHandler() http.Handler { return http.HandlerFunc(s.handleState) }

// httpError answers err with the status its sentinel maps to.
func httpError(w http.ResponseWriter, err error) {
	code := http.StatusInternalServerError
	switch {
	case errors.Is(err, ErrUndecided), errors.Is(err, ErrNotSynced):
		code = http.StatusServiceUnavailable
	case errors.Is(err, ErrBusy):
		code = http.StatusServiceUnavailable
		w.Header().Set("Retry-After", "1")
	case errors.Is(err, ErrNotLeader), errors.Is(err, ErrNotWorker):
		code = http.StatusGone
	case errors.Is(err, ErrTooLarge):
		code = http.StatusRequestEntityTooLarge
	case errors.Is(err, ErrMalformed):
		code = http.StatusBadRequest
	case errors.Is(err, ErrRefused):
		code = http.StatusForbidden
	case errors.Is(err, ErrStaleNonce):
		code = http.StatusConflict
	}
	http.Error(w, err.Error(), code)
}

// readBody reads at most limit bytes of r's body; more is ErrTooLarge.
func readBody(r *http.Request, limit int) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r.Body, int64(limit)+1))
	if err != nil {
		return nil, fmt.Errorf("%w: read body: %v", ErrMalformed, err)
	}
	if len(b) > limit {
		return nil, fmt.Errorf("%w: body above %d bytes", ErrTooLarge, limit)
	}
	return b, nil
}

func (s *Syncer) handleState(w http.ResponseWriter, r *http.Request) {
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		b, err := s.State()
		if err != nil {
			httpError(w, err)
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Cache-Control", "no-store")
		_, _ = w.Write(b)
	case http.MethodPut:
		switch s.Role() {
		case RoleUndecided:
			httpError(w, ErrUndecided)
			return
		case RoleWorker:
			httpError(w, ErrNotLeader)
			return
		}
		b, err := readBody(r, s.cfg.MaxStateSize)
		if err != nil {
			httpError(w, err)
			return
		}
		if err := s.SetState(b); err != nil {
			httpError(w, err)
			return
		}
		w.WriteHeader(http.StatusOK)
	default:
		w.Header().Set("Allow", "GET, PUT")
		http.Error(w, "use GET (workers) or PUT (the leader)", http.StatusMethodNotAllowed)
	}
}

// handleLeader is leader election: the enclave that receives its own nonce
// is the leader; the leader answers 410 Gone from then on.
func (s *Syncer) handleLeader(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", "GET")
		http.Error(w, "use GET", http.StatusMethodNotAllowed)
		return
	}
	nonce, err := attestation.ParseNonce(r.URL.Query().Get("nonce"))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	switch s.Role() {
	case RoleLeader:
		w.WriteHeader(http.StatusGone)
		return
	case RoleWorker:
		// Nobody should ask a worker; the deployment's leader name
		// points at the wrong enclave.
		http.Error(w, "this enclave is a worker, not the leader", http.StatusConflict)
		return
	}
	if bytes.Equal(nonce, s.nonce[:]) {
		s.decide(RoleLeader)
	} else {
		s.log.Debug("key sync: leader request with a foreign nonce during election", "from", r.RemoteAddr)
	}
	w.WriteHeader(http.StatusOK)
}

// takeSlot takes one of the worker's maxPending slots for a /enclave/sync
// request (see Syncer.handling), or answers ErrBusy and returns false.
func (s *Syncer) takeSlot(w http.ResponseWriter) bool {
	select {
	case s.handling <- struct{}{}:
		return true
	default:
		httpError(w, ErrBusy)
		return false
	}
}

func (s *Syncer) releaseSlot() { <-s.handling }

func (s *Syncer) handleSync(w http.ResponseWriter, r *http.Request) {
	switch r.Method {
	case http.MethodGet:
		s.handleSyncStart(w, r)
	case http.MethodPost:
		s.handleSyncFinish(w, r)
	default:
		w.Header().Set("Allow", "GET, POST")
		http.Error(w, "use GET or POST", http.StatusMethodNotAllowed)
	}
}

// handleSyncStart is the worker's answer to the leader's first request: a
// document binding the leader's nonce, a fresh nonce of its own and an
// ephemeral X25519 key.
func (s *Syncer) handleSyncStart(w http.ResponseWriter, r *http.Request) {
	if s.Role() != RoleWorker {
		httpError(w, ErrNotWorker)
		return
	}
	leaderNonce, err := attestation.ParseNonce(r.URL.Query().Get("nonce"))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if !s.takeSlot(w) {
		return
	}
	defer s.releaseSlot()
	workerNonce := make([]byte, NonceSize)
	if _, err := rand.Read(workerNonce); err != nil {
		httpError(w, fmt.Errorf("keysync: nonce: %w", err))
		return
	}
	key, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		httpError(w, fmt.Errorf("keysync: key: %w", err))
		return
	}
	doc, err := s.cfg.Attester.Attest(r.Context(), attestation.Request{
		Nonce:     leaderNonce,
		UserData:  workerNonce,
		PublicKey: key.PublicKey().Bytes(),
	})
	if err != nil {
		s.log.Error("key sync: attest", "err", err)
		httpError(w, fmt.Errorf("keysync: attest: %w", err))
		return
	}
	s.addPending(pendingSync{workerNonce: workerNonce, leaderNonce: leaderNonce, key: key, expires: time.Now().Add(s.cfg.SyncTimeout)})
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(syncMessage{Document: base64.StdEncoding.EncodeToString(doc)})
}

// handleSyncFinish is the worker receiving the leader's keys.
func (s *Syncer) handleSyncFinish(w http.ResponseWriter, r *http.Request) {
	if s.Role() != RoleWorker {
		httpError(w, ErrNotWorker)
		return
	}
	if !s.takeSlot(w) {
		return
	}
	defer s.releaseSlot()
	if err := s.finishSync(r); err != nil {
		s.log.Warn("key sync: refused keys", "from", r.RemoteAddr, "err", err)
		httpError(w, err)
		return
	}
	s.log.Info("key sync: keys received from the leader", "from", r.RemoteAddr)
	w.WriteHeader(http.StatusOK)
}

func (s *Syncer) finishSync(r *http.Request) error {
	body, err := readBody(r, maxSyncBody(s.cfg.MaxStateSize))
	if err != nil {
		return err
	}
	doc, enc, err := decodeSyncMessage(body, true, s.cfg.MaxStateSize)
	if err != nil {
		return err
	}
	// Verify before looking up the nonce, so forged messages cannot use
	// up outstanding nonces.
	res, err := s.verifyPeer(doc, nil)
	if err != nil {
		return err
	}
	p, ok := s.takePending(res.Nonce, time.Now())
	if !ok {
		return ErrStaleNonce
	}
	sum := sha256.Sum256(enc)
	if !bytes.Equal(res.UserData, sum[:]) {
		return fmt.Errorf("%w: the leader's document does not bind the encrypted keys", ErrRefused)
	}
	plain, err := open(p.key, enc, syncAAD(p.workerNonce, p.leaderNonce))
	if err != nil {
		return fmt.Errorf("%w: %w", ErrRefused, err)
	}
	keys, err := decodeKeys(plain, s.cfg.MaxStateSize)
	if err != nil {
		return err
	}
	return s.install(keys)
}

// handleHeartbeat is the leader receiving a worker's heartbeat: a worker
// whose keys differ from the leader's is synchronised (in the background);
// a listed one whose keys match is kept alive. A worker enters the list only
// through an attested synchronisation: heartbeats are unauthenticated and
// the hash they carry is no secret (the host reads it in genuine workers'
// heartbeats, whose TLS nobody verifies), so a matching hash from an
// unlisted worker_hostname is synchronised too, not listed on its word.
func (s *Syncer) handleHeartbeat(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", "POST")
		http.Error(w, "use POST", http.StatusMethodNotAllowed)
		return
	}
	if s.Role() != RoleLeader {
		httpError(w, ErrNotLeader)
		return
	}
	body, err := readBody(r, maxHeartbeatBody)
	if err != nil {
		httpError(w, err)
		return
	}
	hash, hostport, err := decodeHeartbeat(body)
	if err != nil {
		httpError(w, err)
		return
	}
	worker, err := s.workerAddr(r, hostport)
	if err != nil {
		httpError(w, err)
		return
	}
	want, err := s.leaderHash()
	if err != nil {
		httpError(w, err)
		return
	}
	known := false
	if hash != nil && bytes.Equal(hash, want[:]) {
		s.mu.Lock()
		if _, known = s.workers[worker]; known {
			s.workers[worker] = time.Now()
		}
		s.mu.Unlock()
	}
	if !known {
		s.syncAsync(worker)
	}
	w.WriteHeader(http.StatusOK)
}

// workerAddr is where the leader reaches the worker of a heartbeat.
func (s *Syncer) workerAddr(r *http.Request, hostport string) (string, error) {
	if hostport == "" {
		h, _, err := net.SplitHostPort(r.RemoteAddr)
		if err != nil {
			return "", fmt.Errorf("%w: heartbeat from %q names no worker_hostname", ErrMalformed, r.RemoteAddr)
		}
		hostport = h
	}
	if _, _, err := net.SplitHostPort(hostport); err == nil {
		return hostport, nil
	}
	return net.JoinHostPort(hostport, strconv.Itoa(s.cfg.WorkerPort)), nil
}
