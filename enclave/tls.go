package enclave

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/acme"
	"golang.org/x/crypto/acme/autocert"
)

// certSource hands out the public server's certificate.
type certSource struct {
	// static is the self-signed or file certificate (nil with ACME); key
	// synchronisation replaces it on workers with the leader's.
	static atomic.Pointer[tls.Certificate]
	acme   *autocert.Manager // nil unless Config.ACME
	fqdn   string            // name asked for when a client sends no SNI
	kind   string            // "self-signed", "file" or "acme"
}

func staticSource(c *tls.Certificate, fqdn, kind string) *certSource {
	s := &certSource{fqdn: fqdn, kind: kind}
	s.static.Store(c)
	return s
}

// current returns the static certificate; nil with ACME.
func (s *certSource) current() *tls.Certificate { return s.static.Load() }

// install replaces the static certificate (key synchronisation on a
// worker). With ACME it does nothing: each enclave obtains its own.
func (s *certSource) install(c *tls.Certificate) error {
	if s.acme != nil {
		return nil
	}
	if c == nil || len(c.Certificate) == 0 {
		return errors.New("enclave: empty certificate")
	}
	s.static.Store(c)
	return nil
}

// newCertSource loads, generates or sets up the certificate (Start only:
// it reads files). dial is the enclave's dialer, for the ACME client.
func newCertSource(cfg Config, client *http.Client) (*certSource, error) {
	switch {
	case cfg.TLSCertFile != "":
		c, err := tls.LoadX509KeyPair(cfg.TLSCertFile, cfg.TLSKeyFile)
		if err != nil {
			return nil, fmt.Errorf("enclave: TLS certificate: %w", err)
		}
		leaf, err := x509.ParseCertificate(c.Certificate[0])
		if err != nil {
			return nil, fmt.Errorf("enclave: TLS certificate %s: %w", cfg.TLSCertFile, err)
		}
		c.Leaf = leaf
		return staticSource(&c, cfg.FQDN, "file"), nil
	case cfg.ACME:
		m := &autocert.Manager{
			Prompt:     autocert.AcceptTOS,
			HostPolicy: autocert.HostWhitelist(cfg.FQDN),
			Email:      cfg.ACMEEmail,
			Client:     &acme.Client{DirectoryURL: cfg.ACMEDirectory, HTTPClient: client},
		}
		if cfg.ACMECacheDir != "" {
			m.Cache = autocert.DirCache(cfg.ACMECacheDir)
		}
		return &certSource{acme: m, fqdn: cfg.FQDN, kind: "acme"}, nil
	default:
		name := cfg.FQDN
		if name == "" {
			name = DefaultSelfSignedName
		}
		c, err := selfSigned(name, cfg.Address.Addr(), time.Now())
		if err != nil {
			return nil, fmt.Errorf("enclave: self-signed certificate: %w", err)
		}
		return staticSource(c, cfg.FQDN, "self-signed"), nil
	}
}

// selfSigned makes an ECDSA P-256 certificate for name and ip, valid for a
// year from an hour before now.
func selfSigned(name string, ip netip.Addr, now time.Time) (*tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: name, Organization: []string{"quench enclave (self-signed)"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		DNSNames:              []string{name},
	}
	if ip.IsValid() {
		tmpl.IPAddresses = []net.IP{ip.AsSlice()}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, nil
}

// tlsConfig is the public server's TLS configuration.
func (s *certSource) tlsConfig() *tls.Config {
	tc := &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: s.get,
		NextProtos:     []string{"h2", "http/1.1"},
	}
	if s.acme != nil {
		tc.NextProtos = append(tc.NextProtos, acme.ALPNProto)
	}
	return tc
}

// get picks the certificate for a handshake. With ACME it always asks
// autocert as a client supporting ECDSA (asECDSAClient), so every client
// gets the ECDSA certificate whose hash documents bind (hash): autocert
// would serve clients without ECDSA an RSA certificate, bound nowhere.
// Clients that support no ECDSA (none current) fail the handshake.
func (s *certSource) get(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	if c := s.static.Load(); c != nil {
		return c, nil
	}
	h := *hello
	if h.ServerName == "" {
		// Clients that connect by IP address send no SNI.
		h.ServerName = s.fqdn
	}
	asECDSAClient(&h)
	return s.acme.GetCertificate(&h)
}

// asECDSAClient makes hello look like a modern client's, for which
// autocert picks (and obtains) its ECDSA P-256 certificate, not RSA.
func asECDSAClient(hello *tls.ClientHelloInfo) {
	hello.SignatureSchemes = []tls.SignatureScheme{tls.ECDSAWithP256AndSHA256}
	hello.SupportedCurves = []tls.CurveID{tls.CurveP256}
	hello.CipherSuites = []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256}
	hello.SupportedVersions = []uint16{tls.VersionTLS13, tls.VersionTLS12}
}

// syncTLSConfig is the TLS configuration of the key sync listener. Peers
// do not verify its certificate (keysync authenticates them by attestation
// documents binding nonces and an ECDH key, not the TLS certificate), but
// the handshake must succeed whatever name they use (the leader's name,
// FQDNLeader, or an address). Without ACME that is the public
// certificate, which is served for any name. With ACME, autocert serves
// only FQDN, so the sync listener gets its own self-signed certificate.
func (s *certSource) syncTLSConfig() (*tls.Config, error) {
	if s.acme == nil {
		return s.tlsConfig(), nil
	}
	name := s.fqdn
	if name == "" {
		name = DefaultSelfSignedName
	}
	c, err := selfSigned(name, netip.Addr{}, time.Now())
	if err != nil {
		return nil, fmt.Errorf("enclave: key sync certificate: %w", err)
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{*c},
		NextProtos:   []string{"h2", "http/1.1"},
	}, nil
}

// hash returns the SHA-256 of the leaf certificate served for serverName
// (the name the client sent; "" for none): the value bound in attestation
// documents. With ACME it may obtain the certificate.
func (s *certSource) hash(serverName string) ([sha256.Size]byte, error) {
	if c := s.static.Load(); c != nil {
		return sha256.Sum256(c.Certificate[0]), nil
	}
	if serverName == "" {
		serverName = s.fqdn
	}
	// Ask as get does, so autocert picks the ECDSA certificate it serves
	// to every client.
	hello := &tls.ClientHelloInfo{ServerName: serverName}
	asECDSAClient(hello)
	c, err := s.acme.GetCertificate(hello)
	if err != nil {
		return [sha256.Size]byte{}, err
	}
	if len(c.Certificate) == 0 {
		return [sha256.Size]byte{}, errors.New("enclave: ACME certificate is empty")
	}
	return sha256.Sum256(c.Certificate[0]), nil
}
