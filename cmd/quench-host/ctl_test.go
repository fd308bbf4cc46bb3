package main

import (
	"bytes"
	"path/filepath"
	"strings"
	"testing"
)

// TestCtlNoDaemon: with no quench-host at the control socket, the error
// says so and names -control, not only the failed GET.
func TestCtlNoDaemon(t *testing.T) {
	var stdout, stderr bytes.Buffer
	code := runCtl([]string{"-control", filepath.Join(t.TempDir(), "control.sock"), "status"}, &stdout, &stderr)
	if code != 1 {
		t.Fatalf("exit %d, want 1; stderr %q", code, stderr.String())
	}
	if !strings.Contains(stderr.String(), "-control") {
		t.Errorf("stderr %q does not name -control", stderr.String())
	}
}
