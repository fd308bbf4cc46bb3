package main

import (
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/quenchnet/quench/enclave"
)

// TestSupervisorSignalsProcessGroup: the app runs in its own process group,
// and Pdeathsig covers only the direct child, so SIGTERM goes to the whole
// group: with a wrapper (an entrypoint script that starts the real server),
// the server gets it too instead of surviving quench-enclave, orphaned.
func TestSupervisorSignalsProcessGroup(t *testing.T) {
	e, err := enclave.New(enclave.Config{})
	if err != nil {
		t.Fatal(err)
	}
	pidFile := t.TempDir() + "/pid"
	o := &options{
		appArgs: []string{"sh", "-c", `sleep 300 & echo $! > ` + pidFile + `; wait`},
		logger:  slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
	o.cfg.DrainTimeout = 100 * time.Millisecond
	sigs := make(chan os.Signal, 1)
	done := make(chan int, 1)
	go func() { done <- superviseApp(e, o, sigs, os.Stderr) }()
	var pid int
	for i := 0; i < 50 && pid == 0; i++ {
		time.Sleep(50 * time.Millisecond)
		if b, err := os.ReadFile(pidFile); err == nil && len(b) > 1 {
			pid, _ = strconv.Atoi(strings.TrimSpace(string(b)))
		}
	}
	if pid == 0 {
		t.Fatal("no grandchild pid")
	}
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGKILL) })
	sigs <- syscall.SIGTERM
	select {
	case code := <-done:
		t.Logf("superviseApp returned %d", code)
	case <-time.After(10 * time.Second):
		t.Fatal("superviseApp did not return")
	}
	time.Sleep(200 * time.Millisecond)
	if processRunning(pid) {
		t.Fatalf("the app's process group was not signalled: its server (pid %d) is still running after quench-enclave finished", pid)
	}
}

// processRunning reports whether pid exists and is not a zombie (an
// orphan's zombie stays until init reaps it, and some inits never do).
func processRunning(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	// pid (comm) state ...: the state follows the last ')'.
	i := strings.LastIndexByte(string(b), ')')
	return i < 0 || i+2 >= len(b) || b[i+2] != 'Z'
}
