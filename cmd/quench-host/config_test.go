package main

import (
	"flag"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/quenchnet/quench/host"
	"github.com/quenchnet/quench/internal/endpoint"
)

func writeFile(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "host.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestConfigFile(t *testing.T) {
	p := writeFile(t, `
listen: [vsock://:1024]
publish:
  - 127.0.0.1:8080:80
publish_vsock:
  - 0.0.0.0:443:8443
enclave_cid: 17
dns: [1.1.1.1:53]
idle_timeout: 90s
allow_metadata: false
dhcp: false
control: /run/quench-host/control.sock
metrics: 127.0.0.1:9100
log_level: debug
`)
	got := defaultOptions()
	if err := loadConfigFile(p, &got); err != nil {
		t.Fatal(err)
	}
	want := defaultOptions()
	want.Listen = []string{"vsock://:1024"}
	want.Publish = []string{"127.0.0.1:8080:80"}
	want.PublishVSock = []string{"0.0.0.0:443:8443"}
	want.EnclaveCID = 17
	want.DNS = []string{"1.1.1.1:53"}
	want.IdleTimeout = 90 * time.Second
	want.Control = "/run/quench-host/control.sock"
	want.Metrics = "127.0.0.1:9100"
	want.LogLevel = "debug"
	want.DHCP = false
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("options (-want +got):\n%s", diff)
	}
	cfg, err := got.hostConfig()
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Publish) != 2 || cfg.Publish[1].VSockPort != 8443 || cfg.IdleTimeout != 90*time.Second || !cfg.DisableDHCP {
		t.Errorf("host config %+v", cfg)
	}
}

