package main

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/quenchnet/quench/enclave"
	"github.com/quenchnet/quench/internal/testutil"
	"github.com/quenchnet/quench/policy"
	"golang.org/x/sys/unix"
)

// vsockProbe exits with the errno of socket(AF_VSOCK) (0: it opened), in a
// process the app starts (the filter must be inherited).
var vsockProbe = []string{"sh", "-c", `exec python3 -c '
import socket, sys
try:
    socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
except OSError as e:
    sys.exit(e.errno)
'`}

// TestAppSandbox: under the sandbox the app, and what it starts, cannot
// open a VSOCK socket (its own way to the host, past the egress policy);
// without it, it can (or gets the kernel's own error where VSOCK is
// missing, as on this machine, but not EPERM).
func TestAppSandbox(t *testing.T) {
	testutil.RequireCommand(t, "python3")
	if code := runApp(t, &options{appArgs: vsockProbe, appSandbox: true}); code != int(syscall.EPERM) {
		t.Errorf("sandboxed app: socket(AF_VSOCK) exit %d, want EPERM (%d)", code, syscall.EPERM)
	}
	if code := runApp(t, &options{appArgs: vsockProbe}); code == int(syscall.EPERM) {
		t.Errorf("app without the sandbox: socket(AF_VSOCK) refused with EPERM")
	}
	// A missing command is reported, not run through the sandbox step.
	if code := runApp(t, &options{appArgs: []string{"/nonexistent/app"}, appSandbox: true}); code != 1 {
		t.Errorf("missing app: exit %d, want 1", code)
	}
}

// TestAppUser: -app-user runs the app as that user, with and without the
// sandbox (which changes the user itself, after installing the filter).
func TestAppUser(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireCommand(t, "id")
	cred, err := lookupAppUser("65534:65534")
	if err != nil {
		t.Fatal(err)
	}
	// A directory the user can write in (t.TempDir's parent is private).
	dir, err := os.MkdirTemp("", "quench-app-user-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	for _, sandboxed := range []bool{false, true} {
		out := filepath.Join(dir, "id")
		_ = os.Remove(out)
		o := &options{appArgs: []string{"sh", "-c", "echo $(id -u):$(id -g):$(id -G) > " + out}, appSandbox: sandboxed, appCred: cred}
		if code := runApp(t, o); code != 0 {
			t.Fatalf("sandbox %v: exit %d", sandboxed, code)
		}
		b, err := os.ReadFile(out)
		if got := strings.TrimSpace(string(b)); err != nil || got != "65534:65534:65534" {
			t.Errorf("sandbox %v: app ran as %q (%v), want uid, gid and groups 65534", sandboxed, got, err)
		}
	}
}

func TestLookupAppUser(t *testing.T) {
	for _, tc := range []struct {
		spec     string
		uid, gid uint32
	}{
		{"root", 0, 0},
		{"0", 0, 0},
		{"1234", 1234, 1234}, // no passwd entry: its own number as the group
		{"1234:5", 1234, 5},
		{"root:65534", 0, 65534},
	} {
		c, err := lookupAppUser(tc.spec)
		if err != nil {
			t.Errorf("%q: %v", tc.spec, err)
			continue
		}
		if c.Uid != tc.uid || c.Gid != tc.gid || c.Groups == nil || len(c.Groups) != 0 {
			t.Errorf("%q: %+v, want uid %d gid %d and no supplementary groups", tc.spec, c, tc.uid, tc.gid)
		}
	}
}

