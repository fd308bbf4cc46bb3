package tool_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/quenchnet/quench/scripts/load/tool"
)

// fakeTool writes a shell script that records its arguments in args.txt
// and runs body, standing in for a load tool.
func fakeTool(t *testing.T, body string) (path, argsFile string) {
	t.Helper()
	if runtime.GOOS == "windows" {
		t.Skip("uses a shell script as a fake tool")
	}
	dir := t.TempDir()
	argsFile = filepath.Join(dir, "args.txt")
	path = filepath.Join(dir, "faketool")
	script := "#!/bin/sh\necho \"$@\" > " + argsFile + "\n" + body + "\n"
	if err := os.WriteFile(path, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return path, argsFile
}

func fixturePath(t *testing.T, name string) string {
	t.Helper()
	p, err := filepath.Abs(filepath.Join("..", "testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestBombardierRun(t *testing.T) {
	path, argsFile := fakeTool(t, "cat "+fixturePath(t, "bombardier-mixed.json"))
	b, err := tool.NewBombardier(tool.Config{Path: path, Version: "v1.2.6"})
	if err != nil {
		t.Fatal(err)
	}
	out, err := b.Run(context.Background(), tool.Request{
		URL: "https://127.0.0.1:8443/x", Concurrency: 50, Duration: 3 * time.Second, Timeout: time.Second, Insecure: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	args, _ := os.ReadFile(argsFile)
	wantArgs := "-c 50 -d 3s -t 1s -k -o json -p result -l https://127.0.0.1:8443/x\n"
	if diff := cmp.Diff(wantArgs, string(args)); diff != "" {
		t.Errorf("args (-want +got):\n%s", diff)
	}
	if out.Step.Concurrency != 50 || out.Step.OK != 18218 || out.Step.Command != "faketool "+strings.TrimSpace(wantArgs) {
		t.Errorf("step %+v", out.Step)
	}
	if len(out.Raw) == 0 {
		t.Error("no raw output")
	}
	if b.Name() != "bombardier" || b.Version() != "v1.2.6" || b.MaxConcurrency() != 0 {
		t.Errorf("name %q version %q max %d", b.Name(), b.Version(), b.MaxConcurrency())
	}
}

func TestBatonRun(t *testing.T) {
	path, argsFile := fakeTool(t, "cat "+fixturePath(t, "baton-ok.txt"))
	b, err := tool.NewBaton(tool.Config{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	out, err := b.Run(context.Background(), tool.Request{
		URL: "http://127.0.0.1:1/", Concurrency: 7, Duration: 1500 * time.Millisecond, Timeout: time.Second, Insecure: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	args, _ := os.ReadFile(argsFile)
	if diff := cmp.Diff("-u http://127.0.0.1:1/ -c 7 -t 2 -i\n", string(args)); diff != "" {
		t.Errorf("args (-want +got):\n%s", diff)
	}
	st := out.Step
	if st.Concurrency != 7 || st.OK != 21079 {
		t.Errorf("step %+v", st)
	}
	if want := "baton takes whole seconds: ran 2s for a 1.5s step"; !contains(st.Notes, want) {
		t.Errorf("notes %q, want %q", st.Notes, want)
	}
	if b.MaxConcurrency() != 512 {
		t.Errorf("MaxConcurrency = %d, want 512", b.MaxConcurrency())
	}
	if got := b.Deadline(tool.Request{Duration: 1500 * time.Millisecond}); got != 12*time.Second {
		t.Errorf("Deadline = %v, want 2s + 10s grace", got)
	}
}

func contains(list []string, s string) bool {
	for _, l := range list {
		if l == s {
			return true
		}
	}
	return false
}

func TestRunKilledAtDeadline(t *testing.T) {
	path, _ := fakeTool(t, "exec sleep 30")
	b, err := tool.NewBaton(tool.Config{Path: path, Grace: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err = b.Run(context.Background(), tool.Request{URL: "http://127.0.0.1:1/", Concurrency: 1, Duration: time.Second})
	if !errors.Is(err, tool.ErrKilled) {
		t.Fatalf("err = %v, want ErrKilled", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("took %v; the deadline was 1.2s", d)
	}
}

func TestRunInterrupted(t *testing.T) {
	path, _ := fakeTool(t, "exec sleep 30")
	b, err := tool.NewBombardier(tool.Config{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel)
	_, err = b.Run(ctx, tool.Request{URL: "http://127.0.0.1:1/", Concurrency: 1, Duration: time.Second})
	if err == nil || errors.Is(err, tool.ErrKilled) || !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled and not ErrKilled", err)
	}
}

func TestRunToolFails(t *testing.T) {
	path, _ := fakeTool(t, "cat "+fixturePath(t, "baton-badconfig.txt")+"; exit 1")
	b, err := tool.NewBaton(tool.Config{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	_, err = b.Run(context.Background(), tool.Request{URL: "http://127.0.0.1:1/", Concurrency: 1, Duration: time.Second})
	if err == nil || !strings.Contains(err.Error(), "invalid concurrency level") {
		t.Fatalf("err = %v, want the tool's message", err)
	}
}

func TestRunOutputCapped(t *testing.T) {
	path, _ := fakeTool(t, "head -c 1000000 /dev/zero; cat "+fixturePath(t, "bombardier-ok.json"))
	b, err := tool.NewBombardier(tool.Config{Path: path, MaxOutput: 4096})
	if err != nil {
		t.Fatal(err)
	}
	out, err := b.Run(context.Background(), tool.Request{URL: "http://127.0.0.1:1/", Concurrency: 1, Duration: time.Second})
	if err == nil {
		t.Error("parsed a result that was cut off")
	}
	if len(out.Raw) != 4096 {
		t.Errorf("kept %d bytes, want 4096", len(out.Raw))
	}
}

func TestRequestChecked(t *testing.T) {
	b, err := tool.NewBombardier(tool.Config{Path: "/nonexistent"})
	if err != nil {
		t.Fatal(err)
	}
	for _, req := range []tool.Request{
		{URL: "http://127.0.0.1/", Concurrency: 0, Duration: time.Second},
		{URL: "http://127.0.0.1/", Concurrency: 1, Duration: 500 * time.Millisecond},
		{URL: "", Concurrency: 1, Duration: time.Second},
	} {
		if _, err := b.Run(context.Background(), req); err == nil {
			t.Errorf("Run(%+v) succeeded", req)
		}
	}
	if _, err := tool.NewBaton(tool.Config{}); err == nil {
		t.Error("NewBaton without a Path succeeded")
	}
}

func TestFindModule(t *testing.T) {
	root := t.TempDir()
	scripts := filepath.Join(root, "scripts")
	deep := filepath.Join(root, "a", "b")
	for _, d := range []string{scripts, deep} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(root, "go.mod"), []byte("module github.com/quenchnet/quench\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(scripts, "go.mod"), []byte("module "+tool.ToolsModule+"\n\ngo 1.26\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, start := range []string{root, scripts, deep} {
		got, err := tool.FindModule(start)
		if err != nil || got != scripts {
			t.Errorf("FindModule(%s) = %q, %v; want %q", start, got, err, scripts)
		}
	}
	if _, err := tool.FindModule(t.TempDir()); err == nil {
		t.Error("FindModule found a module in an empty directory")
	}
}
