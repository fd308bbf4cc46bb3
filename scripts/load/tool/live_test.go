package tool_test

import (
	"context"
	"errors"
	"flag"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quenchnet/quench/scripts/load/tool"
)

var update = flag.Bool("update", false, "re-record the tool outputs in ../testdata (then fix the want values in parse_test.go)")

// testServer serves the endpoints the recordings and live tests load:
// /hello (200), /err (500), /mixed (every 10th request 503), /slow (1.2 s),
// /hang (never answers until the client goes away).
func testServer(t testing.TB) *httptest.Server {
	t.Helper()
	var n atomic.Int64
	mux := http.NewServeMux()
	mux.HandleFunc("/hello", func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte("hello\n")) })
	mux.HandleFunc("/err", func(w http.ResponseWriter, r *http.Request) { http.Error(w, "boom", http.StatusInternalServerError) })
	mux.HandleFunc("/mixed", func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1)%10 == 0 {
			http.Error(w, "busy", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("hello\n"))
	})
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-time.After(1200 * time.Millisecond):
		case <-r.Context().Done():
		}
		_, _ = w.Write([]byte("late\n"))
	})
	mux.HandleFunc("/hang", func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() })
	srv := httptest.NewServer(mux)
	t.Cleanup(func() {
		srv.CloseClientConnections()
		srv.Close()
	})
	return srv
}

// closedURL returns a loopback URL on which nothing listens.
func closedURL(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	if err := ln.Close(); err != nil {
		t.Fatal(err)
	}
	return "http://" + addr + "/hello"
}

// toolBinaries builds bombardier and baton from the tools module into a
// temporary directory, or uses $QUENCH_LOAD_BOMBARDIER and $QUENCH_LOAD_BATON.
func toolBinaries(t *testing.T) (bombardier, baton string) {
	t.Helper()
	if testing.Short() {
		t.Skip("runs the real load tools; skipped with -short")
	}
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("needs the go command to build the load tools")
	}
	dir := t.TempDir()
	paths := map[string]string{}
	for env, pkg := range map[string]string{"QUENCH_LOAD_BOMBARDIER": tool.BombardierPackage, "QUENCH_LOAD_BATON": tool.BatonPackage} {
		if p := os.Getenv(env); p != "" {
			paths[pkg] = p
			continue
		}
		p, err := tool.Build(context.Background(), tool.BuildConfig{Package: pkg, CacheDir: dir})
		if err != nil {
			t.Fatalf("building the load tools: %v", err)
		}
		paths[pkg] = p
	}
	return paths[tool.BombardierPackage], paths[tool.BatonPackage]
}

