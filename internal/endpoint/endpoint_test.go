package endpoint

import (
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/quenchnet/quench/internal/testutil"
)

func TestParse(t *testing.T) {
	tests := []struct {
		in      string
		want    Addr
		wantErr bool
	}{
		{in: "vsock://3:1024", want: Addr{Scheme: "vsock", CID: 3, Port: 1024}},
		{in: "vsock://:1024", want: Addr{Scheme: "vsock", CID: AnyCID, Port: 1024}},
		{in: "unix:///run/quench/host.sock", want: Addr{Scheme: "unix", Path: "/run/quench/host.sock"}},
		{in: "tcp://127.0.0.1:9000", want: Addr{Scheme: "tcp", Host: "127.0.0.1:9000"}},
		{in: "vsock://3", wantErr: true},
		{in: "vsock://x:1024", wantErr: true},
		{in: "vsock://3:port", wantErr: true},
		{in: "vsock://3:99999999999", wantErr: true},
		{in: "vsock://3:1024/path", wantErr: true},
		{in: "unix://", wantErr: true},
		{in: "tcp://nohostport", wantErr: true},
		{in: "http://x:1", wantErr: true},
		{in: "3:1024", wantErr: true},
		{in: "", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := Parse(tt.in)
			if (err != nil) != tt.wantErr {
				t.Fatalf("Parse(%q) error = %v, wantErr %v", tt.in, err, tt.wantErr)
			}
			if err != nil {
				return
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
			if again, err := Parse(got.String()); err != nil || again != got {
				t.Errorf("String() = %q does not parse back: %v, %v", got.String(), again, err)
			}
		})
	}
}

// TestStandIn checks that with the stand-in a vsock listener on :PORT with
// the local CID and a dial to CID:PORT meet on the same unix socket.
func TestStandIn(t *testing.T) {
	dir := t.TempDir()
	o := Options{VSockDir: dir, LocalCID: ParentCID}
	ln, err := Listen(Addr{Scheme: "vsock", CID: AnyCID, Port: 1024}, o)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if got, want := ln.Addr().String(), filepath.Join(dir, "vsock-3-1024.sock"); got != want {
		t.Errorf("listening on %s, want %s", got, want)
	}
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		_, _ = c.Write([]byte("hi"))
		c.Close()
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := Dial(ctx, Addr{Scheme: "vsock", CID: ParentCID, Port: 1024}, o)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(c)
	c.Close()
	if err != nil || string(b) != "hi" {
		t.Fatalf("read %q, %v", b, err)
	}
	// A listener restarted on the same path replaces the stale socket.
	ln.Close()
	ln2, err := Listen(Addr{Scheme: "vsock", CID: AnyCID, Port: 1024}, o)
	if err != nil {
		t.Fatalf("relisten: %v", err)
	}
	ln2.Close()
}

func TestDialErrors(t *testing.T) {
	ctx := context.Background()
	if _, err := Dial(ctx, Addr{Scheme: "vsock", CID: AnyCID, Port: 1}, Options{}); err == nil {
		t.Error("dialing a vsock address without a CID succeeded")
	}
	if _, err := Dial(ctx, Addr{Scheme: "vsock", CID: 3, Port: 1}, Options{VSockDir: t.TempDir()}); err == nil {
		t.Error("dialing a stand-in socket that does not exist succeeded")
	}
}

func TestVSockDirFromEnv(t *testing.T) {
	t.Setenv(EnvVSockDir, " /from/env ")
	if got := VSockDirFromEnv(""); got != "/from/env" {
		t.Errorf("got %q", got)
	}
	if got := VSockDirFromEnv("/flag"); got != "/flag" {
		t.Errorf("flag should win, got %q", got)
	}
}

func TestCheckListen(t *testing.T) {
	anyCID, err := Parse("vsock://:8443")
	if err != nil {
		t.Fatal(err)
	}
	named, err := Parse("vsock://16:8443")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		o    Options
		a    Addr
		bad  bool
	}{
		{"stand-in, no CID", Options{VSockDir: "/tmp/q"}, anyCID, true},
		{"stand-in, CID named", Options{VSockDir: "/tmp/q"}, named, false},
		{"stand-in, local CID", Options{VSockDir: "/tmp/q", LocalCID: 16}, anyCID, false},
		{"real VSOCK", Options{}, anyCID, false},
		{"unix", Options{VSockDir: "/tmp/q"}, Addr{Scheme: "unix", Path: "/tmp/x.sock"}, false},
	} {
		err := tc.o.CheckListen(tc.a)
		if (err != nil) != tc.bad || (err != nil && !strings.Contains(err.Error(), "vsock://CID:PORT")) {
			t.Errorf("%s: %v", tc.name, err)
		}
	}
}

// TestListenUnixLeavesLiveSocket: a socket file some process still listens
// on is not stale: a second Listen on its path must fail rather than remove
// it and take the path over (a second quench-host with the same -vsock-dir
// or -listen took the enclave streams of the first). A socket nobody
// listens on any more (left by a crash) is still replaced.
func TestListenUnixLeavesLiveSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "live.sock")
	a := Addr{Scheme: "unix", Path: path}
	ln, err := Listen(a, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	testutil.ServeConns(t, ln, func(net.Conn) {})
	if ln2, err := Listen(a, Options{}); err == nil {
		ln2.Close()
		t.Fatal("a second Listen took over a live socket")
	} else if !strings.Contains(err.Error(), "in use") {
		t.Errorf("second Listen: %v, want the socket in use", err)
	}
	c, err := net.DialTimeout("unix", path, 5*time.Second)
	if err != nil {
		t.Fatalf("the first listener lost its socket: %v", err)
	}
	c.Close()

	// Stale: the file of a listener that ended without removing it.
	stale := testutil.StaleUnixSocket(t)
	ln3, err := Listen(Addr{Scheme: "unix", Path: stale}, Options{})
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	ln3.Close()

	// Anything else at the path stays.
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, []byte("keep"), 0o600); err != nil {
		t.Fatal(err)
	}
	if ln4, err := Listen(Addr{Scheme: "unix", Path: file}, Options{}); err == nil {
		ln4.Close()
		t.Error("Listen over a regular file succeeded")
	}
	if b, err := os.ReadFile(file); err != nil || string(b) != "keep" {
		t.Errorf("regular file at the path: %q, %v", b, err)
	}
}

// TestStandInMissingDir: a VSOCK stand-in directory that does not exist is
// named as such, on both sides, not left to a bare "no such file or
// directory" about a socket path.
func TestStandInMissingDir(t *testing.T) {
	o := Options{VSockDir: filepath.Join(t.TempDir(), "missing"), LocalCID: ParentCID}
	a, _ := Parse("vsock://:1024")
	if ln, err := Listen(a, o); err == nil || !strings.Contains(err.Error(), "stand-in directory") {
		if ln != nil {
			ln.Close()
		}
		t.Errorf("Listen in a missing stand-in directory: %v", err)
	}
	d, _ := Parse("vsock://3:1024")
	if _, err := Dial(context.Background(), d, o); err == nil || !strings.Contains(err.Error(), "stand-in directory") {
		t.Errorf("Dial in a missing stand-in directory: %v", err)
	}
}
