package enclave

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/quenchnet/quench/enclave/keysync"
	"github.com/quenchnet/quench/proxy"
)

func cachedCertPEM(t *testing.T, name string, key crypto.Signer) []byte {
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: name},
		DNSNames:     []string{name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(60 * 24 * time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	switch k := key.(type) {
	case *ecdsa.PrivateKey:
		b, _ := x509.MarshalECPrivateKey(k)
		pem.Encode(&buf, &pem.Block{Type: "EC PRIVATE KEY", Bytes: b})
	case *rsa.PrivateKey:
		pem.Encode(&buf, &pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(k)})
	}
	pem.Encode(&buf, &pem.Block{Type: "CERTIFICATE", Bytes: der})
	return buf.Bytes()
}

// TestACMEServesAttestedCertificate: with ACME, autocert would serve an RSA
// certificate to clients that do not offer ECDSA, while documents bind the
// hash of the ECDSA one: such clients would get documents for a
// certificate other than the one on their connection. Every client gets
// the ECDSA certificate, the attested one.
func TestACMEServesAttestedCertificate(t *testing.T) {
	const name = "enclave.example"
	dir := t.TempDir()
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	rk, _ := rsa.GenerateKey(rand.Reader, 2048)
	if err := os.WriteFile(filepath.Join(dir, name), cachedCertPEM(t, name, ec), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name+"+rsa"), cachedCertPEM(t, name, rk), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := Config{ACME: true, FQDN: name, ACMEDirectory: "https://127.0.0.1:1/dir", ACMECacheDir: dir}
	certs, err := newCertSource(cfg, &http.Client{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	// An RSA-only client (TLS 1.2, RSA key exchange suites, no ECDSA schemes).
	served, err := certs.get(&tls.ClientHelloInfo{
		ServerName:        name,
		CipherSuites:      []uint16{tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256},
		SignatureSchemes:  []tls.SignatureScheme{tls.PSSWithSHA256, tls.PKCS1WithSHA256},
		SupportedCurves:   []tls.CurveID{tls.X25519},
		SupportedVersions: []uint16{tls.VersionTLS12},
	})
	if err != nil {
		t.Fatal(err)
	}
	attested, err := certs.hash(name)
	if err != nil {
		t.Fatal(err)
	}
	if got := sha256.Sum256(served.Certificate[0]); got != attested {
		t.Fatalf("served a %T certificate (sha256 %x), documents bind %x (the ECDSA one)", served.PrivateKey, got[:8], attested[:8])
	}
}

// TestACMEKeySyncHandshake: with ACME, the public TLS config serves only
// FQDN (autocert's HostWhitelist), but the key sync client (leader
// election, heartbeats) sends SNI = the leader's name (FQDNLeader), which
// is not FQDN: the key sync listener has a certificate of its own, served
// for any name.
func TestACMEKeySyncHandshake(t *testing.T) {
	cfg := Config{ACME: true, FQDN: "enclave.example", ACMEDirectory: "https://127.0.0.1:1/dir"}
	certs, err := newCertSource(cfg, &http.Client{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	syncTLS, err := certs.syncTLSConfig()
	if err != nil {
		t.Fatal(err)
	}
	srv := proxy.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusOK)
	}), proxy.ServerConfig{TLSConfig: syncTLS})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(tls.NewListener(ln, srv.TLSConfig))
	t.Cleanup(func() { _ = srv.Close() })
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	// What keysync's client does: InsecureSkipVerify, SNI from the URL host.
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true},
	}}
	resp, err := c.Get("https://localhost:" + port + keysync.LeaderPath + "?nonce=" + strings.Repeat("00", 20))
	if err != nil {
		t.Fatalf("key sync request to leader named %q (FQDN %q) fails the TLS handshake: %v", "localhost", cfg.FQDN, err)
	}
	resp.Body.Close()
}
