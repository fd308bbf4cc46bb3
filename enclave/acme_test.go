package enclave_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/letsencrypt/pebble/v2/ca"
	"github.com/letsencrypt/pebble/v2/db"
	"github.com/letsencrypt/pebble/v2/va"
	"github.com/letsencrypt/pebble/v2/wfe"
	"github.com/miekg/dns"

	"github.com/quenchnet/quench/attestation"
	"github.com/quenchnet/quench/enclave"
	"github.com/quenchnet/quench/internal/testutil"
)

// acmeName is the enclave's name in the ACME test; the test's DNS server
// resolves it to 127.0.0.1, where the host publishes the enclave's :443.
const acmeName = "enclave.quench.test"

// testServerCert returns a self-signed certificate for the given IPs and
// its pool.
func testServerCert(tb testing.TB, ips ...netip.Addr) (tls.Certificate, *x509.CertPool) {
	tb.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "pebble test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	for _, ip := range ips {
		tmpl.IPAddresses = append(tmpl.IPAddresses, ip.AsSlice())
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		tb.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool
}

// startDNS serves A acmeName → 127.0.0.1 over TCP (Pebble's custom
// resolver speaks TCP) and returns its address.
func startDNS(tb testing.TB) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	srv := &dns.Server{Listener: ln, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		for _, q := range r.Question {
			if q.Qtype == dns.TypeA && strings.EqualFold(q.Name, acmeName+".") {
				m.Answer = append(m.Answer, &dns.A{
					Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60},
					A:   net.IPv4(127, 0, 0, 1),
				})
			}
		}
		_ = w.WriteMsg(m)
	})}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.ActivateAndServe()
	}()
	tb.Cleanup(func() {
		_ = srv.Shutdown()
		<-done
	})
	return ln.Addr().String()
}

// startPebble runs Pebble's ACME server in process on the host's
// 127.0.0.1; its validation authority connects to tlsPort for TLS-ALPN-01.
// It returns the directory URL as the enclave sees it (through the host
// loopback address 192.168.127.254) and the roots for its HTTPS.
func startPebble(tb testing.TB, tlsPort int, resolver string) (string, *x509.CertPool) {
	tb.Helper()
	tb.Setenv("PEBBLE_VA_NOSLEEP", "1")
	tb.Setenv("PEBBLE_WFE_NONCEREJECT", "0")
	logger := log.New(io.Discard, "", 0)
	if testing.Verbose() {
		logger = log.New(testWriter{tb}, "pebble ", 0)
	}
	store := db.NewMemoryStore()
	authority := ca.New(logger, store, "", "ecdsa", 0, 1, map[string]ca.Profile{"default": {Description: "default"}})
	// The VA's worker goroutine has no stop; it idles after the test.
	validator := va.New(logger, 0, tlsPort, false, resolver, store)
	front := wfe.New(logger, store, validator, authority, []string{"pebble.letsencrypt.org"}, false, false, 1, 1)
	cert, pool := testServerCert(tb, netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("192.168.127.254"))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	srv := &http.Server{
		Handler:           front.Handler(),
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{cert}},
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          log.New(io.Discard, "", 0),
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.ServeTLS(ln, "", "")
	}()
	tb.Cleanup(func() {
		_ = srv.Close()
		<-done
	})
	port := ln.Addr().(*net.TCPAddr).Port
	return "https://192.168.127.254:" + strconv.Itoa(port) + "/dir", pool
}

type testWriter struct{ tb testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.tb.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// TestACMEPebble obtains the enclave's certificate from Pebble with
// TLS-ALPN-01: the ACME client talks to Pebble through the enclave's
// network and the host; Pebble's validator connects to the host's
// published port, which reaches the enclave's public listener.
func TestACMEPebble(t *testing.T) {
	if testing.Short() {
		t.Skip("ACME issuance takes a few seconds")
	}
	sock := filepath.Join(t.TempDir(), "host.sock")
	h := svHost(t, sock)
	published := h.Published()[0].(*net.TCPAddr)
	dir, roots := startPebble(t, published.Port, startDNS(t))
	dev, err := attestation.NewDevAttester(attestation.DevConfig{})
	if err != nil {
		t.Fatal(err)
	}
	e, err := enclave.New(enclave.Config{
		DialHost:      testutil.DialUnix(sock),
		Handler:       http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "acme app") }),
		InternalAddr:  "-",
		Attester:      dev,
		FQDN:          acmeName,
		ACME:          true,
		ACMEDirectory: dir,
		ACMERoots:     roots,
		ACMECacheDir:  t.TempDir(),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := e.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.Close() })

	// The first handshake with the name triggers issuance.
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 60 * time.Second}, "tcp", published.String(), &tls.Config{
		ServerName:         acmeName,
		InsecureSkipVerify: true, // Pebble's root is random; checked below by issuer
	})
	if err != nil {
		t.Fatalf("TLS handshake (ACME issuance): %v", err)
	}
	leaf := conn.ConnectionState().PeerCertificates[0]
	_ = conn.Close()
	if !strings.Contains(leaf.Issuer.CommonName, "Pebble") {
		t.Errorf("certificate issued by %q, want Pebble", leaf.Issuer.CommonName)
	}
	if len(leaf.DNSNames) != 1 || leaf.DNSNames[0] != acmeName {
		t.Errorf("certificate names %v, want [%s]", leaf.DNSNames, acmeName)
	}

	// Attestation binds the ACME certificate.
	res, err := attestation.VerifyRemote(ctx, "https://"+published.String(), attestation.RemoteConfig{
		Options:   attestation.Options{Time: time.Now(), Roots: dev.Roots()},
		TLSConfig: &tls.Config{ServerName: acmeName, InsecureSkipVerify: true},
	})
	if err != nil {
		t.Fatalf("VerifyRemote: %v", err)
	}
	ud, _ := attestation.ParseUserData(res.UserData)
	if ud.TLSCertHash != attestation.CertHash(leaf.Raw) {
		t.Errorf("document binds %x, served certificate hashes to %x", ud.TLSCertHash, attestation.CertHash(leaf.Raw))
	}
	// A client without SNI (connecting by IP) gets the same certificate.
	conn, err = tls.Dial("tcp", published.String(), &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	if got := conn.ConnectionState().PeerCertificates[0]; !got.Equal(leaf) {
		t.Error("no-SNI client got a different certificate")
	}
	_ = conn.Close()
}
