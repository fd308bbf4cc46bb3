package proxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// shutdownEnv is a Proxy served by Serve in front of an upstream whose
// handler blocks until release is closed.
type shutdownEnv struct {
	p        *Proxy
	addr     string
	served   chan error // Serve's result
	arrived  atomic.Int32
	release  chan struct{}
	upstream *http.Server
}

func newShutdownEnv(t *testing.T, cfg Config) *shutdownEnv {
	t.Helper()
	env := &shutdownEnv{served: make(chan error, 1), release: make(chan struct{})}
	uln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	env.upstream = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			env.arrived.Add(1)
			<-env.release
		}
		_, _ = io.WriteString(w, "done "+r.URL.Path)
	})}
	go func() { _ = env.upstream.Serve(uln) }()
	t.Cleanup(func() { _ = env.upstream.Close() })
	target, _ := url.Parse("http://" + uln.Addr().String())
	env.p, err = New(target, cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	env.addr = ln.Addr().String()
	go func() { env.served <- env.p.Serve(ln) }()
	t.Cleanup(func() {
		_ = env.p.Close()
		<-env.served
	})
	return env
}

// get sends one request on its own connection and returns the status line,
// the Connection header and the body.
func (env *shutdownEnv) get(path string) (string, error) {
	c, err := net.Dial("tcp", env.addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, "GET "+path+" HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		return "", err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return fmt.Sprintf("%s close=%v %s", resp.Status, resp.Close, b), err
}

func TestShutdown(t *testing.T) {
	checkGoroutines(t)
	env := newShutdownEnv(t, Config{})

	// An idle keep-alive connection, after one request.
	idle, err := net.Dial("tcp", env.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	_ = idle.SetDeadline(time.Now().Add(10 * time.Second))
	ibr := bufio.NewReader(idle)
	_, _ = io.WriteString(idle, "GET /fast HTTP/1.1\r\nHost: x\r\n\r\n")
	resp, err := http.ReadResponse(ibr, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()

	// Requests in flight.
	const n = 8
	var wg sync.WaitGroup
	results := make([]string, n)
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i], errs[i] = env.get("/slow")
		}()
	}
	eventually(t, 5*time.Second, "requests at the upstream", func() bool { return env.arrived.Load() == n })

	shut := make(chan error, 1)
	go func() { shut <- env.p.Shutdown(context.Background()) }()

	// Serve returns, the listener is closed and the idle connection too.
	select {
	case err := <-env.served:
		env.served <- err // for the cleanup
		if !errors.Is(err, net.ErrClosed) {
			t.Errorf("Serve = %v, want net.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return")
	}
	if _, err := ibr.ReadByte(); err != io.EOF {
		t.Errorf("idle connection: read %v, want EOF (closed)", err)
	}
	if c, err := net.DialTimeout("tcp", env.addr, time.Second); err == nil {
		c.Close()
		t.Error("listener still accepts")
	}
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned %v with requests in flight", err)
	case <-time.After(50 * time.Millisecond):
	}

	close(env.release)
	wg.Wait()
	for i := range n {
		if errs[i] != nil || results[i] != "200 OK close=true done /slow" {
			t.Errorf("request %d: %q, %v; want 200 with Connection: close", i, results[i], errs[i])
		}
	}
	select {
	case err := <-shut:
		if err != nil {
			t.Errorf("Shutdown = %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Shutdown did not return after the requests finished")
	}
	if err := env.p.Serve(newUnusedListener(t)); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Serve after Shutdown = %v, want net.ErrClosed", err)
	}
}

func TestShutdownDeadline(t *testing.T) {
	checkGoroutines(t)
	env := newShutdownEnv(t, Config{})
	defer close(env.release)
	got := make(chan error, 1)
	go func() {
		_, err := env.get("/slow")
		got <- err
	}()
	eventually(t, 5*time.Second, "request at the upstream", func() bool { return env.arrived.Load() == 1 })
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := env.p.Shutdown(ctx)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Shutdown = %v, want context.DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Shutdown took %v with a 100 ms deadline", d)
	}
	// Close was called: the held request's connection is gone.
	select {
	case err := <-got:
		if err == nil {
			t.Error("request held past the deadline succeeded; want its connection closed")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("held request still open after Shutdown's deadline")
	}
	if err := env.p.Close(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Close after Shutdown's deadline = %v, want net.ErrClosed (already closed)", err)
	}
}

// TestShutdownUpgradedIgnored checks that Shutdown neither closes nor
// waits for a connection an intercepted handler hijacked.
func TestShutdownUpgradedIgnored(t *testing.T) {
	checkGoroutines(t)
	hold := make(chan struct{})
	defer close(hold)
	env := newShutdownEnv(t, Config{Intercept: func(r *http.Request) http.Handler {
		if r.URL.Path != "/hijack" {
			return nil
		}
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			c, _, err := w.(http.Hijacker).Hijack()
			if err != nil {
				t.Error(err)
				return
			}
			go func() { <-hold; c.Close() }()
		})
	}})
	c, err := net.Dial("tcp", env.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, _ = io.WriteString(c, "GET /hijack HTTP/1.1\r\nHost: x\r\n\r\n")
	eventually(t, 5*time.Second, "connection hijacked", func() bool {
		env.p.mu.Lock()
		defer env.p.mu.Unlock()
		for cl := range env.p.closers {
			if cc, ok := cl.(*clientConn); ok && cc.state.Load() == connHijacked {
				return true
			}
		}
		n := 0
		for cl := range env.p.closers {
			if _, ok := cl.(*loopSet); !ok {
				n++
			}
		}
		return n == 1 // only the listener: the goroutine is done
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := env.p.Shutdown(ctx); err != nil {
		t.Errorf("Shutdown with a hijacked connection = %v, want nil", err)
	}
}

func newUnusedListener(t *testing.T) net.Listener {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	return ln
}
