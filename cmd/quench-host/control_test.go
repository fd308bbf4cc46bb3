package main

import (
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/quenchnet/quench/internal/testutil"
)

// TestListenControl: the control socket is its owner's only, a second
// quench-host given the same -control path fails instead of taking over
// the running one's socket (`quench-host ctl` then changed the wrong
// daemon, and the first one's API was gone), a socket left by a crash is
// replaced, and nothing but a socket is ever removed.
func TestListenControl(t *testing.T) {
	path := filepath.Join(t.TempDir(), "control.sock")
	ln, err := listenControl(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	testutil.ServeConns(t, ln, func(net.Conn) {})
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		t.Errorf("control socket mode %v: group or others may connect", perm)
	}

	if ln2, err := listenControl(path); err == nil {
		ln2.Close()
		t.Fatal("a second listenControl took over the running one's socket")
	}
	c, err := net.DialTimeout("unix", path, 5*time.Second)
	if err != nil {
		t.Fatalf("the running control socket is gone: %v", err)
	}
	c.Close()

	// Left by a crash: replaced.
	stale := testutil.StaleUnixSocket(t)
	ln3, err := listenControl(stale)
	if err != nil {
		t.Fatalf("stale control socket not replaced: %v", err)
	}
	ln3.Close()

	// A file or a symbolic link at the path stays, and so does its target.
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, []byte("keep"), 0o600); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link.sock")
	if err := os.Symlink(file, link); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{file, link} {
		if l, err := listenControl(p); err == nil {
			l.Close()
			t.Errorf("listenControl(%s) succeeded over an existing file", p)
		}
	}
	if b, err := os.ReadFile(link); err != nil || string(b) != "keep" {
		t.Errorf("file behind the link: %q, %v", b, err)
	}
}
