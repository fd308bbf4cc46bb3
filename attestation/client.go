package attestation

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"sync"
	"time"
)

// ClientConfig configures NewTransport.
type ClientConfig struct {
	// Options is the policy every enclave the Transport connects to must
	// pass: PCRs (required and not all zero, unless AnyImage), Roots,
	// MaxAge, AppKeyHash, UserData. Roots stays nil for enclaves on Nitro
	// hardware (the AWS root); for a development attester it is the root
	// the enclave wrote (-dev-root-out, DevAttester.WriteRootPEM), read
	// with LoadRoots; its documents report all-zero PCRs, which need
	// AnyImage. Time must be zero (each connection is verified at Now's
	// time); Nonce, TLSCertHash and PublicKey must be nil (a fresh nonce and
	// the certificate of the connection are checked on every verification).
	Options Options

	// AnyImage accepts enclaves of any image: without PCRs in Options, any
	// genuine enclave passes, including one that someone else built to serve
	// the same address. For tests and exploration only. Default: false, and
	// NewTransport refuses Options without PCRs, or whose PCRs are all zero
	// (what every enclave in debug mode reports, whatever its image).
	AnyImage bool

	// TLSConfig configures the TLS client, as RemoteConfig.TLSConfig does:
	// enclave certificates are usually self-signed, so set
	// InsecureSkipVerify; the attestation document then authenticates the
	// certificate. NextProtos is always "http/1.1". Default (nil): the
	// certificate is verified against the system roots too.
	TLSConfig *tls.Config

	// DialContext opens TCP connections. Default: a net.Dialer with a 30 s
	// timeout and keep-alives, like http.DefaultTransport's. An enclave app
	// in userspace mode that calls another enclave passes its
	// enclave.Enclave's Dial.
	DialContext func(ctx context.Context, network, addr string) (net.Conn, error)

	// Path is the attestation endpoint on the enclave. Default: Path
	// (/enclave/attestation, as quench and nitriding serve it).
	Path string

	// Timeout bounds the TLS handshake and the attestation exchange of a new
	// connection (the dial has its own). Default (0): 10 s.
	Timeout time.Duration

	// TrustFor is how long a verified certificate stays verified: a new
	// connection presenting it within that time skips the attestation
	// exchange (the handshake proves it holds the certificate's key, which
	// only an enclave passing the policy was shown to hold). Default (0):
	// one hour; negative: every new connection is verified.
	TrustFor time.Duration

	// Transport is the template of the underlying transport (pool sizes,
	// timeouts); it is cloned, and its DialTLSContext, TLSClientConfig,
	// Proxy and HTTP/2 settings replaced. Default (nil): a clone of
	// http.DefaultTransport's settings.
	Transport *http.Transport

	// OnVerify, when not nil, is called after each successful verification
	// with the address dialled and the verified document (for audit logs).
	// It must not block.
	OnVerify func(addr string, res *Result)

	// Now returns the time to verify at. Default: time.Now.
	Now func() time.Time
}

// Defaults of ClientConfig.
const (
	DefaultClientTimeout = 10 * time.Second
	DefaultTrustFor      = time.Hour
	maxTrustedCerts      = 1024
	maxRedialsForAttest  = 3
)

// Transport is an http.RoundTripper whose every connection goes to an
// enclave that passed the policy: after the TLS handshake of a new
// connection, and before any request of the caller is written to it, it
// fetches an attestation document with a fresh nonce over that same
// connection, and verifies it and that it binds the certificate the
// server presented. Only then is the connection used, for the caller's
// requests. A document that fails (another image, a certificate that is not
// the enclave's, as a machine in the middle presents) fails the request
// with the verification error (errors.Is with ErrPCRMismatch,
// ErrUserDataMismatch, ...); nothing of the request was sent.
//
// It speaks HTTP/1.1 over TLS only: an http:// request fails, and no proxy
// is used. A verified certificate stays verified for TrustFor. It is safe
// for concurrent use; Close releases idle connections.
type Transport struct {
	cfg  ClientConfig
	base *http.Transport
	dial func(ctx context.Context, network, addr string) (net.Conn, error)

	mu        sync.Mutex
	trusted   map[[sha256.Size]byte]time.Time // certificate hash → verified until; guarded by mu
	verifying map[[sha256.Size]byte]*verdict  // certificate hash → its verification under way; guarded by mu
}

var _ http.RoundTripper = (*Transport)(nil)

