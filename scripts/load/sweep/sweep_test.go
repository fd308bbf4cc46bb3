package sweep_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/quenchnet/quench/scripts/load/result"
	"github.com/quenchnet/quench/scripts/load/sweep"
	"github.com/quenchnet/quench/scripts/load/tool"
)

// outcome is what the fake tool reports for one run.
type outcome struct {
	requests, errors, timeouts int64
	rps                        float64
	err                        error
}

// fakeRunner answers from a function of target URL, concurrency and run
// number, and records every call. It sends no traffic.
type fakeRunner struct {
	name  string
	max   int
	reply func(url string, c, call int) outcome

	mu    sync.Mutex
	calls []string
}

func (f *fakeRunner) Name() string        { return f.name }
func (f *fakeRunner) MaxConcurrency() int { return f.max }

func (f *fakeRunner) Run(ctx context.Context, req tool.Request) (tool.Output, error) {
	f.mu.Lock()
	f.calls = append(f.calls, fmt.Sprintf("%s c=%d", req.URL, req.Concurrency))
	n := len(f.calls)
	f.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return tool.Output{}, err
	}
	o := f.reply(req.URL, req.Concurrency, n)
	if o.err != nil {
		return tool.Output{Raw: []byte("tool said no")}, o.err
	}
	st := result.Step{
		Concurrency: req.Concurrency, Seconds: 1, Requests: o.requests,
		OK: o.requests - o.errors - o.timeouts, Errors: o.errors, Timeouts: result.Int64(o.timeouts),
		RPS: result.Num(o.rps), ToolRPS: result.Unknown, Latency: result.NoLatency(),
	}
	return tool.Output{Step: st, Raw: []byte(fmt.Sprintf("raw c=%d", req.Concurrency))}, nil
}

func (f *fakeRunner) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.calls...)
}

const (
	good = "http://127.0.0.1:1/good"
	bad  = "http://127.0.0.1:2/bad"
)

