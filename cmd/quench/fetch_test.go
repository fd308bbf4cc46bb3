package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/quenchnet/quench/attestation"
	"github.com/quenchnet/quench/attestation/attestationtest"
)

// appServer is an enclave-like HTTPS server: documents binding its
// certificate at attestation.Path, and an app that echoes what it got.
type appServer struct {
	*httptest.Server
	appHits atomic.Int64
}

func newAppServer(t *testing.T, f *fixture) *appServer {
	t.Helper()
	s := &appServer{Server: httptest.NewUnstartedServer(nil)}
	h, err := attestation.NewHandler(attestation.HandlerConfig{
		Attester: f.dev,
		UserData: func() ([]byte, error) {
			return attestation.UserData{TLSCertHash: attestation.CertHash(s.Certificate().Raw)}.Marshal(), nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle(attestation.Path, h)
	mux.HandleFunc("/redirect", func(w http.ResponseWriter, r *http.Request) {
		s.appHits.Add(1)
		http.Redirect(w, r, "https://elsewhere.example/", http.StatusFound)
	})
	mux.HandleFunc("/len", func(w http.ResponseWriter, r *http.Request) {
		s.appHits.Add(1)
		body, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "content-length=%d transfer-encoding=%q body=%q", r.ContentLength, r.TransferEncoding, body)
	})
	mux.HandleFunc("/ua", func(w http.ResponseWriter, r *http.Request) {
		s.appHits.Add(1)
		fmt.Fprintf(w, "user-agent=%q", r.Header.Values("User-Agent"))
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		s.appHits.Add(1)
		body, _ := io.ReadAll(r.Body)
		var hdr []string
		for k, v := range r.Header {
			if strings.HasPrefix(k, "X-") {
				hdr = append(hdr, k+"="+strings.Join(v, ","))
			}
		}
		sort.Strings(hdr)
		w.Header().Set("X-App", "yes")
		if r.URL.Path == "/missing" {
			w.WriteHeader(http.StatusNotFound)
		}
		fmt.Fprintf(w, "%s %s host=%s body=%q %s", r.Method, r.URL.RequestURI(), r.Host, body, strings.Join(hdr, " "))
	})
	s.Config.Handler = mux
	s.StartTLS()
	t.Cleanup(s.Close)
	return s
}

func TestFetchCommand(t *testing.T) {
	f := newFixture(t)
	app := newAppServer(t, f)
	pcr := "0=" + strings.Repeat("aa", 48)
	common := []string{"--roots", f.rootsPath, "--insecure-skip-tls-verify"}
	bodyFile := filepath.Join(t.TempDir(), "body")
	if err := os.WriteFile(bodyFile, []byte("from a file"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		stdin    string
		args     []string
		wantCode int
		wantOut  string
		wantErr  string
		noApp    bool // the app must not have seen the request
	}{
		{name: "GET", args: []string{app.URL + "/a?b=c", "--pcr", pcr}, wantOut: `GET /a?b=c host=` + strings.TrimPrefix(app.URL, "https://") + ` body=""`},
		{name: "POST data", args: []string{app.URL + "/p", "--pcr", pcr, "-d", "hello"}, wantOut: `POST /p host=`},
		{name: "POST data body", args: []string{app.URL + "/p", "--pcr", pcr, "-d", "hello"}, wantOut: `body="hello"`},
		{name: "PUT from file", args: []string{app.URL + "/p", "--pcr", pcr, "-X", "PUT", "-d", "@" + bodyFile}, wantOut: `PUT /p host=`},
		{name: "stdin", stdin: "from stdin", args: []string{app.URL + "/p", "--pcr", pcr, "-d", "@-"}, wantOut: `body="from stdin"`},
		{name: "headers", args: []string{app.URL + "/", "--pcr", pcr, "-H", "X-One: 1", "-H", "x-two:2", "-H", "Host: api.example"}, wantOut: `host=api.example body="" X-One=1 X-Two=2`},
		{name: "include", args: []string{app.URL + "/", "--pcr", pcr, "-i"}, wantOut: "HTTP/1.1 200 OK\r\n"},
		{name: "include header", args: []string{app.URL + "/", "--pcr", pcr, "-i"}, wantOut: "X-App: yes\r\n"},
		{name: "404 printed", args: []string{app.URL + "/missing", "--pcr", pcr}, wantOut: "GET /missing"},
		{name: "404 with --fail", args: []string{app.URL + "/missing", "--pcr", pcr, "--fail"}, wantCode: 1, wantErr: "404 Not Found"},
		{name: "redirect not followed", args: []string{app.URL + "/redirect", "--pcr", pcr, "-i"}, wantOut: "Location: https://elsewhere.example/"},
		{name: "verbose", args: []string{app.URL + "/", "--pcr", pcr, "-v"}, wantErr: "verified 127.0.0.1:"},

		{name: "wrong PCR", args: []string{app.URL + "/secret", "--pcr", "0=" + strings.Repeat("bb", 48)}, wantCode: 1, wantErr: "PCR0 mismatch", noApp: true},
		{name: "zero PCR", args: []string{app.URL + "/secret", "--pcr", "0=" + zeroPCR}, wantCode: 2, wantErr: "every --pcr value is all zero", noApp: true},
		{name: "zero PCR, any image", args: []string{app.URL + "/secret", "--pcr", "0=" + zeroPCR, "--any-image"}, wantCode: 1, wantErr: "PCR0 mismatch", noApp: true},
		{name: "AWS root", args: []string{app.URL + "/secret", "--pcr", pcr, "--insecure-skip-tls-verify"}, wantCode: 1, wantErr: "-dev-root-out", noApp: true},
		{name: "any image", args: []string{app.URL + "/", "--any-image"}, wantOut: "GET / host="},

		{name: "no PCR", args: []string{app.URL + "/"}, wantCode: 2, wantErr: "give the enclave image's PCRs"},
		{name: "http URL", args: []string{"http://127.0.0.1/", "--pcr", pcr}, wantCode: 2, wantErr: "must start with https://"},
		{name: "two URLs", args: []string{app.URL, app.URL, "--pcr", pcr}, wantCode: 2, wantErr: "one URL expected"},
		{name: "bad header", args: []string{app.URL, "--pcr", pcr, "-H", "no colon"}, wantCode: 2, wantErr: `want "Name: value"`},
		{name: "bad header name", args: []string{app.URL, "--pcr", pcr, "-H", "a b: c"}, wantCode: 2, wantErr: "not a token"},
		{name: "missing body file", args: []string{app.URL, "--pcr", pcr, "-d", "@" + filepath.Join(t.TempDir(), "none")}, wantCode: 1, wantErr: "no such file"},
		{name: "bad timeout", args: []string{app.URL, "--pcr", pcr, "--timeout", "0s"}, wantCode: 2, wantErr: "--timeout must be positive"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := app.appHits.Load()
			args := append([]string{"fetch"}, tt.args...)
			if tt.name != "AWS root" {
				args = append(args, common...)
			}
			code, stdout, stderr := runQuench(t, tt.stdin, args...)
			checkRun(t, code, stdout, stderr, tt.wantCode, tt.wantOut, tt.wantErr)
			if code == 1 && strings.Count(stderr, "\n") != 1 {
				t.Errorf("stderr is not one line: %q", stderr)
			}
			if tt.noApp && app.appHits.Load() != before {
				t.Error("the request reached the app")
			}
		})
	}
}

// TestFetchOutputFile: -o writes the body to a file, nothing to stdout.
func TestFetchOutputFile(t *testing.T) {
	f := newFixture(t)
	app := newAppServer(t, f)
	out := filepath.Join(t.TempDir(), "out")
	code, stdout, stderr := runQuench(t, "", "fetch", app.URL+"/file", "--pcr", "0="+strings.Repeat("aa", 48), "--roots", f.rootsPath, "--insecure-skip-tls-verify", "-o", out)
	if code != 0 || stdout != "" {
		t.Fatalf("exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	b, err := os.ReadFile(out)
	if err != nil || !strings.HasPrefix(string(b), "GET /file") {
		t.Errorf("file: %q, %v", b, err)
	}
}

// TestFetchThroughRelay: a machine in the middle with its own certificate,
// relaying the genuine enclave's documents, gets nothing of the request.
func TestFetchThroughRelay(t *testing.T) {
	f := newFixture(t)
	app := newAppServer(t, f)
	var relayed atomic.Int64
	relay := attestationtest.NewRelay(t, app.Server, func(r *http.Request) {
		if r.URL.Path != attestation.Path {
			relayed.Add(1)
		}
	})
	code, _, stderr := runQuench(t, "", "fetch", relay.URL+"/secret", "-d", "password", "--pcr", "0="+strings.Repeat("aa", 48), "--roots", f.rootsPath, "--insecure-skip-tls-verify")
	if code != 1 || !strings.Contains(stderr, "tls_cert_hash") {
		t.Fatalf("exit %d, stderr %q; want a certificate binding failure", code, stderr)
	}
	if relayed.Load() != 0 || app.appHits.Load() != 0 {
		t.Errorf("the request went through: relay %d, app %d", relayed.Load(), app.appHits.Load())
	}
}

func TestFetchHelpPlaceholders(t *testing.T) { checkHelpPlaceholders(t, "fetch", 12) }

// TestUsageErrorsAreOneLine: a bad flag is one line on stderr that names it
// and where the help is, not the whole help with the error above it.
func TestUsageErrorsAreOneLine(t *testing.T) {
	for _, args := range [][]string{
		{"fetch", "https://127.0.0.1/", "-H", "no colon"},
		{"fetch", "https://127.0.0.1/", "--pcr", "0=zz"},
		{"fetch", "https://127.0.0.1/", "--no-such-flag"},
		{"verify", "https://127.0.0.1/", "--pcr", "0=zz"},
		{"verify", "--timeout", "soon", "https://127.0.0.1/"},
	} {
		code, stdout, stderr := runQuench(t, "", args...)
		want := "see quench " + args[0] + " -h"
		if code != exitUsage || stdout != "" || strings.Count(stderr, "\n") != 1 || !strings.Contains(stderr, want) || !strings.HasPrefix(stderr, "quench "+args[0]+": ") {
			t.Errorf("%q: exit %d, stdout %q, stderr %q; want exit %d and one line with %q", args, code, stdout, stderr, exitUsage, want)
		}
	}
	// -h still prints the help, and exits 0.
	code, _, stderr := runQuench(t, "", "fetch", "-h")
	if code != exitOK || !strings.Contains(stderr, "flags:") {
		t.Errorf("fetch -h: exit %d, stderr %q", code, stderr)
	}
}

// TestTimeoutSaysWhichFlag: a server that accepts and never answers fails
// on one line that names --timeout, not a bare "context deadline exceeded".
func TestTimeoutSaysWhichFlag(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		var held []net.Conn
		defer func() {
			for _, c := range held {
				_ = c.Close()
			}
		}()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			held = append(held, c)
		}
	}()
	u := "https://" + ln.Addr().String() + "/"
	for _, args := range [][]string{
		{"fetch", u, "--any-image", "--timeout", "200ms"},
		{"verify", u, "--timeout", "200ms"},
	} {
		code, _, stderr := runQuench(t, "", args...)
		if code != exitFailed || strings.Count(stderr, "\n") != 1 || !strings.Contains(stderr, "no answer within --timeout 200ms") {
			t.Errorf("%q: exit %d, stderr %q", args, code, stderr)
		}
	}
}

// TestURLChecks: the scheme is case-insensitive, as in every URL; a URL
// without a host is bad usage (exit 2), found before anything is dialled.
func TestURLChecks(t *testing.T) {
	f := newFixture(t)
	app := newAppServer(t, f)
	upper := "HTTPS://" + strings.TrimPrefix(app.URL, "https://") + "/up"
	common := []string{"--roots", f.rootsPath, "--insecure-skip-tls-verify", "--any-image"}
	code, stdout, stderr := runQuench(t, "", append([]string{"fetch", upper}, common...)...)
	checkRun(t, code, stdout, stderr, exitOK, "GET /up", "")
	for _, u := range []string{"https:///path", "https://", "https://:443/"} {
		code, stdout, stderr = runQuench(t, "", append([]string{"fetch", u}, common...)...)
		checkRun(t, code, stdout, stderr, exitUsage, "", "no host")
	}
}

// TestFetchEmptyData: -d "" sends a POST with an empty body, as curl does,
// not a GET; -d @- with empty standard input too.
func TestFetchEmptyData(t *testing.T) {
	f := newFixture(t)
	app := newAppServer(t, f)
	common := []string{"--roots", f.rootsPath, "--insecure-skip-tls-verify", "--any-image"}
	code, stdout, stderr := runQuench(t, "", append([]string{"fetch", app.URL + "/e", "-d", ""}, common...)...)
	checkRun(t, code, stdout, stderr, exitOK, `POST /e host=`, "")
	code, stdout, stderr = runQuench(t, "", append([]string{"fetch", app.URL + "/e", "-d", "@-"}, common...)...)
	checkRun(t, code, stdout, stderr, exitOK, `POST /e host=`, "")
}

// TestFetchBadMethod: a method that is not an HTTP token is bad usage
// (exit 2, as the help promises), not a failed request.
func TestFetchBadMethod(t *testing.T) {
	code, stdout, stderr := runQuench(t, "", "fetch", "https://127.0.0.1/", "--any-image", "-X", "BAD METHOD")
	checkRun(t, code, stdout, stderr, exitUsage, "", "-X")
}

// TestFetchOutputDash: -o - is standard output, as with curl, not a file
// named "-" in the working directory.
func TestFetchOutputDash(t *testing.T) {
	f := newFixture(t)
	app := newAppServer(t, f)
	t.Chdir(t.TempDir())
	code, stdout, stderr := runQuench(t, "", "fetch", app.URL+"/dash", "--any-image", "--roots", f.rootsPath, "--insecure-skip-tls-verify", "-o", "-")
	checkRun(t, code, stdout, stderr, exitOK, "GET /dash", "")
	if _, err := os.Stat("-"); err == nil {
		t.Error(`-o - created a file named "-"`)
	}
}

// TestFetchDataTwice: a second -d is bad usage, not silently the only one
// sent (curl joins them with &, which a JSON body does not want either).
func TestFetchDataTwice(t *testing.T) {
	code, stdout, stderr := runQuench(t, "", "fetch", "https://127.0.0.1/", "--any-image", "-d", "a", "-d", "b")
	checkRun(t, code, stdout, stderr, exitUsage, "", "-d")
}

// TestFetchUserAgentHeader: -H "User-Agent: ..." replaces quench fetch's
// own, as with curl; net/http sends only the first value, so adding it after
// the default dropped the caller's silently.
func TestFetchUserAgentHeader(t *testing.T) {
	f := newFixture(t)
	app := newAppServer(t, f)
	common := []string{"--roots", f.rootsPath, "--insecure-skip-tls-verify", "--any-image"}
	code, stdout, stderr := runQuench(t, "", append([]string{"fetch", app.URL + "/ua", "-H", "User-Agent: mine/1"}, common...)...)
	checkRun(t, code, stdout, stderr, exitOK, `user-agent=["mine/1"]`, "")
	code, stdout, stderr = runQuench(t, "", append([]string{"fetch", app.URL + "/ua"}, common...)...)
	checkRun(t, code, stdout, stderr, exitOK, `user-agent=["quench-fetch"]`, "")
}

// TestFetchDataContentLength: a body from a file or standard input goes
// with a Content-Length, as curl sends it, not chunked: apps and proxies
// that answer a chunked request with 411 Length Required are common.
func TestFetchDataContentLength(t *testing.T) {
	f := newFixture(t)
	app := newAppServer(t, f)
	bodyFile := filepath.Join(t.TempDir(), "body.json")
	if err := os.WriteFile(bodyFile, []byte(`{"a":1}`), 0o600); err != nil {
		t.Fatal(err)
	}
	common := []string{"--roots", f.rootsPath, "--insecure-skip-tls-verify", "--any-image"}
	for _, tc := range []struct{ stdin, data string }{{"", "@" + bodyFile}, {`{"a":1}`, "@-"}, {"", `{"a":1}`}} {
		code, stdout, stderr := runQuench(t, tc.stdin, append([]string{"fetch", app.URL + "/len", "-d", tc.data}, common...)...)
		checkRun(t, code, stdout, stderr, exitOK, `content-length=7 transfer-encoding=[] body="{\"a\":1}"`, "")
	}
	// Standard input as a process has it: a reader of unknown length.
	var out, errb strings.Builder
	code := run(context.Background(), append([]string{"fetch", app.URL + "/len", "-d", "@-"}, common...), io.MultiReader(strings.NewReader(`{"a":1}`)), &out, &errb)
	checkRun(t, code, out.String(), errb.String(), exitOK, `content-length=7 transfer-encoding=[] body="{\"a\":1}"`, "")
}
