package attestationtest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hf/nsm/request"
	"github.com/hf/nsm/response"

	"github.com/quenchnet/quench/attestation"
)

// randomChunk is how many bytes the NSM returns per GetRandom request.
const randomChunk = 256

// FakeNSM is an in-memory stand-in for /dev/nsm. Attestation requests are
// answered with documents from a DevAttester; GetRandom with bytes from
// crypto/rand; DescribeNSM with a plausible description. Other requests get
// the InvalidOperation error code. It is safe for concurrent use.
//
// Pass it as attestation.NSMConfig.Session to drive attestation.NSMAttester
// without a Nitro Enclave.
type FakeNSM struct {
	dev *attestation.DevAttester

	mu       sync.Mutex
	failCode response.ErrorCode  // guarded by mu
	failErr  error               // guarded by mu
	last     request.Attestation // guarded by mu

	closed  atomic.Bool
	attests atomic.Int64
}

var _ attestation.NSMSession = (*FakeNSM)(nil)

// NewFakeNSM returns a FakeNSM whose documents come from dev.
func NewFakeNSM(dev *attestation.DevAttester) *FakeNSM {
	return &FakeNSM{dev: dev}
}

// FailWith makes every later request fail: with the NSM error code code if it
// is not empty, else with err as a transport (ioctl) error if it is not nil.
// FailWith("", nil) restores normal operation.
func (f *FakeNSM) FailWith(code response.ErrorCode, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failCode, f.failErr = code, err
}

func (f *FakeNSM) failure() (response.Response, error, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failCode != "" {
		return response.Response{Error: f.failCode}, nil, true
	}
	if f.failErr != nil {
		return response.Response{}, f.failErr, true
	}
	return response.Response{}, nil, false
}

// Send answers one NSM request.
func (f *FakeNSM) Send(req request.Request) (response.Response, error) {
	if f.closed.Load() {
		return response.Response{}, errors.New("Session is closed") // nsm.Session's message
	}
	if res, err, ok := f.failure(); ok {
		return res, err
	}
	switch r := req.(type) {
	case *request.Attestation:
		f.attests.Add(1)
		f.mu.Lock()
		f.last = request.Attestation{
			Nonce:     append([]byte(nil), r.Nonce...),
			UserData:  append([]byte(nil), r.UserData...),
			PublicKey: append([]byte(nil), r.PublicKey...),
		}
		f.mu.Unlock()
		doc, err := f.dev.Attest(context.Background(), attestation.Request{Nonce: r.Nonce, UserData: r.UserData, PublicKey: r.PublicKey})
		if errors.Is(err, attestation.ErrBadRequest) {
			return response.Response{Error: response.ECInputTooLarge}, nil
		}
		if err != nil {
			return response.Response{Error: response.ECInternalError}, nil
		}
		return response.Response{Attestation: &response.Attestation{Document: doc}}, nil
	case *request.GetRandom:
		b := make([]byte, randomChunk)
		_, _ = rand.Read(b) // crypto/rand.Read never fails
		return response.Response{GetRandom: &response.GetRandom{Random: b}}, nil
	case *request.DescribeNSM:
		return response.Response{DescribeNSM: &response.DescribeNSM{
			VersionMajor: 1, ModuleID: f.dev.ModuleID(), MaxPCRs: 32, Digest: response.DigestSHA384,
		}}, nil
	}
	return response.Response{Error: response.ECInvalidOperation}, nil
}

// Read fills p with random bytes, like nsm.Session.Read.
func (f *FakeNSM) Read(p []byte) (int, error) {
	for i := 0; i < len(p); {
		res, err := f.Send(&request.GetRandom{})
		if err != nil {
			return i, err
		}
		if res.Error != "" || res.GetRandom == nil || len(res.GetRandom.Random) == 0 {
			return i, errors.New("GetRandom failed with error code " + string(res.Error))
		}
		i += copy(p[i:], res.GetRandom.Random)
	}
	return len(p), nil
}

// Close marks the session closed; later requests fail.
func (f *FakeNSM) Close() error {
	f.closed.Store(true)
	return nil
}

// Closed reports whether Close was called.
func (f *FakeNSM) Closed() bool { return f.closed.Load() }

// Attestations returns how many attestation requests were received.
func (f *FakeNSM) Attestations() int64 { return f.attests.Load() }

