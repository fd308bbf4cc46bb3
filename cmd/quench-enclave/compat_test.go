package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestNitridingFlagAliases: nitriding-daemon's flags (brave/nitriding-daemon
// main.go, the flag.*Var calls) whose meaning quench-enclave has under
// another name are taken as that flag, so a nitriding command line keeps
// working.
func TestNitridingFlagAliases(t *testing.T) {
	var stderr bytes.Buffer
	o, err := parse([]string{
		"-fqdn", "example.com",
		"-appwebsrv", "http://127.0.0.1:8081",
		"-intport=9090",
		"--ext-pub-port", "8443",
		"-ext-priv-port", "4444",
		"-fqdn-leader", "leader.internal",
		"-host-proxy-port", "2048",
		"-prometheus-port", "9100",
		"-appcmd", "python3 app.py -p 8081",
		"-wait-for-app",
	}, &stderr)
	if err != nil {
		t.Fatalf("%v\n%s", err, stderr.String())
	}
	got := []string{o.cfg.AppURL.String(), o.cfg.InternalAddr, o.cfg.PublicAddr, o.cfg.SyncAddr, o.cfg.MetricsAddr, strings.Join(o.appArgs, " ")}
	want := []string{"http://127.0.0.1:8081", "127.0.0.1:9090", ":8443", ":4444", ":9100", "python3 app.py -p 8081"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	if !o.cfg.WaitForApp || o.cfg.FQDN != "example.com" {
		t.Errorf("wait-for-app %v, fqdn %q", o.cfg.WaitForApp, o.cfg.FQDN)
	}
	// -host-proxy-port N is -host vsock://3:N: the dialled address.
	if o.hostAddr != "vsock://3:2048" {
		t.Errorf("host %q, want vsock://3:2048", o.hostAddr)
	}
	// -prometheus-port 0 is nitriding's "off".
	o, err = parse([]string{"-prometheus-port", "0"}, &stderr)
	if err != nil {
		t.Fatal(err)
	}
	if o.cfg.MetricsAddr != "" {
		t.Errorf("-prometheus-port 0: metrics on %q, want off", o.cfg.MetricsAddr)
	}
}

// TestNitridingFlagHints: nitriding-daemon's flags that quench-enclave does
// not take are refused with what to do instead, not with the flag
// package's "flag provided but not defined" and the whole usage text.
func TestNitridingFlagHints(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-debug"}, "-log-level debug"},
		{[]string{"-debug=true"}, "-dev-attester"},
		{[]string{"-profile"}, "-pprof"},
		{[]string{"-mock-cert-fp", "abcd"}, "-mock-cert-fp"},
		{[]string{"-prometheus-namespace", "myapp"}, "quench_enclave_"},
		{[]string{"-disable-keep-alives"}, "-disable-keep-alives"},
		{[]string{"-vsock-ext"}, "-ingress vsock://:PORT"},
		{[]string{"-appurl", "https://github.com/foo/bar"}, "-appurl"},
		{[]string{"-host-ip-provider-port", "6161"}, "-host-ip-provider-port"},
		{[]string{"-intport", "http"}, "-intport"},
		{[]string{"-ext-pub-port", "70000"}, "-ext-pub-port"},
		{[]string{"-appwebsrv"}, "needs a value"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			var stderr bytes.Buffer
			if code := run(tc.args, &stderr); code != 2 {
				t.Errorf("exit code %d, want 2", code)
			}
			out := stderr.String()
			if !strings.Contains(out, tc.want) || !strings.Contains(out, "nitriding") {
				t.Errorf("stderr %q lacks %q (and nitriding)", out, tc.want)
			}
			if strings.Contains(out, "flag provided but not defined") {
				t.Errorf("stderr %q: the flag package's message, not the hint", out)
			}
		})
	}
	// A value that looks like a nitriding flag is a value.
	var stderr bytes.Buffer
	o, err := parse([]string{"-app-url", "http://127.0.0.1:1", "-app-cmd", "-debug"}, &stderr)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"-debug"}, o.appArgs); diff != "" {
		t.Errorf("app args (-want +got):\n%s", diff)
	}
	// So are the app's arguments after --.
	o, err = parse([]string{"-app-url", "http://127.0.0.1:1", "--", "app", "-debug"}, &stderr)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"app", "-debug"}, o.appArgs); diff != "" {
		t.Errorf("app args (-want +got):\n%s", diff)
	}
}
