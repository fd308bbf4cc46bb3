package attestation

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode"
)

// RemoteConfig configures VerifyRemote.
type RemoteConfig struct {
	// Options is the verification policy; Options.Time is required.
	// Options.Nonce is the nonce sent to the enclave: if nil, a random
	// NonceSize-byte nonce is used; if set, it must be NonceSize bytes.
	// Options.TLSCertHash must be nil: VerifyRemote sets it to the hash of
	// the certificate the server presented on the connection.
	Options Options

	// TLSConfig configures the TLS client. Default (nil): the server
	// certificate is verified against the system roots for the URL's host.
	// Enclaves usually serve self-signed certificates; set
	// InsecureSkipVerify then: the certificate is still authenticated, by
	// the attestation document that binds its hash. NextProtos is always
	// replaced by "http/1.1".
	TLSConfig *tls.Config

	// DialContext opens the TCP connection. Default: a net.Dialer.
	DialContext func(ctx context.Context, network, addr string) (net.Conn, error)

	// Timeout bounds the whole exchange (dial, handshake, request, response)
	// on top of ctx, so that a server that stops sending cannot hold the
	// caller. Default (0): DefaultRemoteTimeout; negative: only ctx bounds it.
	Timeout time.Duration
}

// DefaultRemoteTimeout is RemoteConfig.Timeout's default.
const DefaultRemoteTimeout = 30 * time.Second

// maxResponseBody bounds the attestation response body: base64 of
// MaxDocumentSize plus whitespace.
const maxResponseBody = 4*MaxDocumentSize/3 + 1024

// maxResponseHead bounds the status line and headers of the response (net/http's
// client allows 10 MB; an enclave's attestation endpoint sends a few hundred
// bytes).
const maxResponseHead = 64 << 10

// errResponseHead is returned when the server's response head exceeds
// maxResponseHead.
var errResponseHead = fmt.Errorf("response head larger than %d bytes", maxResponseHead)

// headLimiter fails reads once more than n bytes were read: it bounds what
// http.ReadResponse buffers for a head that never ends. fetch lifts it for the
// body, which has its own limit.
type headLimiter struct {
	r io.Reader
	n int
}

func (l *headLimiter) Read(p []byte) (int, error) {
	if l.n <= 0 {
		return 0, errResponseHead
	}
	if len(p) > l.n {
		p = p[:l.n]
	}
	n, err := l.r.Read(p)
	l.n -= n
	return n, err
}

// VerifyRemote fetches an attestation document from an enclave and verifies it.
// rawURL is https://HOST[:PORT] (the path defaults to Path) or a full URL of
// the attestation endpoint. VerifyRemote dials once, performs the TLS
// handshake, sends GET ?nonce=<hex> on that same connection, and verifies the
// document with cfg.Options plus two checks: the nonce it sent, and that the
// user data binds the certificate presented on that connection. ctx bounds
// the whole exchange.
func VerifyRemote(ctx context.Context, rawURL string, cfg RemoteConfig) (*Result, error) {
	res, _, err := verifyRemote(ctx, rawURL, Path, maxResponseBody, "text/plain", cfg, func(body []byte) ([]byte, []byte, error) {
		doc, err := DecodeDocument(body)
		return doc, nil, err
	})
	return res, escapeErr(err)
}

// ConfigPath is where quench serves an enclave's configuration, attested
// when a nonce is given (enclave.ConfigPath).
const ConfigPath = "/enclave/config"

// maxConfigResponse bounds the body of an attested configuration: the
// document's base64 and the configuration, whose egress rules and
// annotations make it the larger part.
const maxConfigResponse = 1 << 20

// VerifyRemoteConfig fetches an enclave's configuration as quench serves it
// (GET /enclave/config?nonce=<hex>: the settings a client may audit, such
// as the egress policy and how the app is sandboxed) and verifies it as
// VerifyRemote verifies a document, plus one check: the document's
// public_key is the SHA-256 of the configuration bytes served with it
// (cfg.Options.PublicKey must be nil). rawURL is https://HOST[:PORT] (the
// path defaults to ConfigPath) or a full URL. It returns the verified
// document and the configuration's JSON exactly as attested.
func VerifyRemoteConfig(ctx context.Context, rawURL string, cfg RemoteConfig) (*Result, []byte, error) {
	if cfg.Options.PublicKey != nil {
		return nil, nil, fmt.Errorf("%w: PublicKey is the configuration's hash in VerifyRemoteConfig", ErrInvalidOptions)
	}
	res, config, err := verifyRemote(ctx, rawURL, ConfigPath, maxConfigResponse, "application/json", cfg, func(body []byte) ([]byte, []byte, error) {
		var r struct {
			Config      json.RawMessage `json:"config"`
			Attestation string          `json:"attestation"`
		}
		if err := json.Unmarshal(body, &r); err != nil {
			return nil, nil, &BadDocumentError{Err: fmt.Errorf("configuration response is not JSON (a path in the URL must be the configuration's, %s): %w", ConfigPath, err)}
		}
		if len(r.Config) == 0 || r.Attestation == "" {
			return nil, nil, &BadDocumentError{Err: errors.New(`configuration response without "config" and "attestation" (was a nonce sent to a server that is not quench?)`)}
		}
		doc, err := DecodeDocument([]byte(r.Attestation))
		return doc, r.Config, err
	})
	return res, config, escapeErr(err)
}