// NewTransport validates cfg and returns the Transport. It does no I/O. An
// error, which matches ErrInvalidOptions with errors.Is, says which field is
// wrong and what to set instead (for example PCRs missing or all zero, or
// Options.Time set).
//
// Errors of requests (from RoundTrip, or from an http.Client wrapped in
// *url.Error) match the sentinel of the failed check with errors.Is:
// ErrPCRMismatch for another image, ErrUntrustedChain for a document not
// signed by Options.Roots, ErrUserDataMismatch for a certificate the
// document does not bind. A certificate the TLS client refused (no
// InsecureSkipVerify for a self-signed one) is a *tls.CertificateVerificationError.
func NewTransport(cfg ClientConfig) (*Transport, error) {
	o := cfg.Options
	switch {
	case !o.Time.IsZero():
		return nil, fmt.Errorf("%w: ClientConfig.Options.Time must be zero: every connection is verified at the current time", ErrInvalidOptions)
	case o.Nonce != nil:
		return nil, fmt.Errorf("%w: ClientConfig.Options.Nonce must be nil: every verification sends a fresh nonce", ErrInvalidOptions)
	case o.TLSCertHash != nil:
		return nil, fmt.Errorf("%w: ClientConfig.Options.TLSCertHash must be nil: it is the certificate of each connection", ErrInvalidOptions)
	case o.PublicKey != nil:
		return nil, fmt.Errorf("%w: ClientConfig.Options.PublicKey must be nil", ErrInvalidOptions)
	case len(o.PCRs) == 0 && !cfg.AnyImage:
		return nil, fmt.Errorf("%w: ClientConfig.Options.PCRs is empty: any enclave image would pass, including one someone else runs at that address; pin yours (PCR0 from nitro-cli build-enclave), or set AnyImage for tests", ErrInvalidOptions)
	case !cfg.AnyImage && DebugModePCRs(o.PCRs):
		return nil, fmt.Errorf("%w: every PCR in ClientConfig.Options.PCRs is all zero, as every enclave in debug mode reports whatever its image (and the parent instance can read a debug-mode enclave's memory); pin a production measurement, or set AnyImage for tests", ErrInvalidOptions)
	case cfg.Timeout < 0:
		return nil, fmt.Errorf("%w: negative ClientConfig.Timeout %s", ErrInvalidOptions, cfg.Timeout)
	}
	o.Time = time.Unix(0, 0) // only to validate the rest
	if err := o.validate(); err != nil {
		return nil, err
	}
	if cfg.Path == "" {
		cfg.Path = Path
	}
	if cfg.Path[0] != '/' {
		return nil, fmt.Errorf("%w: ClientConfig.Path %q must start with /", ErrInvalidOptions, cfg.Path)
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultClientTimeout
	}
	if cfg.TrustFor == 0 {
		cfg.TrustFor = DefaultTrustFor
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	t := &Transport{cfg: cfg, trusted: map[[sha256.Size]byte]time.Time{}}
	t.dial = cfg.DialContext
	if t.dial == nil {
		t.dial = (&net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	}
	if cfg.Transport != nil {
		t.base = cfg.Transport.Clone()
	} else {
		t.base = http.DefaultTransport.(*http.Transport).Clone()
	}
	t.base.Proxy = nil // a proxy's CONNECT would bypass DialTLSContext
	t.base.DialContext = nil
	t.base.DialTLSContext = t.dialTLS
	t.base.TLSClientConfig = nil
	t.base.ForceAttemptHTTP2 = false
	t.base.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{} // HTTP/1.1 only
	return t, nil
}

// DebugModePCRs reports whether pcrs pins only all-zero values, which is
// what every enclave in debug mode reports, whatever its image (and the
// development attester too): such a policy pins no image. A zero value next
// to a non-zero one is harmless (unused PCRs read as zero in production
// too, and a debug-mode enclave fails the non-zero one). An empty pcrs
// pins nothing either, and is not reported here.
func DebugModePCRs(pcrs map[uint][]byte) bool {
	if len(pcrs) == 0 {
		return false
	}
	for _, v := range pcrs {
		for _, b := range v {
			if b != 0 {
				return false
			}
		}
	}
	return true
}

// Client returns an http.Client that uses t. It follows redirects as
// http.Client does: a redirect to another host goes over a connection to
// that host verified against the same policy (with AnyImage, any enclave),
// and one to http:// fails. Set CheckRedirect (http.ErrUseLastResponse, as
// quench fetch does) to follow them yourself.
func (t *Transport) Client() *http.Client { return &http.Client{Transport: t} }

// RoundTrip sends req over a verified connection. Only https requests are
// taken.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL == nil || req.URL.Scheme != "https" {
		if req.Body != nil {
			_ = req.Body.Close()
		}
		scheme := ""
		if req.URL != nil {
			scheme = req.URL.Scheme
		}
		return nil, fmt.Errorf("attestation: Transport takes https URLs only (the document binds the TLS certificate), not %q", scheme)
	}
	return t.base.RoundTrip(req)
}