// TestAppUserPdeathsig: the app keeps its parent-death signal (SIGTERM
// should quench-enclave die) when it runs as another user, with and
// without the sandbox: the kernel clears it when a process changes its
// user, which the sandbox step does after quench-enclave started it.
func TestAppUserPdeathsig(t *testing.T) {
	testutil.RequireRoot(t)
	// As the user: a python3 outside /root.
	const python = "/usr/bin/python3"
	if _, err := os.Stat(python); err != nil {
		t.Skipf("needs %s", python)
	}
	cred, err := lookupAppUser("65534:65534")
	if err != nil {
		t.Fatal(err)
	}
	// Exits with prctl(PR_GET_PDEATHSIG).
	probe := []string{python, "-c", `
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
sig = ctypes.c_int(-1)
if libc.prctl(2, ctypes.byref(sig), 0, 0, 0) != 0:
    sys.exit(100)
sys.exit(sig.value)
`}
	for _, sandboxed := range []bool{false, true} {
		if code := runApp(t, &options{appArgs: probe, appSandbox: sandboxed, appCred: cred}); code != int(syscall.SIGTERM) {
			t.Errorf("sandbox %v, -app-user: the app's parent-death signal is %d, want SIGTERM (%d)", sandboxed, code, syscall.SIGTERM)
		}
	}
}

// TestAppSandboxDescriptors: a sandboxed app gets standard input, output
// and error only, not whatever quench-enclave left open without
// close-on-exec (such as a descriptor it inherited from what started it: a
// VSOCK connection there would be a way to the host past the filter).
func TestAppSandboxDescriptors(t *testing.T) {
	testutil.RequireCommand(t, "python3")
	// Not close-on-exec: as inherited from a parent.
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fds[0]); syscall.Close(fds[1]) })
	// Exits with the number of descriptors above 2 (the directory's own
	// is not counted: os.listdir has closed it).
	probe := []string{"sh", "-c", `exec python3 -c '
import os, sys
sys.exit(len([f for f in os.listdir("/proc/self/fd") if int(f) > 2]) - 1)
'`}
	if code := runApp(t, &options{appArgs: probe, appSandbox: true}); code != 0 {
		t.Errorf("sandboxed app: %d descriptors besides 0, 1 and 2, want none", code)
	}
}

// init: the child of TestLookupAppUserBadIDs, in its own mount namespace,
// looks users up in the passwd and group files it is given.
func init() {
	dir := os.Getenv("QUENCH_TEST_PASSWD_DIR")
	if dir == "" {
		return
	}
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		fmt.Println("mount", err)
		os.Exit(1)
	}
	for _, f := range []string{"passwd", "group"} {
		if err := unix.Mount(filepath.Join(dir, f), "/etc/"+f, "", unix.MS_BIND, ""); err != nil {
			fmt.Println("mount", f, err)
			os.Exit(1)
		}
	}
	for _, spec := range strings.Fields(os.Getenv("QUENCH_TEST_PASSWD_SPECS")) {
		if c, err := lookupAppUser(spec); err != nil {
			fmt.Printf("%s error\n", spec)
		} else {
			fmt.Printf("%s %d:%d\n", spec, c.Uid, c.Gid)
		}
	}
	os.Exit(0)
}

// TestLookupAppUserBadIDs: an ID in passwd or group that is not a 32-bit
// user or group number (os/user without cgo, as quench-enclave is built,
// passes on any integer, even negative) is refused, not taken as 0 (root)
// or as (uid_t)-1; so are the numbers 4294967295 themselves.
func TestLookupAppUserBadIDs(t *testing.T) {
	testutil.RequireRoot(t)
	dir := t.TempDir()
	passwd := "root:x:0:0:root:/root:/bin/sh\nquenchneg:x:-2:-2::/:/bin/sh\nquenchbig:x:4294967296:65534::/:/bin/sh\n"
	group := "root:x:0:\nquenchneggrp:x:-2:\n"
	if err := os.WriteFile(filepath.Join(dir, "passwd"), []byte(passwd), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "group"), []byte(group), 0o644); err != nil {
		t.Fatal(err)
	}
	specs := []string{"quenchneg", "quenchbig", "65534:quenchneggrp", "4294967295", "65534:4294967295"}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "QUENCH_TEST_PASSWD_DIR="+dir, "QUENCH_TEST_PASSWD_SPECS="+strings.Join(specs, " "))
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNS}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v: %s", err, out)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		spec, got, _ := strings.Cut(line, " ")
		if got == "error" {
			continue
		}
		var uid, gid uint32
		if _, err := fmt.Sscanf(got, "%d:%d", &uid, &gid); err != nil {
			t.Fatalf("child: %q", line)
		}
		// Only 65534 and the numbers glibc's parser gives (-2 as 4294967294)
		// are users or groups; 0 is root, 4294967295 none.
		if uid == 0 || gid == 0 || uid == 4294967295 || gid == 4294967295 {
			t.Errorf("-app-user %s: %d:%d, want an error", spec, uid, gid)
		}
	}
	t.Logf("child: %s", out)
}

