// Package hosttest runs parts of a quench-host in tests of other packages.
package hosttest

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/quenchnet/quench/host"
)

// Start starts a Host with cfg; the test's cleanup closes it.
func Start(tb testing.TB, cfg host.Config) *host.Host {
	tb.Helper()
	h, err := host.New(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	if err := h.Start(context.Background()); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := h.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			tb.Errorf("Close: %v", err)
		}
	})
	return h
}

// Serve serves enclave tunnels (Serve) of h on a unix socket in a
// temporary directory and returns its path; the test's cleanup closes h
// and checks that Serve returned nil.
func Serve(tb testing.TB, h *host.Host) string {
	tb.Helper()
	return serveOn(tb, h, "host.sock", h.Serve, "Serve")
}

// ServeLogs serves enclave log streams (ServeEnclaveLogs) of h on a unix
// socket in a temporary directory and returns its path; the test's cleanup
// closes h and checks that ServeEnclaveLogs returned nil.
func ServeLogs(tb testing.TB, h *host.Host) string {
	tb.Helper()
	return serveOn(tb, h, "logs.sock", h.ServeEnclaveLogs, "ServeEnclaveLogs")
}

func serveOn(tb testing.TB, h *host.Host, name string, serve func(net.Listener) error, method string) string {
	tb.Helper()
	path := filepath.Join(tb.TempDir(), name)
	ln, err := net.Listen("unix", path)
	if err != nil {
		tb.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- serve(ln) }()
	tb.Cleanup(func() {
		_ = h.Close()
		if err := <-done; err != nil {
			tb.Errorf("%s: %v", method, err)
		}
	})
	return path
}

// Lines keeps enclave log lines: set Config.EnclaveLog to its Add.
type Lines struct {
	mu    sync.Mutex
	lines []string
}

// Add keeps line as "STREAM: LINE".
func (l *Lines) Add(_, stream string, line []byte) {
	l.mu.Lock()
	l.lines = append(l.lines, stream+": "+string(line))
	l.mu.Unlock()
}

// All returns the lines kept so far.
func (l *Lines) All() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.lines...)
}

// Text returns All joined by newlines.
func (l *Lines) Text() string { return strings.Join(l.All(), "\n") }