// verifyRemote is VerifyRemote and VerifyRemoteConfig: it fetches
// rawURL (defaultPath when it has none) with a nonce over one TLS
// connection, reading at most maxBody bytes, has decode split the body into
// the document and the payload whose SHA-256 the document's public_key must
// be (nil: no such check), and verifies.
func verifyRemote(ctx context.Context, rawURL, defaultPath string, maxBody int, accept string, cfg RemoteConfig, decode func(body []byte) (doc, payload []byte, err error)) (*Result, []byte, error) {
	opts := cfg.Options
	if err := opts.validate(); err != nil {
		return nil, nil, err
	}
	if opts.TLSCertHash != nil {
		return nil, nil, fmt.Errorf("%w: TLSCertHash is taken from the connection in VerifyRemote", ErrInvalidOptions)
	}
	u, err := remoteURL(rawURL, defaultPath)
	if err != nil {
		return nil, nil, err
	}
	if opts.Nonce == nil {
		opts.Nonce = make([]byte, NonceSize)
		if _, err := rand.Read(opts.Nonce); err != nil {
			return nil, nil, fmt.Errorf("attestation: nonce: %w", err)
		}
	} else if len(opts.Nonce) != NonceSize {
		return nil, nil, fmt.Errorf("%w: nonce is %d bytes, the endpoint takes %d", ErrInvalidOptions, len(opts.Nonce), NonceSize)
	}
	q := u.Query()
	q.Set("nonce", hex.EncodeToString(opts.Nonce))
	u.RawQuery = q.Encode()

	timeout := cfg.Timeout
	if timeout == 0 {
		timeout = DefaultRemoteTimeout
	}
	caller := ctx
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	body, state, err := fetch(ctx, u, cfg, maxBody, accept)
	switch {
	case err == nil:
	case caller.Err() != nil:
		// Say the context's end alone, not joined with the read it cut
		// short (two lines, quoted by escapeErr).
		return nil, nil, fmt.Errorf("attestation: fetch %s: %w", u.Redacted(), caller.Err())
	case ctx.Err() != nil:
		return nil, nil, fmt.Errorf("attestation: fetch %s: no answer within RemoteConfig.Timeout (%s): %w", u.Redacted(), timeout, context.DeadlineExceeded)
	default:
		return nil, nil, fmt.Errorf("attestation: fetch %s: %w", u.Redacted(), err)
	}
	doc, payload, err := decode(body)
	if err != nil {
		return nil, nil, err
	}
	if len(state.PeerCertificates) == 0 {
		return nil, nil, fmt.Errorf("attestation: fetch %s: server presented no certificate", u.Redacted())
	}
	h := CertHash(state.PeerCertificates[0].Raw)
	opts.TLSCertHash = h[:]
	if payload != nil {
		sum := sha256.Sum256(payload)
		opts.PublicKey = sum[:]
	}
	res, err := Verify(doc, opts)
	if err != nil {
		return nil, nil, err
	}
	return res, payload, nil
}

func remoteURL(rawURL, defaultPath string) (*url.URL, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("attestation: bad URL: %w", err)
	}
	if u.Scheme != "https" {
		return nil, fmt.Errorf("attestation: bad URL %q: scheme must be https (the document binds the TLS certificate)", rawURL)
	}
	if u.Hostname() == "" {
		return nil, fmt.Errorf("attestation: bad URL %q: no host", rawURL)
	}
	if u.User != nil {
		return nil, fmt.Errorf("attestation: bad URL %q: user info not supported", u.Redacted())
	}
	if u.Path == "" || u.Path == "/" {
		u.Path = defaultPath
	}
	u.Fragment = ""
	return u, nil
}