// TestAppSandboxFlags: -app-sandbox auto is on with -allow only; the way
// the app is held is listed for /enclave/config; without an app, nothing.
func TestAppSandboxFlags(t *testing.T) {
	app := []string{"-app-url", "http://127.0.0.1:1"}
	for _, tc := range []struct {
		args    []string
		sandbox bool
		notes   map[string]string
	}{
		{append(app, "--", "true"), false, map[string]string{"app_sandbox": "off", "app_user": fmt.Sprintf("%d:%d", os.Geteuid(), os.Getegid())}},
		{append(app, "-allow", "*", "--", "true"), true, map[string]string{"app_sandbox": "seccomp", "app_user": fmt.Sprintf("%d:%d", os.Geteuid(), os.Getegid())}},
		{append(app, "-allow", "*", "-app-sandbox", "off", "-app-user", "1234:5", "--", "true"), false, map[string]string{"app_sandbox": "off", "app_user": "1234:5"}},
		{append(app, "-app-sandbox", "on", "-app-user", "1234", "--", "true"), true, map[string]string{"app_sandbox": "seccomp", "app_user": "1234:1234"}},
		{append(app, "-allow", "*"), false, nil},
	} {
		o, err := parse(tc.args, io.Discard)
		if err != nil {
			t.Fatalf("%v: %v", tc.args, err)
		}
		if o.appSandbox != tc.sandbox {
			t.Errorf("%v: sandbox %v, want %v", tc.args, o.appSandbox, tc.sandbox)
		}
		if fmt.Sprint(o.cfg.Annotations) != fmt.Sprint(tc.notes) {
			t.Errorf("%v: annotations %v, want %v", tc.args, o.cfg.Annotations, tc.notes)
		}
	}
}

// TestLookupAppUserUnknown: a name that is neither a user nor a number is
// reported as such (it was "strconv.Atoi: parsing ...: invalid syntax",
// os/user's LookupId error, whatever the name).
func TestLookupAppUserUnknown(t *testing.T) {
	for _, tc := range []struct{ spec, want string }{
		{"quench-no-such-user", `user "quench-no-such-user": not a user name or number`},
		{"quench-no-such-user:0", `user "quench-no-such-user": not a user name or number`},
		{"0:quench-no-such-group", `group "quench-no-such-group": not a group name or number`},
	} {
		_, err := lookupAppUser(tc.spec)
		if err == nil || err.Error() != tc.want {
			t.Errorf("%q: %v, want %s", tc.spec, err, tc.want)
		}
	}
}

// TestAppSandboxOffWarns: with an egress policy, an app started without
// the sandbox (-app-sandbox off) is warned about, as a sandboxed app
// running as root is: it can open VSOCK to the host past the policy.
func TestAppSandboxOffWarns(t *testing.T) {
	pol, err := policy.Parse([]string{"ok.example:443"})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		sandbox bool
		egress  *policy.Policy
		warn    bool
	}{
		{false, pol, true},
		{false, nil, false},
	} {
		e, err := enclave.New(enclave.Config{})
		if err != nil {
			t.Fatal(err)
		}
		var log strings.Builder
		o := &options{appArgs: []string{"true"}, appSandbox: tc.sandbox}
		o.cfg.Egress = tc.egress
		o.logger = slog.New(slog.NewTextHandler(&log, nil))
		if code := superviseApp(e, o, make(chan os.Signal), io.Discard); code != 0 {
			t.Fatalf("exit %d", code)
		}
		if got := strings.Contains(log.String(), "without the sandbox"); got != tc.warn {
			t.Errorf("sandbox %v, policy %v: warned %v, want %v; log:\n%s", tc.sandbox, tc.egress != nil, got, tc.warn, log.String())
		}
	}
}