// TestRecord re-records ../testdata with -update: each fixture is the
// real output of a tool run against testServer.
func TestRecord(t *testing.T) {
	if !*update {
		t.Skip("only with -update")
	}
	bombardier, baton := toolBinaries(t)
	srv := testServer(t)
	closed := closedURL(t)
	cases := []struct {
		file string
		bin  string
		args []string
	}{
		{"bombardier-ok.json", bombardier, []string{"-c", "10", "-d", "1s", "-o", "json", "-p", "result", "-l", srv.URL + "/hello"}},
		{"bombardier-5xx.json", bombardier, []string{"-c", "10", "-d", "1s", "-o", "json", "-p", "result", "-l", srv.URL + "/err"}},
		{"bombardier-mixed.json", bombardier, []string{"-c", "10", "-d", "1s", "-o", "json", "-p", "result", "-l", srv.URL + "/mixed"}},
		{"bombardier-refused.json", bombardier, []string{"-c", "10", "-d", "1s", "-o", "json", "-p", "result", "-l", closed}},
		{"bombardier-timeout.json", bombardier, []string{"-c", "5", "-d", "1s", "-t", "300ms", "-o", "json", "-p", "result", "-l", srv.URL + "/slow"}},
		{"bombardier-timeout-http1.json", bombardier, []string{"--http1", "-c", "5", "-d", "1s", "-t", "300ms", "-o", "json", "-p", "result", "-l", srv.URL + "/slow"}},
		{"bombardier-intro.txt", bombardier, []string{"-c", "2", "-d", "1s", "-o", "json", "-p", "intro,result", "-l", srv.URL + "/hello"}},
		{"baton-ok.txt", baton, []string{"-u", srv.URL + "/hello", "-c", "10", "-t", "1"}},
		{"baton-5xx.txt", baton, []string{"-u", srv.URL + "/err", "-c", "10", "-t", "1"}},
		{"baton-mixed.txt", baton, []string{"-u", srv.URL + "/mixed", "-c", "10", "-t", "1"}},
		{"baton-refused.txt", baton, []string{"-u", closed, "-c", "10", "-t", "1"}},
		{"baton-slow.txt", baton, []string{"-u", srv.URL + "/slow", "-c", "5", "-t", "1"}},
		{"baton-count.txt", baton, []string{"-u", srv.URL + "/hello", "-c", "10", "-r", "20000"}},
		{"baton-badconfig.txt", baton, []string{"-u", srv.URL + "/hello", "-c", "0", "-t", "1"}},
	}
	for _, c := range cases {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		out, err := exec.CommandContext(ctx, c.bin, c.args...).CombinedOutput()
		cancel()
		var exit *exec.ExitError
		if err != nil && !errors.As(err, &exit) {
			t.Fatalf("%s: %v", c.file, err)
		}
		if err := os.WriteFile(filepath.Join("..", "testdata", c.file), out, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("recorded %s (%d bytes, %v)", c.file, len(out), err)
	}
}

// TestLive runs both tools through their Runners against a local server
// and checks what the parsed results say about success, errors and
// timeouts.
func TestLive(t *testing.T) {
	bombardier, baton := toolBinaries(t)
	srv := testServer(t)
	closed := closedURL(t)
	bomb, err := tool.NewBombardier(tool.Config{Path: bombardier, Grace: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	bat, err := tool.NewBaton(tool.Config{Path: baton, Grace: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if v := tool.Version(bombardier, tool.BombardierPackage); v != "v1.2.6" {
		t.Errorf("bombardier version %q, want v1.2.6 (pinned in scripts/go.mod)", v)
	}
	req := func(u string) tool.Request {
		return tool.Request{URL: u, Concurrency: 2, Duration: time.Second, Timeout: 300 * time.Millisecond}
	}
	tests := []struct {
		name   string
		runner tool.Runner
		url    string
		check  func(t *testing.T, out tool.Output, err error)
	}{
		{"bombardier/ok", bomb, srv.URL + "/hello", func(t *testing.T, out tool.Output, err error) {
			st := mustStep(t, out, err)
			if st.OK == 0 || st.Errors != 0 || st.TimeoutCount() != 0 || !st.Latency.P99.Known() || st.Concurrency != 2 {
				t.Errorf("step %+v", st)
			}
		}},
		{"bombardier/5xx", bomb, srv.URL + "/err", func(t *testing.T, out tool.Output, err error) {
			st := mustStep(t, out, err)
			if st.Requests == 0 || st.HTTPErrors != st.Requests || st.OK != 0 {
				t.Errorf("step %+v", st)
			}
		}},
		{"bombardier/refused", bomb, closed, func(t *testing.T, out tool.Output, err error) {
			st := mustStep(t, out, err)
			if st.Requests == 0 || st.Errors != st.Requests || st.HTTPErrors != 0 {
				t.Errorf("step %+v", st)
			}
		}},
		{"bombardier/timeout", bomb, srv.URL + "/slow", func(t *testing.T, out tool.Output, err error) {
			st := mustStep(t, out, err)
			if st.TimeoutCount() == 0 || st.OK != 0 {
				t.Errorf("step %+v", st)
			}
		}},
		{"baton/ok", bat, srv.URL + "/hello", func(t *testing.T, out tool.Output, err error) {
			st := mustStep(t, out, err)
			if st.OK == 0 || st.Errors != 0 || st.Timeouts != nil || st.Latency.P99.Known() {
				t.Errorf("step %+v", st)
			}
		}},
		{"baton/refused", bat, closed, func(t *testing.T, out tool.Output, err error) {
			st := mustStep(t, out, err)
			if st.Requests == 0 || st.Errors != st.Requests {
				t.Errorf("step %+v", st)
			}
		}},
		{"baton/hang", bat, srv.URL + "/hang", func(t *testing.T, out tool.Output, err error) {
			if !errors.Is(err, tool.ErrKilled) {
				t.Errorf("err = %v, want ErrKilled", err)
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			out, err := tc.runner.Run(context.Background(), req(tc.url))
			tc.check(t, out, err)
		})
	}
}
