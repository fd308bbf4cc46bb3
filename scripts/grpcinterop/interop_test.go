package grpcinterop

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"
)

// appScheme is the scheme of quench-enclave's -app-url: h2c (h2c+unix for
// the unix socket). Setting GRPCINTEROP_APP_SCHEME=http (http, unix) runs
// the same test against the HTTP/1.1 path, to see that the test catches a
// broken h2c path. It does: every subtest fails (the proxy speaks HTTP/1.1
// to grpc-go's server and answers 502, which grpc-go reports as
// Unavailable; the bidi stream gets no header and fails at its 15 s
// timeout; the cancellation check finds no call reaching the server), in
// about 27 s per network. Before the enclave stopped flushing HTTP/2
// responses that have no body (enclave.TestServeAppURLH2CTrailersOnly), the
// two error checks here failed: grpc-go got HEADERS then an empty DATA
// frame ending the stream, ignored the grpc-status in the header and
// reported Internal, "server closed the stream without sending trailers",
// instead of NotFound.
func appScheme() string {
	if s := os.Getenv("GRPCINTEROP_APP_SCHEME"); s != "" {
		return s
	}
	return "h2c"
}

// TestGRPCThroughEnclave runs grpc-go's client against grpc-go's server
// through quench-host and quench-enclave (-network userspace, -app-url
// h2c://): TLS and HTTP/2 from the client to the enclave, h2c from the
// enclave to the server.
// The app listens on TCP (-app-url h2c://127.0.0.1:PORT) and on a unix
// socket (h2c+unix:///path).
func TestGRPCThroughEnclave(t *testing.T) {
	if testing.Short() {
		t.Skip("builds quench-host and quench-enclave and runs them")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Second)
	defer cancel()
	bin := buildBinaries(t, ctx)
	for _, network := range []string{"tcp", "unix"} {
		t.Run(network, func(t *testing.T) {
			checkGRPC(t, ctx, startEnv(t, ctx, bin, network))
		})
	}
}