func TestConfigFileErrors(t *testing.T) {
	tests := []struct {
		name, body string
		want       []string // substrings of the error
	}{
		{"unknown key", "mtu: 9000\npublsh: [1:2]\n", []string{"line 2", "publsh", "not found"}},
		{"wrong type", "mtu: 9000\n\nmax_dials: lots\n", []string{"line 3", "lots"}},
		{"bad duration", "idle_timeout: forever\n", []string{"line 1", "forever"}},
		{"not a mapping", "- a\n- b\n", []string{"line 1"}},
		{"two documents", "mtu: 9000\n---\nmtu: 1500\n", []string{"line 2", "more than one"}},
		{"syntax", "publish: [1:2\n", []string{"line"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := defaultOptions()
			err := loadConfigFile(writeFile(t, tt.body), &o)
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

func TestConfigFileValueErrors(t *testing.T) {
	for _, body := range []string{"publish_vsock: ['1.2.3:80:5000']\n", "publish: ['80']\n", "subnet: nonsense\n"} {
		o := defaultOptions()
		if err := loadConfigFile(writeFile(t, body), &o); err != nil {
			t.Fatalf("%q: %v", body, err)
		}
		if _, err := o.hostConfig(); err == nil {
			t.Errorf("%q: hostConfig accepted it", body)
		}
	}
}

func TestConfigFileEmpty(t *testing.T) {
	o := defaultOptions()
	if err := loadConfigFile(writeFile(t, ""), &o); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(defaultOptions(), o); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

// TestFlagsOverrideFile: the command line wins; list flags add to the file.
func TestFlagsOverrideFile(t *testing.T) {
	p := writeFile(t, "mtu: 9000\npublish: ['127.0.0.1:0:80']\nlog_level: nonsense\n")
	var stderr strings.Builder
	// log_level from the file is invalid; the flag fixes it, and the run
	// then fails later, on purpose, at -subnet.
	code := run([]string{"-config", p, "-log-level", "warn", "-subnet", "bad"}, &stderr)
	if code != 2 || !strings.Contains(stderr.String(), "subnet") {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	code = run([]string{"-config", p, "-subnet", "bad"}, &stderr)
	if code != 2 || !strings.Contains(stderr.String(), "log-level") {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	stderr.Reset()
	code = run([]string{"-config", filepath.Join(t.TempDir(), "missing.yaml")}, &stderr)
	if code != 2 || !strings.Contains(stderr.String(), "no such file") {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
}

// TestExampleConfig keeps examples/systemd/host.yaml valid.
func TestExampleConfig(t *testing.T) {
	o := defaultOptions()
	if err := loadConfigFile("../../examples/systemd/host.yaml", &o); err != nil {
		t.Fatal(err)
	}
	cfg, err := o.hostConfig()
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Publish) != 1 || cfg.Publish[0].VSockPort != 8443 || cfg.Egress == nil {
		t.Errorf("example config: %+v", cfg)
	}
}

// TestVSockProxyOptions: -vsock-proxy from the file and the command line,
// and the errors: a bad spec, two proxies on one VSOCK port, a proxy on
// the port enclaves connect to.
func TestVSockProxyOptions(t *testing.T) {
	o := defaultOptions()
	if err := loadConfigFile(writeFile(t, "vsock_proxy: ['8000:kms.us-east-1.amazonaws.com:443']\n"), &o); err != nil {
		t.Fatal(err)
	}
	configPath := ""
	fs := flag.NewFlagSet("quench-host", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	o.bind(fs, &configPath)
	if err := fs.Parse([]string{"-vsock-proxy", "8001:[2001:db8::1]:5432"}); err != nil {
		t.Fatal(err)
	}
	listen := []endpoint.Addr{{Scheme: "vsock", CID: endpoint.AnyCID, Port: 1024}, {Scheme: "unix", Path: "/run/x.sock"}}
	got, err := o.vsockProxies(listen)
	want := []host.VSockProxy{{Port: 8000, Target: "kms.us-east-1.amazonaws.com:443"}, {Port: 8001, Target: "[2001:db8::1]:5432"}}
	if err != nil || !slices.Equal(got, want) {
		t.Errorf("vsockProxies = %+v, %v; want %+v", got, err, want)
	}
	for _, tc := range []struct {
		specs []string
		want  string
	}{
		{[]string{"8000:kms"}, "want HOST:PORT"},
		{[]string{"8000:a:443", "8000:b:443"}, "VSOCK port 8000 is taken by -vsock-proxy 8000:a:443"},
		{[]string{"1024:a:443"}, "VSOCK port 1024 is taken by -listen vsock://:1024"},
	} {
		o := options{VSockProxy: tc.specs}
		if _, err := o.vsockProxies(listen); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v; want an error with %q", tc.specs, err, tc.want)
		}
	}
	var stderr strings.Builder
	if code := run([]string{"-vsock-proxy", "8000:kms:https"}, &stderr); code != 2 || !strings.Contains(stderr.String(), `port "https": want 1-65535`) {
		t.Errorf("run with a bad -vsock-proxy: exit %d: %s", code, stderr.String())
	}
}

// TestEnclaveLogsOptions: -enclave-logs from the file, and its errors: a
// bad URL, a VSOCK port that -listen or -vsock-proxy serve.
func TestEnclaveLogsOptions(t *testing.T) {
	o := defaultOptions()
	if err := loadConfigFile(writeFile(t, "enclave_logs: vsock://:1025\nmax_enclave_log_streams: 8\nenclave_log_rate: 50\n"), &o); err != nil {
		t.Fatal(err)
	}
	listen := []endpoint.Addr{{Scheme: "vsock", CID: endpoint.AnyCID, Port: 1024}}
	proxies := []host.VSockProxy{{Port: 8000, Target: "kms:443"}}
	a, ok, err := o.enclaveLogs(listen, proxies)
	if err != nil || !ok || a.Port != 1025 {
		t.Errorf("enclaveLogs = %v, %v, %v", a, ok, err)
	}
	if cfg, err := o.hostConfig(); err != nil || cfg.MaxEnclaveLogStreams != 8 || cfg.EnclaveLogRate != 50 {
		t.Errorf("MaxEnclaveLogStreams = %d, EnclaveLogRate = %d, %v", cfg.MaxEnclaveLogStreams, cfg.EnclaveLogRate, err)
	}
	if _, ok, err := (options{}).enclaveLogs(listen, proxies); ok || err != nil {
		t.Errorf("without -enclave-logs: %v, %v", ok, err)
	}
	for _, tc := range []struct{ url, want string }{
		{"vsock://:1024", "VSOCK port 1024 is taken by -listen vsock://:1024"},
		{"vsock://:8000", "VSOCK port 8000 is taken by -vsock-proxy 8000:kms:443"},
		{"udp://:1025", "-enclave-logs"},
	} {
		if _, _, err := (options{EnclaveLogs: tc.url}).enclaveLogs(listen, proxies); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v; want an error with %q", tc.url, err, tc.want)
		}
	}
	var stderr strings.Builder
	if code := run([]string{"-enclave-logs", "vsock://:1024"}, &stderr); code != 2 || !strings.Contains(stderr.String(), "taken by -listen") {
		t.Errorf("run with -enclave-logs on -listen's port: exit %d: %s", code, stderr.String())
	}
}

// TestFlagPlaceholders: flag takes the first backquoted text of a usage
// string as the value's name in --help; it must be a name, not a phrase
// (-vsock-proxy's showed "vsock-proxy 8000 kms.us-east-1.amazonaws.com 443").
func TestFlagPlaceholders(t *testing.T) {
	o := defaultOptions()
	configPath := ""
	fs := flag.NewFlagSet("quench-host", flag.ContinueOnError)
	o.bind(fs, &configPath)
	fs.VisitAll(func(f *flag.Flag) {
		if name, _ := flag.UnquoteUsage(f); strings.ContainsAny(name, " \t") {
			t.Errorf("-%s: value placeholder %q", f.Name, name)
		}
	})
}

func TestLogFormatFlag(t *testing.T) {
	var stderr strings.Builder
	if code := run([]string{"-log-format", "xml"}, &stderr); code != 2 || !strings.Contains(stderr.String(), `-log-format "xml": want text or json`) {
		t.Errorf("-log-format xml: exit %d: %s", code, stderr.String())
	}
	o := defaultOptions()
	if err := loadConfigFile(writeFile(t, "log_format: json\n"), &o); err != nil || o.LogFormat != "json" {
		t.Errorf("log_format from the file: %q, %v", o.LogFormat, err)
	}
}

// TestLowEnclaveLogRateWarns: a rate a Shipper's writes of short lines
// cannot get through within their timeout is said at start-up.
func TestLowEnclaveLogRateWarns(t *testing.T) {
	for _, tc := range []struct {
		on   bool
		rate int
		warn bool
	}{{true, 5, true}, {true, 399, true}, {true, 400, false}, {true, 1000, false}, {true, -1, false}, {false, 5, false}} {
		if got := logRateWarning(tc.on, tc.rate) != ""; got != tc.warn {
			t.Errorf("logs %v, rate %d: warning %v, want %v", tc.on, tc.rate, got, tc.warn)
		}
	}
}