// CloseIdleConnections closes the idle connections.
func (t *Transport) CloseIdleConnections() { t.base.CloseIdleConnections() }

// Close closes the idle connections; requests in flight finish.
func (t *Transport) Close() error {
	t.base.CloseIdleConnections()
	return nil
}

// dialTLS is the underlying transport's DialTLSContext: a TLS connection
// whose certificate was verified by attestation, now or within TrustFor.
func (t *Transport) dialTLS(ctx context.Context, network, addr string) (_ net.Conn, err error) {
	defer func() { err = escapeErr(err) }() // the server's words must not reach a terminal or log as they are
	for range maxRedialsForAttest {
		tc, hash, err := t.handshake(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		trusted, err := t.awaitVerdict(ctx, hash)
		if err != nil {
			_ = tc.Close()
			return nil, err
		}
		if trusted {
			return tc, nil
		}
		reusable, err := t.attest(ctx, tc, addr, hash)
		if err != nil {
			_ = tc.Close()
			return nil, err
		}
		if reusable {
			return tc, nil
		}
		// The server closes the connection after the document: the next
		// one presents the certificate just verified, or is verified in turn.
		_ = tc.Close()
	}
	return nil, fmt.Errorf("attestation: %s: the server closed the connection after each of %d attestations and presented a certificate not verified before on the next", addr, maxRedialsForAttest)
}

func (t *Transport) handshake(ctx context.Context, network, addr string) (*tls.Conn, [sha256.Size]byte, error) {
	var hash [sha256.Size]byte
	raw, err := t.dial(ctx, network, addr)
	if err != nil {
		return nil, hash, err
	}
	tcfg := &tls.Config{}
	if t.cfg.TLSConfig != nil {
		tcfg = t.cfg.TLSConfig.Clone()
	}
	if tcfg.ServerName == "" {
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			host = addr
		}
		tcfg.ServerName = host
	}
	tcfg.NextProtos = []string{"http/1.1"}
	tc := tls.Client(raw, tcfg)
	hctx, cancel := context.WithTimeout(ctx, t.cfg.Timeout)
	defer cancel()
	if err := tc.HandshakeContext(hctx); err != nil {
		_ = raw.Close()
		if ctx.Err() == nil && hctx.Err() != nil {
			return nil, hash, fmt.Errorf("attestation: %s: TLS handshake: no answer within ClientConfig.Timeout (%s): %w", addr, t.cfg.Timeout, err)
		}
		return nil, hash, fmt.Errorf("attestation: %s: TLS handshake: %w", addr, err)
	}
	certs := tc.ConnectionState().PeerCertificates
	if len(certs) == 0 {
		_ = tc.Close()
		return nil, hash, fmt.Errorf("attestation: %s: server presented no certificate", addr)
	}
	return tc, CertHash(certs[0].Raw), nil
}