func newSweep(t *testing.T, cfg sweep.Config) *sweep.Sweep {
	t.Helper()
	if cfg.Pause == 0 {
		cfg.Pause = -1
	}
	if len(cfg.Targets) == 0 {
		cfg.Targets = []sweep.Target{{Name: "good", URL: good}, {Name: "bad", URL: bad}}
	}
	s, err := sweep.New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func concurrencies(s result.Series) []int {
	var out []int
	for _, st := range s.Steps {
		out = append(out, st.Concurrency)
	}
	return out
}

func TestEarlyStop(t *testing.T) {
	tests := []struct {
		name       string
		badReply   func(c int) outcome
		wantBad    []int
		wantReason string
	}{
		{
			name: "errors climb past 5%",
			badReply: func(c int) outcome {
				if c >= 100 {
					return outcome{requests: 1000, errors: 100, rps: 900}
				}
				return outcome{requests: 1000, errors: 10, rps: 990}
			},
			wantBad:    []int{1, 10, 50, 100},
			wantReason: "concurrency 100: 10.0% of 1000 requests failed (errors 100, timeouts 0), above 5.0%",
		},
		{
			name: "timeouts count too",
			badReply: func(c int) outcome {
				if c >= 50 {
					return outcome{requests: 100, errors: 2, timeouts: 4, rps: 94}
				}
				return outcome{requests: 100, rps: 100}
			},
			wantBad:    []int{1, 10, 50},
			wantReason: "concurrency 50: 6.0% of 100 requests failed (errors 2, timeouts 4), above 5.0%",
		},
		{
			name:     "exactly at the threshold goes on",
			badReply: func(c int) outcome { return outcome{requests: 100, errors: 5, rps: 95} },
			wantBad:  []int{1, 10, 50, 100, 250},
		},
		{
			name: "tool failure stops",
			badReply: func(c int) outcome {
				if c == 10 {
					return outcome{err: errors.New("tool: killed at its deadline")}
				}
				return outcome{requests: 10, rps: 10}
			},
			wantBad:    []int{1, 10},
			wantReason: "concurrency 10 failed: tool: killed at its deadline",
		},
		{
			name:       "no requests stops",
			badReply:   func(c int) outcome { return outcome{} },
			wantBad:    []int{1},
			wantReason: "concurrency 1: no request completed",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := &fakeRunner{name: "fake", reply: func(url string, c, _ int) outcome {
				if url == bad {
					return tc.badReply(c)
				}
				return outcome{requests: 1000, rps: 1000}
			}}
			s := newSweep(t, sweep.Config{Runners: []tool.Runner{r}, Steps: []int{1, 10, 50, 100, 250}})
			f, err := s.Run(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if len(f.Series) != 2 {
				t.Fatalf("%d series", len(f.Series))
			}
			g, b := f.Series[0], f.Series[1]
			if diff := cmp.Diff([]int{1, 10, 50, 100, 250}, concurrencies(g)); diff != "" || g.Stopped != "" {
				t.Errorf("good series: stopped %q, steps (-want +got):\n%s", g.Stopped, diff)
			}
			if diff := cmp.Diff(tc.wantBad, concurrencies(b)); diff != "" {
				t.Errorf("bad series steps (-want +got):\n%s", diff)
			}
			if b.Stopped != tc.wantReason {
				t.Errorf("stopped = %q, want %q", b.Stopped, tc.wantReason)
			}
			// Nothing ran for the stopped series after it stopped.
			var badCalls int
			for _, c := range r.Calls() {
				if strings.HasPrefix(c, bad) {
					badCalls++
				}
			}
			if badCalls != len(tc.wantBad) {
				t.Errorf("%d runs against the stopped target, want %d", badCalls, len(tc.wantBad))
			}
		})
	}
}

func TestInterleaved(t *testing.T) {
	a := &fakeRunner{name: "a", reply: func(string, int, int) outcome { return outcome{requests: 1, rps: 1} }}
	b := &fakeRunner{name: "b", reply: func(string, int, int) outcome { return outcome{requests: 1, rps: 1} }}
	var events []string
	s := newSweep(t, sweep.Config{
		Runners: []tool.Runner{a, b}, Steps: []int{10, 1},
		Progress: func(e sweep.Event) {
			events = append(events, fmt.Sprintf("%s/%s c=%d", e.Target, e.Tool, e.Step.Concurrency))
		},
	})
	f, err := s.Run(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"good/a c=1", "good/b c=1", "bad/a c=1", "bad/b c=1", "good/a c=10", "good/b c=10", "bad/a c=10", "bad/b c=10"}
	if diff := cmp.Diff(want, events); diff != "" {
		t.Errorf("run order (-want +got):\n%s", diff)
	}
	var labels []string
	for _, s := range f.Series {
		labels = append(labels, s.Target+"/"+s.Tool)
	}
	if diff := cmp.Diff([]string{"good/a", "good/b", "bad/a", "bad/b"}, labels); diff != "" {
		t.Errorf("series (-want +got):\n%s", diff)
	}
}

func TestConcurrencyLimit(t *testing.T) {
	r := &fakeRunner{name: "baton", max: 50, reply: func(string, int, int) outcome { return outcome{requests: 1, rps: 1} }}
	s := newSweep(t, sweep.Config{Runners: []tool.Runner{r}, Steps: []int{1, 50, 100, 500}, Targets: []sweep.Target{{Name: "t", URL: good}}})
	f, err := s.Run(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]int{1, 50}, concurrencies(f.Series[0])); diff != "" {
		t.Errorf("steps (-want +got):\n%s", diff)
	}
	if want := "steps above concurrency 50 skipped: baton cannot drive more connections"; f.Series[0].Stopped != want {
		t.Errorf("stopped %q, want %q", f.Series[0].Stopped, want)
	}
}