// fetch does the GET on a single connection and returns the body and the TLS
// state of that connection.
func fetch(ctx context.Context, u *url.URL, cfg RemoteConfig, maxBody int, accept string) ([]byte, tls.ConnectionState, error) {
	var none tls.ConnectionState
	addr := u.Host
	if u.Port() == "" {
		addr = net.JoinHostPort(u.Hostname(), "443")
	}
	dial := cfg.DialContext
	if dial == nil {
		dial = (&net.Dialer{}).DialContext
	}
	raw, err := dial(ctx, "tcp", addr)
	if err != nil {
		return nil, none, err
	}
	defer raw.Close()
	stop := context.AfterFunc(ctx, func() { _ = raw.Close() }) // unblock reads on cancel
	defer stop()

	tcfg := &tls.Config{}
	if cfg.TLSConfig != nil {
		tcfg = cfg.TLSConfig.Clone()
	}
	if tcfg.ServerName == "" {
		tcfg.ServerName = u.Hostname()
	}
	tcfg.NextProtos = []string{"http/1.1"}
	tc := tls.Client(raw, tcfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		return nil, none, ctxErr(ctx, err)
	}
	state := tc.ConnectionState()

	body, _, err := exchange(ctx, tc, u, maxBody, accept, false)
	if err != nil {
		return nil, none, err
	}
	return body, state, nil
}

// exchange sends GET u on the TLS connection tc and reads the response,
// whose head may be at most maxResponseHead bytes and whose body at most
// maxBody; anything but 200 is an error. With keepAlive, the connection is
// left ready for a next request: reusable reports whether the server keeps
// it open, and a server that sent bytes past the response is an error
// (they would be taken for the next response). ctx must already unblock
// reads on tc when it ends.
func exchange(ctx context.Context, tc *tls.Conn, u *url.URL, maxBody int, accept string, keepAlive bool) (body []byte, reusable bool, err error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, false, err
	}
	req.Close = !keepAlive
	req.Header.Set("User-Agent", "quench-verify")
	req.Header.Set("Accept", accept)
	if err := req.Write(tc); err != nil {
		return nil, false, ctxErr(ctx, err)
	}
	lim := &headLimiter{r: tc, n: maxResponseHead}
	br := bufio.NewReader(lim)
	resp, err := http.ReadResponse(br, req)
	if errors.Is(err, errResponseHead) {
		return nil, false, errResponseHead
	}
	if err != nil {
		return nil, false, ctxErr(ctx, err)
	}
	lim.n = int(^uint(0) >> 1) // the body has its own limit below, after its framing is decoded
	defer resp.Body.Close()
	body, err = io.ReadAll(io.LimitReader(resp.Body, int64(maxBody)+1))
	if err != nil {
		return nil, false, ctxErr(ctx, err)
	}
	if resp.StatusCode != http.StatusOK {
		se := &statusError{code: resp.StatusCode, text: fmt.Sprintf("HTTP %s: %s", printable(resp.Status), firstLine(body))}
		if secs, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && secs >= 0 {
			se.retryAfter = time.Duration(min(secs, 3600)) * time.Second
		}
		reusable := keepAlive && !resp.Close && len(body) <= maxBody && br.Buffered() == 0
		return nil, reusable, se
	}
	if len(body) > maxBody {
		return nil, false, fmt.Errorf("response body larger than %d bytes", maxBody)
	}
	if keepAlive && br.Buffered() > 0 {
		return nil, false, fmt.Errorf("server sent %d bytes after the response", br.Buffered())
	}
	return body, keepAlive && !resp.Close, nil
}

// statusError is a response other than 200 to a document request.
type statusError struct {
	code       int
	retryAfter time.Duration // from Retry-After in seconds; 0 if none
	text       string
}

func (e *statusError) Error() string { return e.text }

func ctxErr(ctx context.Context, err error) error {
	if cerr := ctx.Err(); cerr != nil {
		return errors.Join(cerr, err)
	}
	return err
}

func firstLine(b []byte) string {
	if i := bytes.IndexByte(b, '\n'); i >= 0 {
		b = b[:i]
	}
	if len(b) > 200 {
		b = b[:200]
	}
	s := strings.TrimSpace(string(b))
	if !isPrintable(s) {
		return "(" + base64.StdEncoding.EncodeToString(b) + ")"
	}
	return s
}

// printable returns s if it can go to a terminal as it is, and s quoted
// (control characters escaped) otherwise: a server's status line must not be
// able to move the cursor or retitle the window of whoever runs quench verify.
func printable(s string) string {
	if isPrintable(s) {
		return s
	}
	return strconv.QuoteToASCII(s)
}

// escapeErr returns err, or err with its text escaped if that holds
// characters isPrintable refuses: parts of an error's text can come from the
// server (crypto/x509's hostname error lists the names of the certificate
// presented, as they are). errors.Is and errors.As see through it.
func escapeErr(err error) error {
	if err == nil || isPrintable(err.Error()) {
		return err
	}
	return &escapedError{err: err}
}

type escapedError struct{ err error }

func (e *escapedError) Error() string { return printable(e.err.Error()) }
func (e *escapedError) Unwrap() error { return e.err }

// isPrintable reports whether s holds only printable characters and spaces:
// no C0 or C1 controls, DEL, or format characters such as bidirectional
// overrides.
func isPrintable(s string) bool {
	for _, r := range s {
		if r != ' ' && !unicode.IsPrint(r) {
			return false
		}
	}
	return true
}