// attest fetches and verifies a document on tc, and on success trusts hash.
func (t *Transport) attest(ctx context.Context, tc *tls.Conn, addr string, hash [sha256.Size]byte) (reusable bool, err error) {
	defer func() { t.endVerify(hash, err) }()
	nonce := make([]byte, NonceSize)
	if _, err := rand.Read(nonce); err != nil {
		return false, fmt.Errorf("attestation: nonce: %w", err)
	}
	u := &url.URL{Scheme: "https", Host: addr, Path: t.cfg.Path, RawQuery: "nonce=" + hex.EncodeToString(nonce)}
	if _, port, _ := net.SplitHostPort(addr); port == "443" {
		u.Host = addr[:len(addr)-len(":443")] // as net/http sends Host
	}
	actx, cancel := context.WithTimeout(ctx, t.cfg.Timeout)
	defer cancel()
	stop := context.AfterFunc(actx, func() { _ = tc.SetDeadline(time.Unix(1, 0)) }) // unblock reads and writes
	var body []byte
	for {
		body, reusable, err = exchange(actx, tc, u, maxResponseBody, "text/plain", true)
		// An enclave busy with other clients' documents answers 503
		// (quench-enclave -max-attestations): ask again on this
		// connection after Retry-After (50 ms to 1 s), within Timeout.
		var se *statusError
		if !errors.As(err, &se) || se.code != http.StatusServiceUnavailable || !reusable ||
			!sleepCtx(actx, min(max(se.retryAfter, 50*time.Millisecond), time.Second)) {
			break
		}
	}
	if !stop() && err == nil {
		// The deadline may be set: the connection cannot be used further.
		err = actx.Err()
	}
	switch {
	case err == nil:
	case ctx.Err() != nil:
		// The caller's context ended: say that alone, not joined with
		// the read it cut short (two lines, quoted by escapeErr).
		return false, fmt.Errorf("attestation: fetch %s: %w", u.Redacted(), ctx.Err())
	case actx.Err() != nil:
		var se *statusError
		if errors.As(err, &se) {
			// Busy until the end: the last refusal says why.
			return false, fmt.Errorf("attestation: %s: no attestation document within ClientConfig.Timeout (%s), the enclave still refusing: %w", addr, t.cfg.Timeout, err)
		}
		return false, fmt.Errorf("attestation: %s: no attestation document within ClientConfig.Timeout (%s): %w", addr, t.cfg.Timeout, context.DeadlineExceeded)
	default:
		return false, fmt.Errorf("attestation: fetch %s: %w", u.Redacted(), err)
	}
	doc, err := DecodeDocument(body)
	if err != nil {
		return false, fmt.Errorf("enclave at %s: %w", addr, err)
	}
	opts := t.cfg.Options
	opts.Time = t.cfg.Now()
	opts.Nonce = nonce
	opts.TLSCertHash = hash[:]
	res, err := Verify(doc, opts)
	if err != nil {
		return false, fmt.Errorf("enclave at %s: %w", addr, err)
	}
	t.trust(hash, opts.Time)
	if t.cfg.OnVerify != nil {
		t.cfg.OnVerify(addr, res)
	}
	return reusable, nil
}

// sleepCtx waits d, and reports false if ctx ended first.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// verdict is the outcome of one connection's verification of a
// certificate, which other connections presenting it wait for.
type verdict struct {
	done chan struct{} // closed when err is set
	err  error
}

// awaitVerdict reports whether hash is trusted. If it is not and another
// connection is verifying it, it waits for that verdict: a burst of new
// connections to one enclave fetches one document, not one each (an enclave
// produces few at once, and refuses the rest with 503). If that verification
// failed, so does this one, with its error: each trying in turn would make
// the last wait for all of them. Otherwise the caller is to verify hash now
// (attest ends the verification). With TrustFor negative every connection
// is verified, and nobody waits.
func (t *Transport) awaitVerdict(ctx context.Context, hash [sha256.Size]byte) (trusted bool, err error) {
	if t.isTrusted(hash) {
		return true, nil
	}
	if t.cfg.TrustFor < 0 {
		return false, nil
	}
	t.mu.Lock()
	v, busy := t.verifying[hash]
	if !busy {
		if t.verifying == nil {
			t.verifying = map[[sha256.Size]byte]*verdict{}
		}
		t.verifying[hash] = &verdict{done: make(chan struct{})}
	}
	t.mu.Unlock()
	if !busy {
		return false, nil
	}
	select {
	case <-v.done:
	case <-ctx.Done():
		return false, ctx.Err()
	}
	if v.err != nil {
		return false, fmt.Errorf("another connection's verification of the same certificate failed: %w", v.err)
	}
	return true, nil
}

// endVerify ends the verification awaitVerdict started for hash, with its
// outcome.
func (t *Transport) endVerify(hash [sha256.Size]byte, err error) {
	if t.cfg.TrustFor < 0 {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if v, ok := t.verifying[hash]; ok {
		v.err = err
		close(v.done)
		delete(t.verifying, hash)
	}
}

func (t *Transport) isTrusted(hash [sha256.Size]byte) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	until, ok := t.trusted[hash]
	if !ok {
		return false
	}
	if t.cfg.Now().Before(until) {
		return true
	}
	delete(t.trusted, hash)
	return false
}

func (t *Transport) trust(hash [sha256.Size]byte, now time.Time) {
	if t.cfg.TrustFor < 0 {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.trusted) >= maxTrustedCerts {
		// Drop the expired ones, or else the one that expires first.
		var first [sha256.Size]byte
		var firstUntil time.Time
		for h, until := range t.trusted {
			if !now.Before(until) {
				delete(t.trusted, h)
			} else if firstUntil.IsZero() || until.Before(firstUntil) {
				first, firstUntil = h, until
			}
		}
		if len(t.trusted) >= maxTrustedCerts {
			delete(t.trusted, first)
		}
	}
	t.trusted[hash] = now.Add(t.cfg.TrustFor)
}