// LastAttestation returns a copy of the last attestation request received.
func (f *FakeNSM) LastAttestation() request.Attestation {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.last
}

// NewDevAttester returns a DevAttester built from cfg whose log output goes to
// tb.Output (unless cfg.Logger is set). It fails the test on error.
func NewDevAttester(tb testing.TB, cfg attestation.DevConfig) *attestation.DevAttester {
	tb.Helper()
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(tb.Output(), nil))
	}
	d, err := attestation.NewDevAttester(cfg)
	if err != nil {
		tb.Fatalf("attestationtest: %v", err)
	}
	return d
}

// NewServer starts an HTTPS test server (on 127.0.0.1, port 0) that serves
// attestation.Path with documents from a whose user data binds the server's
// own certificate, as an enclave does. The server is closed in tb.Cleanup.
// Its certificate is self-signed: clients need InsecureSkipVerify or the
// pool from srv.Client().
func NewServer(tb testing.TB, a attestation.Attester) *httptest.Server {
	tb.Helper()
	return NewConfigServer(tb, a, nil, nil)
}

// NewConfigServer is NewServer that also serves attestation.ConfigPath as
// quench's enclave does: GET ?nonce=<hex> answers {"config": served,
// "attestation": base64 document} whose public_key is the SHA-256 of
// attested (of served, when attested is nil; a different value stands for
// a configuration swapped on the way) and whose user data binds the
// server's certificate. served must be compact JSON (as the enclave serves
// it: the encoder compacts it). With served nil, ConfigPath is not served.
func NewConfigServer(tb testing.TB, a attestation.Attester, served, attested []byte) *httptest.Server {
	tb.Helper()
	srv := httptest.NewUnstartedServer(nil)
	userData := func() ([]byte, error) {
		return attestation.UserData{TLSCertHash: attestation.CertHash(srv.Certificate().Raw)}.Marshal(), nil
	}
	h, err := attestation.NewHandler(attestation.HandlerConfig{Attester: a, UserData: userData})
	if err != nil {
		tb.Fatalf("attestationtest: %v", err)
	}
	mux := http.NewServeMux()
	mux.Handle(attestation.Path, h)
	if served != nil {
		if attested == nil {
			attested = served
		}
		sum := sha256.Sum256(attested)
		mux.HandleFunc(attestation.ConfigPath, func(w http.ResponseWriter, r *http.Request) {
			nonce, err := attestation.ParseNonce(r.URL.Query().Get("nonce"))
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			ud, _ := userData()
			doc, err := a.Attest(r.Context(), attestation.Request{Nonce: nonce, UserData: ud, PublicKey: sum[:]})
			if err != nil {
				http.Error(w, err.Error(), http.StatusInternalServerError)
				return
			}
			w.Header().Set("Content-Type", "application/json")
			_ = json.NewEncoder(w).Encode(map[string]any{"config": json.RawMessage(served), "attestation": base64.StdEncoding.EncodeToString(doc)})
		})
	}
	srv.Config.Handler = mux
	srv.StartTLS()
	tb.Cleanup(srv.Close)
	return srv
}

// NewRelay starts a machine in the middle of target: an HTTPS server with
// a certificate of its own (not the one httptest servers share) that
// forwards every request's method, path and body to target and answers
// with target's status and body. seen, when not nil, is called with each
// request before it is forwarded. Verifiers must catch it by the
// certificate binding: it relays genuine documents, nonces included.
func NewRelay(tb testing.TB, target *httptest.Server, seen func(*http.Request)) *httptest.Server {
	tb.Helper()
	relay := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if seen != nil {
			seen(r)
		}
		req, err := http.NewRequestWithContext(r.Context(), r.Method, target.URL+r.URL.RequestURI(), r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		resp, err := target.Client().Do(req)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		w.WriteHeader(resp.StatusCode)
		_, _ = io.Copy(w, resp.Body)
	}))
	relay.TLS = &tls.Config{Certificates: []tls.Certificate{SelfSignedCert(tb)}}
	relay.StartTLS()
	tb.Cleanup(relay.Close)
	return relay
}

// SelfSignedCert returns a fresh self-signed ECDSA P-256 server
// certificate for 127.0.0.1, valid from an hour ago to an hour from now.
func SelfSignedCert(tb testing.TB) tls.Certificate {
	tb.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: "relay"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		tb.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}