// checkGRPC runs the checks against env, as subtests.
func checkGRPC(t *testing.T, ctx context.Context, env *env) {
	var rec rpcRecorder
	conn, err := grpc.NewClient(env.publicAddr,
		grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{InsecureSkipVerify: true})),
		grpc.WithStatsHandler(&rec))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	raw := grpc.CallContentSubtype("raw")

	// Each check is bounded by its own timeout (within the test's), so that
	// a stuck stream fails the test instead of hanging it.
	callCtx := func(t *testing.T) context.Context {
		c, cancel := context.WithTimeout(ctx, 15*time.Second)
		t.Cleanup(cancel)
		return c
	}

	t.Run("health unary (protobuf)", func(t *testing.T) {
		resp, err := healthpb.NewHealthClient(conn).Check(callCtx(t), &healthpb.HealthCheckRequest{Service: "quench.interop"})
		if err != nil {
			t.Fatalf("Check: %v", err)
		}
		if got := resp.GetStatus(); got != healthpb.HealthCheckResponse_SERVING {
			t.Fatalf("status %v, want SERVING", got)
		}
		_, err = healthpb.NewHealthClient(conn).Check(callCtx(t), &healthpb.HealthCheckRequest{Service: "no.such.service"})
		if status.Code(err) != codes.NotFound {
			t.Fatalf("Check of an unknown service: %v, want NotFound", err)
		}
	})

	t.Run("unary with header, trailer and client metadata", func(t *testing.T) {
		ctx, r := rec.track(metadata.AppendToOutgoingContext(callCtx(t), "x-client-md", "c1"))
		var reply []byte
		var hdr, trl metadata.MD
		err := conn.Invoke(ctx, methodEcho, []byte("hello"), &reply, raw, grpc.Header(&hdr), grpc.Trailer(&trl))
		if err != nil {
			t.Fatalf("Echo: %v", err)
		}
		if string(reply) != "echo:hello" {
			t.Errorf("reply %q, want %q", reply, "echo:hello")
		}
		if got := hdr.Get("x-unary-hdr"); len(got) != 1 || got[0] != "h1" {
			t.Errorf("header x-unary-hdr %q, want [h1] (header %v)", got, hdr)
		}
		if got := hdr.Get("x-client-md-seen"); len(got) != 1 || got[0] != "c1" {
			t.Errorf("the server saw x-client-md %q, want [c1] (header %v)", got, hdr)
		}
		if got := hdr.Get("x-deadline-in"); len(got) != 1 {
			t.Errorf("the server saw no deadline: grpc-timeout lost? (header %v)", hdr)
		} else if d, err := time.ParseDuration(got[0]); err != nil || d <= 5*time.Second || d > 15*time.Second {
			t.Errorf("the server saw a deadline in %q, want the client's (15 s or a little less)", got[0])
		}
		if got := hdr.Get("content-type"); len(got) != 1 || got[0] != "application/grpc+raw" {
			t.Errorf("content-type %q, want [application/grpc+raw]", got)
		}
		if got := trl.Get("x-unary-trl"); len(got) != 1 || got[0] != "t1" {
			t.Errorf("trailer x-unary-trl %q, want [t1] (trailer %v)", got, trl)
		}
		if h, tr := r.counts(); h != 1 || tr != 1 {
			t.Errorf("%d header and %d trailer HEADERS frames, want 1 and 1", h, tr)
		}
	})

	t.Run("unary error is trailers-only", func(t *testing.T) {
		ctx, r := rec.track(callCtx(t))
		var reply []byte
		var hdr, trl metadata.MD
		err := conn.Invoke(ctx, methodEcho, []byte("notfound"), &reply, raw, grpc.Header(&hdr), grpc.Trailer(&trl))
		st, ok := status.FromError(err)
		if !ok || st.Code() != codes.NotFound || st.Message() != "x" {
			t.Fatalf("Echo(notfound): %v, want code NotFound, message \"x\"", err)
		}
		if d := st.Details(); len(d) != 1 || d[0].(*healthpb.HealthCheckResponse).GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
			t.Errorf("status details %v, want one HealthCheckResponse NOT_SERVING (grpc-status-details-bin)", d)
		}
		if got := trl.Get("x-err-trl"); len(got) != 1 || got[0] != "gone" {
			t.Errorf("trailer x-err-trl %q, want [gone] (trailer %v)", got, trl)
		}
		// grpc-go's server answers an error before any header with one
		// HEADERS frame ending the stream; the client's stats show it as a
		// trailer without a header.
		if h, tr := r.counts(); h != 0 || tr != 1 {
			t.Errorf("%d header and %d trailer HEADERS frames, want a trailers-only response (0 and 1)", h, tr)
		}
	})

	t.Run("large unary messages", func(t *testing.T) {
		// Larger than every HTTP/2 flow-control window on the way (64 KiB
		// initial windows, grpc-go's BDP-grown ones), both ways.
		req := bytes.Repeat([]byte("0123456789abcdef"), 3<<20/16)
		var reply []byte
		if err := conn.Invoke(callCtx(t), methodEcho, req, &reply, raw); err != nil {
			t.Fatalf("Echo of %d bytes: %v", len(req), err)
		}
		if want := append([]byte("echo:"), req...); !bytes.Equal(reply, want) {
			t.Fatalf("reply of %d bytes differs from the %d expected", len(reply), len(want))
		}
	})

	t.Run("concurrent unary calls", func(t *testing.T) {
		ctx := callCtx(t)
		const n = 50
		errs := make(chan error, n)
		for i := range n {
			go func() {
				msg := fmt.Sprintf("m%d", i)
				var reply []byte
				err := conn.Invoke(ctx, methodEcho, []byte(msg), &reply, raw)
				if err == nil && string(reply) != "echo:"+msg {
					err = fmt.Errorf("reply %q to %q", reply, msg)
				}
				errs <- err
			}()
		}
		for range n {
			if err := <-errs; err != nil {
				t.Error(err)
			}
		}
	})

	t.Run("bidi stream, lock-step round trips", func(t *testing.T) {
		ctx := callCtx(t)
		stream, err := conn.NewStream(ctx, chatStreamDesc, methodChat, raw)
		if err != nil {
			t.Fatalf("NewStream: %v", err)
		}
		// The server sends its header before reading anything: it must
		// reach the client before the client sends a message (the proxy
		// flushes the response header at once).
		hdr, err := stream.Header()
		if err != nil {
			t.Fatalf("Header before the first message: %v", err)
		}
		if got := hdr.Get("x-stream-hdr"); len(got) != 1 || got[0] != "s1" {
			t.Errorf("header x-stream-hdr %q, want [s1] (header %v)", got, hdr)
		}
		// Message i+1 goes only after reply i came back: a proxy that
		// buffers either direction (request body or response) deadlocks
		// here, and ctx's timeout fails the test.
		for i := range 20 {
			msg := fmt.Sprintf("msg-%d", i)
			if err := stream.SendMsg([]byte(msg)); err != nil {
				t.Fatalf("SendMsg %d: %v", i, err)
			}
			var reply []byte
			if err := stream.RecvMsg(&reply); err != nil {
				t.Fatalf("RecvMsg %d: %v", i, err)
			}
			if string(reply) != "re:"+msg {
				t.Fatalf("reply %d: %q, want %q", i, reply, "re:"+msg)
			}
		}
		if err := stream.CloseSend(); err != nil {
			t.Fatalf("CloseSend: %v", err)
		}
		var extra []byte
		if err := stream.RecvMsg(&extra); err != io.EOF {
			t.Fatalf("RecvMsg after CloseSend: %v (%q), want io.EOF (status OK)", err, extra)
		}
		if got := stream.Trailer().Get("x-stream-trl"); len(got) != 1 || got[0] != "s2" {
			t.Errorf("trailer x-stream-trl %q, want [s2] (trailer %v)", got, stream.Trailer())
		}
	})

	t.Run("client cancellation reaches the server", func(t *testing.T) {
		sctx, scancel := context.WithCancel(callCtx(t))
		defer scancel()
		stream, err := conn.NewStream(sctx, hangStreamDesc, methodHang, raw)
		if err != nil {
			t.Fatalf("NewStream: %v", err)
		}
		if err := stream.SendMsg([]byte("start")); err != nil {
			t.Fatalf("SendMsg: %v", err)
		}
		select {
		case <-env.srv.started:
		case <-time.After(10 * time.Second):
			t.Fatal("the server handler did not get the first message within 10 s")
		}
		cancelled := time.Now()
		scancel()
		select {
		case at := <-env.srv.cancelled:
			t.Logf("the server's context ended %v after the client cancelled", at.Sub(cancelled).Round(time.Millisecond))
		case <-time.After(5 * time.Second):
			t.Fatal("the server handler's context was not cancelled within 5 s of the client's cancellation")
		}
		var m []byte
		if err := stream.RecvMsg(&m); status.Code(err) != codes.Canceled {
			t.Errorf("RecvMsg after cancel: %v, want Canceled", err)
		}
	})
}

