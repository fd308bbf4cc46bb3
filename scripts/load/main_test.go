package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/quenchnet/quench/scripts/load/result"
	"github.com/quenchnet/quench/scripts/load/sweep"
)

func TestParseTargets(t *testing.T) {
	got, err := parseTargets(
		[]string{"direct=http://127.0.0.1:8080/", "http://127.0.0.1:9/x?a=b=c", "tap=https://[::1]:8443/hello"},
		[]string{"http://localhost:7000/p/"},
	)
	if err != nil {
		t.Fatal(err)
	}
	want := []sweep.Target{
		{Name: "direct", URL: "http://127.0.0.1:8080/"},
		{Name: "127.0.0.1:9/x", URL: "http://127.0.0.1:9/x?a=b=c"},
		{Name: "tap", URL: "https://[::1]:8443/hello"},
		{Name: "localhost:7000/p", URL: "http://localhost:7000/p/"},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

func TestParseFlags(t *testing.T) {
	steps, err := parseSteps(" 1, 10,500 ,")
	if err != nil || !cmp.Equal(steps, []int{1, 10, 500}) {
		t.Errorf("parseSteps = %v, %v", steps, err)
	}
	for _, bad := range []string{"", "1,x", "0", "-5"} {
		if _, err := parseSteps(bad); err == nil {
			t.Errorf("parseSteps(%q) succeeded", bad)
		}
	}
	for in, want := range map[string]float64{"5%": 0.05, "0.05": 0.05, "12.5 %": 0.125, "1": 1, "0%": 1e-12} {
		if got, err := parseRate(in); err != nil || got != want {
			t.Errorf("parseRate(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "x", "-1%"} {
		if _, err := parseRate(bad); err == nil {
			t.Errorf("parseRate(%q) succeeded", bad)
		}
	}
	if _, err := parseWrite("json,gif"); err == nil {
		t.Error("parseWrite accepted gif")
	}
}

func runCLI(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code = run(context.Background(), args, &out, &errOut)
	return code, out.String(), errOut.String()
}

func TestRefusesRemoteTargets(t *testing.T) {
	for _, u := range []string{"http://192.0.2.10/", "https://enclave.example.com/"} {
		// -bombardier points nowhere: the refusal must come first.
		code, _, stderr := runCLI(t, "-target", "x="+u, "-bombardier", "/nonexistent", "-out", t.TempDir())
		if code != 1 || !strings.Contains(stderr, "not on loopback") || !strings.Contains(stderr, "-allow-remote") {
			t.Errorf("%s: exit %d, stderr %q", u, code, stderr)
		}
	}
}

func TestUsage(t *testing.T) {
	code, _, stderr := runCLI(t, "-help")
	if code != 0 || !strings.Contains(stderr, "-from-json") || !strings.Contains(stderr, "-allow-remote") {
		t.Errorf("exit %d, stderr %q", code, stderr)
	}
	if code, _, _ := runCLI(t, "-no-such-flag"); code != 2 {
		t.Errorf("bad flag: exit %d, want 2", code)
	}
	if code, _, stderr := runCLI(t); code != 1 || !strings.Contains(stderr, "no targets") {
		t.Errorf("no targets: exit %d, stderr %q", code, stderr)
	}
	if code, _, _ := runCLI(t, "-from-json", "x.json", "-target", "a=http://127.0.0.1/"); code != 2 {
		t.Errorf("-from-json with a target: exit %d, want 2", code)
	}
	if code, _, stderr := runCLI(t, "-tool", "wrk", "-target", "a=http://127.0.0.1/"); code != 1 || !strings.Contains(stderr, "-tool") {
		t.Errorf("-tool wrk: exit %d, stderr %q", code, stderr)
	}
}

func samplePath(t *testing.T) string {
	t.Helper()
	p, err := filepath.Abs(filepath.Join("testdata", "sample-results.json"))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestFromJSON(t *testing.T) {
	dir := t.TempDir()
	code, stdout, stderr := runCLI(t, "-from-json", samplePath(t), "-out", dir, "-name", "bench",
		"-write", "json,csv,md,png,svg", "-markdown", "-title", "Sample")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	for _, ext := range []string{"json", "csv", "md", "png", "svg"} {
		fi, err := os.Stat(filepath.Join(dir, "bench."+ext))
		if err != nil || fi.Size() == 0 {
			t.Errorf("bench.%s: %v", ext, err)
		}
	}
	if !strings.Contains(stdout, "| concurrency | direct · bombardier | direct · baton | go-proxy · bombardier | go-proxy · baton |") {
		t.Errorf("stdout lacks the comparison table:\n%s", stdout)
	}
	f, err := result.ReadJSONFile(filepath.Join(dir, "bench.json"))
	if err != nil {
		t.Fatal(err)
	}
	if len(f.Series) != 4 {
		t.Errorf("%d series, want 4", len(f.Series))
	}
}

func TestFromJSONMerge(t *testing.T) {
	for _, tc := range []struct {
		median  bool
		targets []string
	}{
		{false, []string{"direct", "direct", "go-proxy", "go-proxy", "direct#2", "direct#2", "go-proxy#2", "go-proxy#2"}},
		{true, []string{"direct", "direct", "go-proxy", "go-proxy"}},
	} {
		dir := t.TempDir()
		args := []string{"-from-json", samplePath(t), "-from-json", samplePath(t), "-out", dir, "-write", "json"}
		if tc.median {
			args = append(args, "-median")
		}
		if code, _, stderr := runCLI(t, args...); code != 0 {
			t.Fatalf("exit %d: %s", code, stderr)
		}
		f, err := result.ReadJSONFile(filepath.Join(dir, "load.json"))
		if err != nil {
			t.Fatal(err)
		}
		var targets []string
		for _, s := range f.Series {
			targets = append(targets, s.Target)
		}
		if diff := cmp.Diff(tc.targets, targets); diff != "" {
			t.Errorf("median=%v targets (-want +got):\n%s", tc.median, diff)
		}
		if tc.median && (f.Settings.Repeat != 2 || f.Series[0].Steps[0].Runs != 2) {
			t.Errorf("median: repeat %d, runs %d; want 2, 2", f.Settings.Repeat, f.Series[0].Steps[0].Runs)
		}
	}
}

// TestSweepWithFakeTools runs the whole command with scripts standing in
// for bombardier and baton: no traffic at all.
func TestSweepWithFakeTools(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("uses shell scripts as fake tools")
	}
	dir := t.TempDir()
	fake := func(name, fixture string) string {
		abs, err := filepath.Abs(filepath.Join("testdata", fixture))
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte("#!/bin/sh\ncat "+abs+"\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		return p
	}
	out := filepath.Join(dir, "out")
	code, stdout, stderr := runCLI(t,
		"-target", "ok=http://127.0.0.1:1/", "-target", "refused=http://127.0.0.1:2/",
		"-tool", "both", "-bombardier", fake("bombardier", "bombardier-ok.json"), "-baton", fake("baton", "baton-refused.txt"),
		"-steps", "1,10,1000", "-duration", "1s", "-pause", "0", "-out", out)
	if code != 0 {
		t.Fatalf("exit %d: %s\n%s", code, stderr, stdout)
	}
	for _, want := range []string{
		"open-file limit",
		"ok       bombardier c=1",
		"ok       baton      stopped: concurrency 1: 100.0% of 15616 requests failed",
		"refused  baton      stopped",
		"wrote " + filepath.Join(out, "load.png"),
	} {
		if !strings.Contains(stdout, want) {
			t.Errorf("stdout lacks %q:\n%s", want, stdout)
		}
	}
	f, err := result.ReadJSONFile(filepath.Join(out, "load.json"))
	if err != nil {
		t.Fatal(err)
	}
	if len(f.Series) != 4 || len(f.Series[0].Steps) != 3 || len(f.Series[1].Steps) != 1 {
		t.Errorf("series %+v", f.Series)
	}
	if f.Settings.NoFileLimit == 0 {
		t.Error("the open-file limit is not recorded")
	}
	raws, _ := filepath.Glob(filepath.Join(out, "raw", "*.txt"))
	if len(raws) != 3+1+3+1 {
		t.Errorf("%d raw files: %v", len(raws), raws)
	}
}
