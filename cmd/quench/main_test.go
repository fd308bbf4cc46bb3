package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/quenchnet/quench/attestation"
	"github.com/quenchnet/quench/attestation/attestationtest"
)

const (
	realDocPath = "../../attestation/testdata/nitro-attestation-2022-07-12.b64"
	realAt      = "2022-07-12T21:00:00Z"
	realNonce   = "efdf3cd3cf76f39ef6f7cefd"
	realPCR4    = "28c7ea32aec0384948c7b6373fb6ec5402789e28000f3bb002ecb97b96a15f583db4785d9d6bb393a8245d1bd6d98832"
	zeroPCR     = "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
)

// fixture is what the end-to-end tests share: a development attester, its
// root in a file, an enclave-like HTTPS server serving its documents, and a
// stored development document.
type fixture struct {
	dev       *attestation.DevAttester
	rootsPath string
	srv       *httptest.Server
	devDoc    string // path of a base64 development document
	rawDoc    string // path of the same document, raw CBOR
	devNonce  []byte
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	dir := t.TempDir()
	f := &fixture{
		dev:       attestationtest.NewDevAttester(t, attestation.DevConfig{PCRs: map[uint][]byte{0: bytes.Repeat([]byte{0xaa}, 48)}}),
		rootsPath: filepath.Join(dir, "dev-root.pem"),
		devDoc:    filepath.Join(dir, "dev.b64"),
		rawDoc:    filepath.Join(dir, "dev.cbor"),
		devNonce:  []byte("stored-nonce"),
	}
	if err := f.dev.WriteRootPEM(f.rootsPath); err != nil {
		t.Fatal(err)
	}
	f.srv = attestationtest.NewServer(t, f.dev)
	doc, err := f.dev.Attest(context.Background(), attestation.Request{
		Nonce:    f.devNonce,
		UserData: attestation.UserData{TLSCertHash: [32]byte{0xcc}}.Marshal(),
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(f.devDoc, []byte(base64.StdEncoding.EncodeToString(doc)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(f.rawDoc, doc, 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

func runQuench(t *testing.T, stdin string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = run(context.Background(), args, strings.NewReader(stdin), &out, &errb)
	return code, out.String(), errb.String()
}

// checkRun fails the test unless a command exited with wantCode and its
// stdout and stderr hold wantOut and wantErr.
func checkRun(t *testing.T, code int, stdout, stderr string, wantCode int, wantOut, wantErr string) {
	t.Helper()
	if code != wantCode {
		t.Fatalf("exit %d, want %d\nstdout: %s\nstderr: %s", code, wantCode, stdout, stderr)
	}
	if !strings.Contains(stdout, wantOut) {
		t.Errorf("stdout %q does not contain %q", stdout, wantOut)
	}
	if !strings.Contains(stderr, wantErr) {
		t.Errorf("stderr %q does not contain %q", stderr, wantErr)
	}
}

func TestVerifyCommand(t *testing.T) {
	f := newFixture(t)
	ccHash := hex.EncodeToString(bytes.Repeat([]byte{0xcc}, 1)) + strings.Repeat("00", 31)
	b64, _ := os.ReadFile(f.devDoc)
	tests := []struct {
		name      string
		stdin     string
		args      []string
		wantCode  int
		wantOut   string // substring of stdout
		wantErr   string // substring of stderr
		oneLine   bool   // stderr must be exactly one line
		wantEmpty bool   // stdout must be empty
	}{
		// Stored documents.
		{name: "real doc", args: []string{"verify", "--doc", realDocPath, "--at", realAt, "--pcr", "4=" + realPCR4, "--pcr", "0=" + zeroPCR, "--nonce", realNonce},
			wantCode: 0, wantOut: "signature, certificate_chain, pcrs, nonce"},
		{name: "real doc expired today", args: []string{"verify", "--doc", realDocPath},
			wantCode: 1, wantErr: "certificate has expired", oneLine: true, wantEmpty: true},
		{name: "real doc wrong PCR", args: []string{"verify", "--doc", realDocPath, "--at", realAt, "--pcr", "4=" + zeroPCR},
			wantCode: 1, wantErr: "PCR4 mismatch", oneLine: true},
		{name: "real doc wrong nonce", args: []string{"verify", "--doc", realDocPath, "--at", realAt, "--nonce", "00"},
			wantCode: 1, wantErr: "nonce mismatch", oneLine: true},
		{name: "real doc too old", args: []string{"verify", "--doc", realDocPath, "--at", realAt, "--max-age", "1h"},
			wantCode: 1, wantErr: "old", oneLine: true},
		{name: "real doc with dev roots", args: []string{"verify", "--doc", realDocPath, "--at", realAt, "--roots", f.rootsPath},
			wantCode: 1, wantErr: "certificate signed by unknown authority", oneLine: true},
		{name: "dev doc", args: []string{"verify", "--doc", f.devDoc, "--roots", f.rootsPath, "--cert-sha256", ccHash, "--nonce", hex.EncodeToString(f.devNonce), "--max-age", "1m"},
			wantCode: 0, wantOut: "tls_cert_sha256: " + ccHash},
		{name: "dev doc raw CBOR", args: []string{"verify", "--roots", f.rootsPath, "--doc", f.rawDoc}, wantCode: 0},
		{name: "dev doc on stdin", stdin: string(b64), args: []string{"verify", "--doc", "-", "--roots", f.rootsPath}, wantCode: 0},
		{name: "dev doc with AWS root", args: []string{"verify", "--doc", f.devDoc},
			wantCode: 1, wantErr: "unknown authority", oneLine: true},
		{name: "dev doc wrong cert", args: []string{"verify", "--doc", f.devDoc, "--roots", f.rootsPath, "--cert-sha256", strings.Repeat("11", 32)},
			wantCode: 1, wantErr: "tls_cert_hash", oneLine: true},
		{name: "dev doc wrong app key", args: []string{"verify", "--doc", f.devDoc, "--roots", f.rootsPath, "--app-key-sha256", strings.Repeat("11", 32)},
			wantCode: 1, wantErr: "app_key_hash", oneLine: true},
		{name: "dev doc wrong PCR0", args: []string{"verify", "--doc", f.devDoc, "--roots", f.rootsPath, "--pcr", "0=" + zeroPCR},
			wantCode: 1, wantErr: "PCR0 mismatch", oneLine: true},
		{name: "garbage doc", stdin: "not a document", args: []string{"verify", "--doc", "-"},
			wantCode: 1, wantErr: "malformed attestation document", oneLine: true},
		{name: "missing doc", args: []string{"verify", "--doc", filepath.Join(t.TempDir(), "none")},
			wantCode: 1, wantErr: "no such file", oneLine: true},
		{name: "missing roots", args: []string{"verify", "--doc", f.devDoc, "--roots", filepath.Join(t.TempDir(), "none")},
			wantCode: 1, wantErr: "load roots", oneLine: true},

		// Live enclave (the test server binds its own certificate).
		{name: "URL", args: []string{"verify", f.srv.URL, "--roots", f.rootsPath, "--insecure-skip-tls-verify", "--pcr", "0=" + strings.Repeat("aa", 48), "--max-age", "1m"},
			wantCode: 0, wantOut: "signature, certificate_chain, pcrs, nonce, max_age, tls_cert_hash"},
		{name: "URL flags after", args: []string{"verify", "--roots", f.rootsPath, f.srv.URL, "--insecure-skip-tls-verify", "--nonce", strings.Repeat("ab", 20)},
			wantCode: 0, wantOut: "nonce:       " + strings.Repeat("ab", 20)},
		{name: "URL without skip-verify", args: []string{"verify", f.srv.URL, "--roots", f.rootsPath},
			wantCode: 1, wantErr: "certificate signed by unknown authority", oneLine: true},
		// A new user's first try at an enclave's self-signed certificate:
		// the error names the flag.
		{name: "URL without skip-verify names the flag", args: []string{"verify", "--config", f.srv.URL, "--roots", f.rootsPath},
			wantCode: 1, wantErr: "--insecure-skip-tls-verify", oneLine: true},
		{name: "URL with AWS root", args: []string{"verify", f.srv.URL, "--insecure-skip-tls-verify"},
			wantCode: 1, wantErr: "certificate chain not trusted", oneLine: true},
		// A new user's first try at a -dev-attester enclave: the error
		// names the flag.
		{name: "URL with AWS root names --roots", args: []string{"verify", f.srv.URL, "--insecure-skip-tls-verify"},
			wantCode: 1, wantErr: "--roots", oneLine: true},
		{name: "URL wrong PCR", args: []string{"verify", f.srv.URL, "--roots", f.rootsPath, "--insecure-skip-tls-verify", "--pcr", "0=" + zeroPCR},
			wantCode: 1, wantErr: "PCR0 mismatch", oneLine: true},
		{name: "URL nothing listening", args: []string{"verify", "https://" + closedAddr(t), "--insecure-skip-tls-verify"},
			wantCode: 1, wantErr: "refused", oneLine: true},

		// Usage.
		{name: "no command", args: nil, wantCode: 2, wantErr: "usage: quench"},
		{name: "help", args: []string{"help"}, wantCode: 0, wantOut: "verify"},
		{name: "verify -h", args: []string{"verify", "-h"}, wantCode: 0, wantErr: "--doc FILE"},
		{name: "unknown command", args: []string{"attest"}, wantCode: 2, wantErr: `unknown command "attest"`},
		{name: "nothing to verify", args: []string{"verify"}, wantCode: 2, wantErr: "give a URL"},
		{name: "URL and doc", args: []string{"verify", f.srv.URL, "--doc", f.devDoc}, wantCode: 2, wantErr: "not both"},
		{name: "two URLs", args: []string{"verify", f.srv.URL, f.srv.URL}, wantCode: 2, wantErr: "one URL"},
		{name: "http URL", args: []string{"verify", "http://127.0.0.1:1"}, wantCode: 2, wantErr: "https://"},
		{name: "bad PCR index", args: []string{"verify", "--doc", f.devDoc, "--pcr", "32=" + zeroPCR}, wantCode: 2, wantErr: "0 to 31"},
		{name: "bad PCR hex", args: []string{"verify", "--doc", f.devDoc, "--pcr", "1=xyz"}, wantCode: 2, wantErr: "PCR1 value"},
		{name: "bad PCR length", args: []string{"verify", "--doc", f.devDoc, "--pcr", "1=00"}, wantCode: 2, wantErr: "1 bytes"},
		{name: "PCR twice", args: []string{"verify", "--doc", f.devDoc, "--pcr", "1=" + zeroPCR, "--pcr", "1=" + zeroPCR}, wantCode: 2, wantErr: "twice"},
		{name: "bad time", args: []string{"verify", "--doc", f.devDoc, "--at", "yesterday"}, wantCode: 2, wantErr: "--at"},
		{name: "cert hash with URL", args: []string{"verify", f.srv.URL, "--cert-sha256", strings.Repeat("00", 32)}, wantCode: 2, wantErr: "--cert-sha256 is for --doc"},
		{name: "short URL nonce", args: []string{"verify", f.srv.URL, "--nonce", "00"}, wantCode: 2, wantErr: "40 hex digits"},
		{name: "skip-verify with doc", args: []string{"verify", "--doc", f.devDoc, "--insecure-skip-tls-verify"}, wantCode: 2, wantErr: "is for a URL"},
		{name: "short cert hash", args: []string{"verify", "--doc", f.devDoc, "--cert-sha256", "00"}, wantCode: 2, wantErr: "want 32"},
		// --nonce "$UNSET" must not turn into "expect no nonce".
		{name: "zero timeout", args: []string{"verify", f.srv.URL, "--timeout", "0s"}, wantCode: 2, wantErr: "--timeout must be positive"},
		{name: "empty nonce", args: []string{"verify", "--doc", f.devDoc, "--nonce", ""}, wantCode: 2, wantErr: "empty value"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, stdout, stderr := runQuench(t, tt.stdin, tt.args...)
			checkRun(t, code, stdout, stderr, tt.wantCode, tt.wantOut, tt.wantErr)
			if tt.oneLine && (strings.Count(stderr, "\n") != 1 || !strings.HasSuffix(stderr, "\n") || !strings.HasPrefix(stderr, "quench verify: FAILED: ")) {
				t.Errorf("stderr is not one FAILED line: %q", stderr)
			}
			if tt.wantEmpty && stdout != "" {
				t.Errorf("stdout not empty: %q", stdout)
			}
		})
	}
}

func TestVerifyJSON(t *testing.T) {
	code, stdout, stderr := runQuench(t, "", "verify", "--json", "--doc", realDocPath, "--at", realAt, "--nonce", realNonce, "--pcr", "4="+realPCR4)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	var got map[string]any
	if err := json.Unmarshal([]byte(stdout), &got); err != nil {
		t.Fatalf("stdout is not JSON: %v\n%s", err, stdout)
	}
	pcrs := got["pcrs"].(map[string]any)
	if len(pcrs) != 16 || pcrs["4"] != realPCR4 {
		t.Errorf("pcrs = %v", pcrs)
	}
	delete(got, "pcrs")
	want := map[string]any{
		"verified":              true,
		"verified_at":           realAt,
		"module_id":             "i-029e0eacb65267caa-enc0181f3b11fbd2d84",
		"timestamp":             "2022-07-12T18:35:18.399Z",
		"digest":                "SHA384",
		"user_data":             nil,
		"nonce":                 realNonce,
		"public_key":            "81613310f630246dfebe8bbab763bd835a2736b9be839bb8677e9065ce3ce161",
		"certificate_subject":   "CN=i-029e0eacb65267caa-enc0181f3b11fbd2d84.us-east-2.aws,OU=AWS,O=Amazon,L=Seattle,ST=Washington,C=US",
		"certificate_not_after": "2022-07-12T21:35:18Z",
		"checks":                []any{"signature", "certificate_chain", "pcrs", "nonce"},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("JSON (-want +got):\n%s", diff)
	}

	// Failures are JSON too, besides the stderr line.
	code, stdout, _ = runQuench(t, "", "verify", "--json", "--doc", realDocPath)
	if code != 1 {
		t.Fatalf("exit %d", code)
	}
	var fail struct {
		Verified bool
		Error    string
	}
	if err := json.Unmarshal([]byte(stdout), &fail); err != nil || fail.Verified || !strings.Contains(fail.Error, "expired") {
		t.Errorf("failure JSON = %q (%v)", stdout, err)
	}
}

// TestVerifyURLBindsThatConnection: a relay with its own certificate that
// forwards the genuine enclave's documents is rejected.
func TestVerifyURLBindsThatConnection(t *testing.T) {
	f := newFixture(t)
	relay := attestationtest.NewRelay(t, f.srv, nil)
	code, _, stderr := runQuench(t, "", "verify", relay.URL, "--roots", f.rootsPath, "--insecure-skip-tls-verify")
	if code != 1 || !strings.Contains(stderr, "tls_cert_hash") {
		t.Fatalf("exit %d, stderr %q; want a certificate binding failure", code, stderr)
	}
}

// TestBinary builds the quench binary and checks its exit statuses and
// output streams as a shell script would see them.
func TestBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a binary")
	}
	bin := filepath.Join(t.TempDir(), "quench")
	build := exec.Command(filepath.Join(runtime.GOROOT(), "bin", "go"), "build", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	f := newFixture(t)
	tests := []struct {
		name     string
		args     []string
		wantCode int
		wantErr  string
	}{
		{"real doc verifies", []string{"verify", "--doc", realDocPath, "--at", realAt, "--pcr", "4=" + realPCR4}, 0, ""},
		{"real doc expired", []string{"verify", "--doc", realDocPath}, 1, "expired"},
		{"live enclave", []string{"verify", f.srv.URL, "--roots", f.rootsPath, "--insecure-skip-tls-verify"}, 0, ""},
		{"live enclave, AWS root", []string{"verify", f.srv.URL, "--insecure-skip-tls-verify"}, 1, "not trusted"},
		{"bad flag", []string{"verify", "--no-such-flag"}, 2, "flag provided but not defined"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, bin, tt.args...)
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			err := cmd.Run()
			code := 0
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				code = ee.ExitCode()
			} else if err != nil {
				t.Fatal(err)
			}
			if code != tt.wantCode {
				t.Fatalf("exit %d, want %d\nstdout: %s\nstderr: %s", code, tt.wantCode, stdout.String(), stderr.String())
			}
			if !strings.Contains(stderr.String(), tt.wantErr) {
				t.Errorf("stderr %q does not contain %q", stderr.String(), tt.wantErr)
			}
			if code == 1 && strings.Count(stderr.String(), "\n") != 1 {
				t.Errorf("stderr is not one line: %q", stderr.String())
			}
			if code == 0 && !strings.Contains(stdout.String(), "verified at") {
				t.Errorf("stdout %q", stdout.String())
			}
		})
	}
}

// selfSignedCert signs tmpl with a new P-256 key, as a server certificate
// valid from an hour ago to an hour from now.
func selfSignedCert(tb testing.TB, tmpl *x509.Certificate) tls.Certificate {
	tb.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	tmpl.NotBefore, tmpl.NotAfter = time.Now().Add(-time.Hour), time.Now().Add(time.Hour)
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		tb.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func closedAddr(tb testing.TB) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// TestVerifyErrorIsTerminalSafe: the server's certificate is text the
// server chooses (DNS names may hold any ASCII, controls included), and a
// hostname mismatch puts its names into the error. The FAILED line, and the
// JSON error, must carry them escaped, not as escape sequences for the
// terminal of whoever runs quench verify.
func TestVerifyErrorIsTerminalSafe(t *testing.T) {
	cert := selfSignedCert(t, &x509.Certificate{
		SerialNumber: big.NewInt(8),
		Subject:      pkix.Name{CommonName: "hostile"},
		DNSNames:     []string{"\x1b]0;owned\x07\x1b[2Jverified.example\x7f"},
	})
	srv := httptest.NewUnstartedServer(http.NotFoundHandler())
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	url := "https://localhost:" + port

	code, stdout, stderr := runQuench(t, "", "verify", url, "--json", "--timeout", "10s")
	if code != 1 {
		t.Fatalf("exit %d, want 1\nstdout: %q\nstderr: %q", code, stdout, stderr)
	}
	if !strings.Contains(stderr, "certificate is valid for") {
		t.Fatalf("stderr %q: want the hostname mismatch", stderr)
	}
	for _, out := range []string{stderr, stdout} {
		if strings.ContainsAny(out, "\x1b\x07\x7f") {
			t.Errorf("control characters reach the terminal: %q", out)
		}
	}
	if want := `\x1b]0;owned\a\x1b[2Jverified.example\x7f`; !strings.Contains(stderr, want) {
		t.Errorf("stderr %q does not show the name escaped as %s", stderr, want)
	}
	if strings.Count(stderr, "\n") != 1 {
		t.Errorf("stderr is not one line: %q", stderr)
	}
}

// TestVerifyConfig: --config verifies and prints the attested configuration
// (text and JSON), rejects one the document does not bind, and is refused
// with --doc.
func TestVerifyConfig(t *testing.T) {
	f := newFixture(t)
	config := []byte("{\"egress\":[\"kms.us-east-1.amazonaws.com:443\"],\"annotations\":{\"app_sandbox\":\"seccomp\",\"note\":\"\u202egnp.exe\"}}")
	srv := attestationtest.NewConfigServer(t, f.dev, config, nil)
	code, stdout, stderr := runQuench(t, "", "verify", "--config", srv.URL, "--roots", f.rootsPath, "--insecure-skip-tls-verify")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	for _, want := range []string{"public_key", "config (bound by public_key):", `"kms.us-east-1.amazonaws.com:443"`, `"app_sandbox": "seccomp"`, `\u202egnp.exe`} {
		if !strings.Contains(stdout, want) {
			t.Errorf("output lacks %q:\n%s", want, stdout)
		}
	}
	if strings.ContainsRune(stdout, '\u202e') {
		t.Errorf("a bidirectional override reached the terminal:\n%q", stdout)
	}
	if strings.Contains(stderr, "logs_to_host") {
		t.Errorf("a note about logs for an enclave that keeps them: %q", stderr)
	}
	// An enclave whose logs go to the host (quench-enclave -log-to): a
	// note on stderr, since the egress policy does not cover them.
	logsConfig := []byte(`{"egress":["kms.us-east-1.amazonaws.com:443"],"annotations":{"logs_to_host":"vsock://3:1025"}}`)
	logsSrv := attestationtest.NewConfigServer(t, f.dev, logsConfig, nil)
	code, _, stderr = runQuench(t, "", "verify", "--config", logsSrv.URL, "--roots", f.rootsPath, "--insecure-skip-tls-verify")
	if code != 0 || !strings.Contains(stderr, "note: the enclave sends its log and its app's output to the parent instance in clear (annotations.logs_to_host: vsock://3:1025)") {
		t.Errorf("logs_to_host: exit %d, stderr %q", code, stderr)
	}

	code, stdout, stderr = runQuench(t, "", "verify", "--json", "--config", srv.URL, "--roots", f.rootsPath, "--insecure-skip-tls-verify")
	var got struct {
		Checks []string
		Config map[string]any
	}
	if code != 0 || json.Unmarshal([]byte(stdout), &got) != nil || got.Config["egress"] == nil || !strings.Contains(strings.Join(got.Checks, ","), "public_key") {
		t.Errorf("--json: exit %d, %s %s", code, stdout, stderr)
	}

	swapped := attestationtest.NewConfigServer(t, f.dev, []byte(`{"egress":null}`), config)
	code, stdout, stderr = runQuench(t, "", "verify", "--config", swapped.URL, "--roots", f.rootsPath, "--insecure-skip-tls-verify")
	if code != 1 || !strings.Contains(stderr, "public key mismatch") || strings.Contains(stdout, "egress") {
		t.Errorf("swapped configuration: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	code, _, stderr = runQuench(t, "", "verify", "--config", "--doc", f.devDoc)
	if code != 2 || !strings.Contains(stderr, "--config is for a URL") {
		t.Errorf("--config with --doc: exit %d, %s", code, stderr)
	}
}

// TestVerifyConfigJSONIsTerminalSafe: with --json, the attested
// configuration (whatever an enclave with unpinned PCRs attests) reaches
// stdout with its bidirectional overrides, C1 controls (U+009B is CSI),
// DEL and bytes that are not UTF-8 escaped, as the text output and the
// errors have them, and still decodes to the same values.
func TestVerifyConfigJSONIsTerminalSafe(t *testing.T) {
	f := newFixture(t)
	config := []byte("{\"note\":\"\u202egnp.exe\u009b2J\x7f\xff\",\"emoji\":\"\U0001F600\",\"tag\":\"\U000E0041\"}")
	srv := attestationtest.NewConfigServer(t, f.dev, config, nil)
	code, stdout, stderr := runQuench(t, "", "verify", "--json", "--config", srv.URL, "--roots", f.rootsPath, "--insecure-skip-tls-verify")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	for _, bad := range []string{"\u202e", "\u009b", "\x7f", "\xff", "\U000E0041"} {
		if strings.Contains(stdout, bad) {
			t.Errorf("%q reached the terminal:\n%q", bad, stdout)
		}
	}
	var got struct{ Config map[string]string }
	if err := json.Unmarshal([]byte(stdout), &got); err != nil {
		t.Fatalf("--json output: %v\n%s", err, stdout)
	}
	if got.Config["note"] != "\u202egnp.exe\u009b2J\x7f\ufffd" || got.Config["emoji"] != "\U0001F600" || got.Config["tag"] != "\U000E0041" {
		t.Errorf("config decodes to %q", got.Config)
	}
}

// TestVerifyHelpPlaceholders: each flag's value name in verify -h is one
// word (flag takes the first backquoted text of its usage).
func TestVerifyHelpPlaceholders(t *testing.T) { checkHelpPlaceholders(t, "verify", 10) }

// checkHelpPlaceholders: every flag line of "quench CMD -h" names its value
// in one word (a backquoted placeholder in the usage text), and there are
// at least min of them.
func checkHelpPlaceholders(t *testing.T, cmd string, min int) {
	t.Helper()
	_, _, stderr := runQuench(t, "", cmd, "-h")
	n := 0
	for _, line := range strings.Split(stderr, "\n") {
		if !strings.HasPrefix(line, "  -") {
			continue
		}
		n++
		if strings.Contains(line, "\t") {
			continue // a one-letter boolean flag: its help is on its line
		}
		if f := strings.Fields(line); len(f) > 2 {
			t.Errorf("flag line %q: the value's name is not one word", line)
		}
	}
	if n < min {
		t.Fatalf("found %d flag lines in %s -h:\n%s", n, cmd, stderr)
	}
}

// TestVerifyNotesUnpinnedImage: a verification without --pcr passes for
// every genuine enclave, whatever it runs: stderr says so, once; with a
// PCR pinned it says nothing.
func TestVerifyNotesUnpinnedImage(t *testing.T) {
	f := newFixture(t)
	code, _, stderr := runQuench(t, "", "verify", f.srv.URL, "--roots", f.rootsPath, "--insecure-skip-tls-verify")
	if code != 0 || strings.Count(stderr, "no --pcr given") != 1 {
		t.Errorf("without --pcr: exit %d, stderr %q", code, stderr)
	}
	code, _, stderr = runQuench(t, "", "verify", f.srv.URL, "--roots", f.rootsPath, "--insecure-skip-tls-verify", "--pcr", "0="+strings.Repeat("aa", 48))
	if code != 0 || stderr != "" {
		t.Errorf("with --pcr: exit %d, stderr %q", code, stderr)
	}
}

// TestVerifyNotesZeroPCRs: all-zero --pcr values are what every enclave in
// debug mode reports, whatever its image: a verification that passes with
// only those pins nothing, and stderr says so (quench fetch refuses them
// without --any-image). A zero PCR next to a real one is fine.
func TestVerifyNotesZeroPCRs(t *testing.T) {
	f := newFixture(t)
	common := []string{"verify", f.srv.URL, "--roots", f.rootsPath, "--insecure-skip-tls-verify"}
	code, _, stderr := runQuench(t, "", append(common, "--pcr", "1="+zeroPCR)...)
	if code != 0 || strings.Count(stderr, "all zero") != 1 || strings.Count(stderr, "\n") != 1 {
		t.Errorf("zero --pcr only: exit %d, stderr %q", code, stderr)
	}
	code, _, stderr = runQuench(t, "", append(common, "--pcr", "1="+zeroPCR, "--pcr", "0="+strings.Repeat("aa", 48))...)
	if code != 0 || stderr != "" {
		t.Errorf("zero and real --pcr: exit %d, stderr %q", code, stderr)
	}
}