// env is the running system: the gRPC server (the app), quench-host and
// quench-enclave.
type env struct {
	srv        *echoServer
	publicAddr string // quench-host's published port, to the enclave's :443
}

// buildBinaries builds quench-host and quench-enclave from the root module
// into a temporary directory and returns it.
func buildBinaries(t *testing.T, ctx context.Context) string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("the go command is not in PATH, needed to build quench-host and quench-enclave: %v", err)
	}
	root, err := repoRoot()
	if err != nil {
		t.Skipf("the quench repository is not where expected: %v", err)
	}
	bin := t.TempDir()
	build := exec.CommandContext(ctx, goBin, "build", "-o", bin+string(filepath.Separator), "./cmd/quench-host", "./cmd/quench-enclave")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build in %s: %v\n%s", root, err, out)
	}
	return bin
}

// startEnv starts the app (listening on network, tcp or unix),
// quench-host and quench-enclave, and waits until the enclave serves.
func startEnv(t *testing.T, ctx context.Context, bin, network string) *env {
	t.Helper()
	dir := t.TempDir()

	// The app: grpc-go's server on a plain listener, where it speaks h2c
	// with prior knowledge.
	var appURL string
	var lis net.Listener
	var err error
	switch network {
	case "tcp":
		lis, err = net.Listen("tcp", "127.0.0.1:0")
		appURL = appScheme() + "://" + lis.Addr().String()
	case "unix":
		path := filepath.Join(dir, "app.sock")
		lis, err = net.Listen("unix", path)
		appURL = "unix://" + path
		if appScheme() == "h2c" {
			appURL = "h2c+unix://" + path
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	e := &env{srv: newEchoServer()}
	gs := grpc.NewServer()
	gs.RegisterService(&echoDesc, e.srv)
	hs := health.NewServer()
	hs.SetServingStatus("quench.interop", healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(gs, hs)
	go gs.Serve(lis)
	t.Cleanup(gs.Stop)

	sock := filepath.Join(dir, "host.sock")
	host := start(t, filepath.Join(bin, "quench-host"),
		"-listen", "unix://"+sock, "-publish", "127.0.0.1:0:443", "-drain-timeout", "1s")
	published := regexp.MustCompile(`msg=published addr=(127\.0\.0\.1:[0-9]+)`)
	waitFor(t, ctx, 20*time.Second, "quench-host publishing its port", host, func() error {
		m := published.FindStringSubmatch(host.output())
		if m == nil {
			return errors.New("no \"published\" line in its log yet")
		}
		e.publicAddr = m[1]
		return nil
	})

	enclave := start(t, filepath.Join(bin, "quench-enclave"),
		"-network", "userspace", // never TAP here: see the repository's safety rules
		"-host", "unix://"+sock,
		"-app-url", appURL,
		"-internal-addr", "127.0.0.1:0", // any free port: the test does not use it
		"-dev-attester", "-dev-root-out", filepath.Join(dir, "root.pem"),
		"-resolv-conf", "-",
		"-start-timeout", "20s", "-drain-timeout", "1s")
	hc := &http.Client{
		Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}},
		Timeout:   5 * time.Second,
	}
	t.Cleanup(hc.CloseIdleConnections)
	waitFor(t, ctx, 30*time.Second, "https://"+e.publicAddr+"/enclave/health", enclave, func() error {
		resp, err := hc.Get("https://" + e.publicAddr + "/enclave/health")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("status %s", resp.Status)
		}
		return nil
	})
	if _, err := os.Stat(filepath.Join(dir, "root.pem")); err != nil {
		t.Errorf("-dev-root-out: %v", err)
	}
	return e
}

