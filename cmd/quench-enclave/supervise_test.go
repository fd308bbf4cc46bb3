package main

import (
	"io"
	"log/slog"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/quenchnet/quench/enclave"
)

// TestSupervisorSecondSignalKeepsKillDeadline: after the first SIGTERM,
// superviseApp kills an app that ignores it after DrainTimeout+5s; a second
// SIGTERM (an operator or orchestrator repeating it) is passed on but must
// not drop that deadline.
func TestSupervisorSecondSignalKeepsKillDeadline(t *testing.T) {
	e, err := enclave.New(enclave.Config{}) // never started: Close is immediate
	if err != nil {
		t.Fatal(err)
	}
	o := &options{
		appArgs: []string{"sh", "-c", `trap "" TERM INT; sleep 30`},
		logger:  slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
	o.cfg.DrainTimeout = 100 * time.Millisecond
	sigs := make(chan os.Signal, 2)
	done := make(chan int, 1)
	go func() { done <- superviseApp(e, o, sigs, os.Stderr) }()
	time.Sleep(300 * time.Millisecond) // app started, trap installed
	sigs <- syscall.SIGTERM
	time.Sleep(200 * time.Millisecond)
	sigs <- syscall.SIGTERM
	select {
	case code := <-done:
		t.Logf("exited with %d", code)
	case <-time.After(o.cfg.DrainTimeout + 8*time.Second):
		t.Fatalf("superviseApp still waiting %s after the signals for an app that ignores SIGTERM (the kill deadline of DrainTimeout+5s is dropped by the second signal)", o.cfg.DrainTimeout+8*time.Second)
	}
}

// runApp runs o's app under superviseApp (no enclave started) and returns
// its exit code.
func runApp(t *testing.T, o *options) int {
	t.Helper()
	e, err := enclave.New(enclave.Config{})
	if err != nil {
		t.Fatal(err)
	}
	o.logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	done := make(chan int, 1)
	go func() { done <- superviseApp(e, o, make(chan os.Signal), os.Stderr) }()
	select {
	case code := <-done:
		return code
	case <-time.After(20 * time.Second):
		t.Fatal("the app did not exit")
		return -1
	}
}
