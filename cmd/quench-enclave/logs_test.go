package main

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"testing"
	"time"

	"github.com/quenchnet/quench/enclave"
	"github.com/quenchnet/quench/logship"
)

// shippingOptions returns options for superviseApp with -log-to set, to a
// host that never answers.
func shippingOptions(t *testing.T, app ...string) *options {
	t.Helper()
	sh, err := logship.New(logship.Config{Dial: func(context.Context) (net.Conn, error) {
		return nil, errors.New("no host")
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		_ = sh.Close(ctx)
	})
	return &options{appArgs: app, logShip: sh, logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
}

func supervise(t *testing.T, o *options) int {
	t.Helper()
	e, err := enclave.New(enclave.Config{})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan int, 1)
	go func() { done <- superviseApp(e, o, make(chan os.Signal), io.Discard) }()
	select {
	case code := <-done:
		return code
	case <-time.After(20 * time.Second):
		t.Fatal("the app did not exit")
		return -1
	}
}

// TestLogShipExitCode: with -log-to the app's output goes through pipes;
// an app that exits 0 leaving a process behind that holds them (a daemon
// it started) must still give exit code 0, as without -log-to, not the 1
// of exec.ErrWaitDelay. Its own code passes as ever.
func TestLogShipExitCode(t *testing.T) {
	if code := supervise(t, shippingOptions(t, "sh", "-c", "sleep 4 & exit 0")); code != 0 {
		t.Errorf("app exited 0 leaving a child holding stdout: exit code %d, want 0", code)
	}
	if code := supervise(t, shippingOptions(t, "sh", "-c", "sleep 4 & exit 5")); code != 5 {
		t.Errorf("app exited 5 leaving a child holding stdout: exit code %d, want 5", code)
	}
	if code := supervise(t, shippingOptions(t, "sh", "-c", "echo hi; exit 0")); code != 0 {
		t.Errorf("app exited 0: exit code %d", code)
	}
}