// repoRoot finds the root module's directory from the test's working
// directory (scripts/grpcinterop).
func repoRoot() (string, error) {
	wd, err := os.Getwd()
	if err != nil {
		return "", err
	}
	root := filepath.Join(wd, "..", "..")
	gomod, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil {
		return "", err
	}
	if !bytes.HasPrefix(gomod, []byte("module github.com/quenchnet/quench\n")) {
		return "", fmt.Errorf("%s/go.mod is not the quench root module", root)
	}
	return root, nil
}

// proc is a started daemon whose output (standard output and error
// together) is kept for the test's log.
type proc struct {
	name string
	cmd  *exec.Cmd
	mu   sync.Mutex
	buf  bytes.Buffer
	done chan struct{}
}

func (p *proc) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.buf.Write(b)
}

func (p *proc) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.buf.String()
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// start runs path with args until the test ends, when it is killed; its
// output goes to the test's log if the test failed.
func start(t *testing.T, path string, args ...string) *proc {
	t.Helper()
	p := &proc{name: filepath.Base(path), cmd: exec.Command(path, args...), done: make(chan struct{})}
	p.cmd.Stdout, p.cmd.Stderr = p, p
	p.cmd.Env = append(os.Environ(), "QUENCH_VSOCK_DIR=") // unix sockets only, named in the flags
	p.cmd.WaitDelay = 5 * time.Second
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", p.name, err)
	}
	go func() { p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			t.Errorf("%s (pid %d) did not exit after SIGKILL", p.name, p.cmd.Process.Pid)
		}
		if t.Failed() {
			t.Logf("%s %s:\n%s", p.name, strings.Join(args, " "), p.output())
		}
	})
	return p
}

// waitFor polls check until it succeeds, p exits, or within runs out.
func waitFor(t *testing.T, ctx context.Context, within time.Duration, what string, p *proc, check func() error) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		err := check()
		if err == nil {
			return
		}
		if p.exited() {
			t.Fatalf("waiting for %s: %s exited (%v): last error: %v", what, p.name, p.cmd.ProcessState, err)
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			t.Fatalf("waiting for %s: not within %v: %v", what, within, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// rpcRecorder is a client stats.Handler counting, for the RPCs whose
// context track marked, the HEADERS frames that arrived as a response
// header (stats.InHeader) and as trailers (stats.InTrailer). grpc-go
// reports a trailers-only response (one HEADERS frame ending the stream) as
// a trailer without a header.
type rpcRecorder struct{}

type rpcCountsKey struct{}

type rpcCounts struct {
	mu              sync.Mutex
	header, trailer int
}

func (c *rpcCounts) counts() (header, trailer int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.header, c.trailer
}

func (*rpcRecorder) track(ctx context.Context) (context.Context, *rpcCounts) {
	c := new(rpcCounts)
	return context.WithValue(ctx, rpcCountsKey{}, c), c
}

func (*rpcRecorder) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context { return ctx }

func (*rpcRecorder) HandleRPC(ctx context.Context, s stats.RPCStats) {
	c, ok := ctx.Value(rpcCountsKey{}).(*rpcCounts)
	if !ok {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	switch s.(type) {
	case *stats.InHeader:
		c.header++
	case *stats.InTrailer:
		c.trailer++
	}
}

func (*rpcRecorder) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context {
	return ctx
}

func (*rpcRecorder) HandleConn(context.Context, stats.ConnStats) {}