func TestRepeatMedian(t *testing.T) {
	rps := []float64{100, 300, 200}
	r := &fakeRunner{name: "fake", reply: func(_ string, _ int, call int) outcome {
		return outcome{requests: 1000, rps: rps[(call-1)%3]}
	}}
	dir := t.TempDir()
	s := newSweep(t, sweep.Config{Runners: []tool.Runner{r}, Steps: []int{5}, Repeat: 3, RawDir: dir, Targets: []sweep.Target{{Name: "t/1", URL: good}}})
	f, err := s.Run(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	st := f.Series[0].Steps[0]
	if st.RPS != 200 || st.Runs != 3 {
		t.Errorf("req/s %v runs %d, want the median 200 of 3", st.RPS, st.Runs)
	}
	if f.Settings.Repeat != 3 {
		t.Errorf("settings %+v", f.Settings)
	}
	for rep := 1; rep <= 3; rep++ {
		b, err := os.ReadFile(filepath.Join(dir, fmt.Sprintf("t_1_fake_c5_r%d.txt", rep)))
		if err != nil || string(b) != "raw c=5" {
			t.Errorf("raw output %d: %q, %v", rep, b, err)
		}
	}
}

func TestInterrupted(t *testing.T) {
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	r := &fakeRunner{name: "fake", reply: func(_ string, c, _ int) outcome {
		if c == 10 {
			cancel(errors.New("signal: interrupt"))
		}
		return outcome{requests: 1, rps: 1}
	}}
	s := newSweep(t, sweep.Config{Runners: []tool.Runner{r}, Steps: []int{1, 10, 100}})
	f, err := s.Run(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if f.Interrupted != "signal: interrupt" {
		t.Errorf("interrupted = %q", f.Interrupted)
	}
	// c=1 completed for both targets; the interrupted c=10 run is dropped.
	for _, s := range f.Series {
		if diff := cmp.Diff([]int{1}, concurrencies(s)); diff != "" {
			t.Errorf("%s steps (-want +got):\n%s", s.Target, diff)
		}
	}
	if n := len(r.Calls()); n != 3 {
		t.Errorf("%d runs, want 3", n)
	}
}

func TestNew(t *testing.T) {
	r := &fakeRunner{name: "fake"}
	ok := []sweep.Target{{Name: "a", URL: good}}
	tests := []struct {
		name string
		cfg  sweep.Config
		want string
	}{
		{"no targets", sweep.Config{Runners: []tool.Runner{r}}, "no targets"},
		{"no runners", sweep.Config{Targets: ok}, "no load tools"},
		{"unnamed", sweep.Config{Runners: []tool.Runner{r}, Targets: []sweep.Target{{URL: good}}}, "no name"},
		{"duplicate", sweep.Config{Runners: []tool.Runner{r}, Targets: []sweep.Target{{Name: "a", URL: good}, {Name: "a", URL: bad}}}, "used twice"},
		{"remote", sweep.Config{Runners: []tool.Runner{r}, Targets: []sweep.Target{{Name: "a", URL: "http://192.0.2.1/"}}}, "not on loopback"},
		{"zero step", sweep.Config{Runners: []tool.Runner{r}, Targets: ok, Steps: []int{0, 10}}, "concurrency"},
		{"huge step", sweep.Config{Runners: []tool.Runner{r}, Targets: ok, Steps: []int{1_000_000}}, "concurrency"},
		{"short", sweep.Config{Runners: []tool.Runner{r}, Targets: ok, Duration: 100 * time.Millisecond}, "duration"},
		{"long", sweep.Config{Runners: []tool.Runner{r}, Targets: ok, Duration: time.Hour}, "duration"},
		{"negative rate", sweep.Config{Runners: []tool.Runner{r}, Targets: ok, MaxFailRate: -1}, "MaxFailRate"},
		{"too many runs", sweep.Config{Runners: []tool.Runner{r}, Targets: ok, Repeat: 5000, Steps: []int{1, 2, 3}}, "runs"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := sweep.New(context.Background(), tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want it to contain %q", err, tc.want)
			}
		})
	}
	s, err := sweep.New(context.Background(), sweep.Config{Runners: []tool.Runner{r}, Targets: []sweep.Target{{Name: "a", URL: "https://203.0.113.9/"}}, AllowRemote: true})
	if err != nil {
		t.Fatalf("AllowRemote: %v", err)
	}
	if diff := cmp.Diff(sweep.DefaultSteps(), s.Steps()); diff != "" {
		t.Errorf("default steps (-want +got):\n%s", diff)
	}
}

func TestBound(t *testing.T) {
	b, err := tool.NewBombardier(tool.Config{Path: "/unused", Grace: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	s, err := sweep.New(context.Background(), sweep.Config{
		Runners: []tool.Runner{b}, Targets: []sweep.Target{{Name: "a", URL: good}, {Name: "b", URL: bad}},
		Steps: []int{1, 10}, Duration: 10 * time.Second, Timeout: time.Second, Repeat: 3, Pause: time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	// 2 steps × 3 runs × 2 targets × (10s + 5 × 1s + 10s grace + 1s pause).
	if got, want := s.Bound(), 12*26*time.Second; got != want {
		t.Errorf("Bound = %v, want %v", got, want)
	}
}

func TestStopReason(t *testing.T) {
	st := result.Step{Concurrency: 3, Requests: 1000, Errors: 20, Timeouts: nil}
	if got := sweep.StopReason(st, 0.01); got != "concurrency 3: 2.0% of 1000 requests failed (errors 20, timeouts unknown), above 1.0%" {
		t.Errorf("got %q", got)
	}
	if got := sweep.StopReason(st, 0.05); got != "" {
		t.Errorf("got %q, want no stop", got)
	}
}
