package sweep

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/quenchnet/quench/scripts/load/result"
	"github.com/quenchnet/quench/scripts/load/tool"
)

// DefaultSteps returns the default concurrency levels:
// 1, 10, 50, 100, 250, 500, 1000, 2000.
func DefaultSteps() []int { return []int{1, 10, 50, 100, 250, 500, 1000, 2000} }

// Limits that keep every sweep bounded.
const (
	// MaxConcurrency is the highest concurrency a step may ask for.
	MaxConcurrency = 100_000
	// MaxStepDuration is the longest a step may last.
	MaxStepDuration = 10 * time.Minute
	// MaxRuns bounds steps × repetitions × targets × tools.
	MaxRuns = 10_000
)

// Target is a URL to load and the name it has in results.
type Target struct {
	// Name labels the target in results and charts ("direct").
	Name string
	// URL is an http or https URL.
	URL string
}

// Config configures a Sweep.
type Config struct {
	// Targets are the URLs to load. Required; names must be unique.
	Targets []Target
	// Runners are the load tools; each target is loaded by each. Required.
	Runners []tool.Runner
	// Steps are the concurrency levels, run in increasing order.
	// Default: DefaultSteps().
	Steps []int
	// Duration is how long each run sends requests; at least 1s, at most
	// MaxStepDuration. Default: 10s.
	Duration time.Duration
	// Timeout is the per-request timeout given to tools that have one.
	// Default: 2s.
	Timeout time.Duration
	// MaxFailRate stops a series after a step whose (errors + timeouts) /
	// requests exceeds it. Default: 0.05. A value ≥ 1 never stops on errors.
	MaxFailRate float64
	// Repeat is the number of runs per step and series, merged by median.
	// Default: 1.
	Repeat int
	// Pause is the idle time after each run, letting connections drain.
	// Default: 1s; negative means none.
	Pause time.Duration
	// Insecure skips TLS certificate verification (self-signed enclave
	// certificates). Default: false.
	Insecure bool
	// AllowRemote permits targets outside loopback. Default: false, and
	// only loopback targets are accepted.
	AllowRemote bool
	// RawDir, when set, receives each run's tool output as a text file.
	// Default: none.
	RawDir string
	// NoFileLimit is recorded in the result settings. Default: 0 (unknown).
	NoFileLimit uint64
	// Progress, when set, is called after every run and whenever a series
	// stops, from the goroutine calling Run. Default: none.
	Progress func(Event)
	// Logger receives debug messages. Default: discard.
	Logger *slog.Logger
}

// EventKind says what an Event reports.
type EventKind int

// Event kinds.
const (
	// EventRun reports one finished run (Step, or Err if it failed).
	EventRun EventKind = iota
	// EventStop reports that a series stopped early (Reason).
	EventStop
)

// Event is passed to Config.Progress.
type Event struct {
	Kind   EventKind
	Target string
	Tool   string
	// Run counts from 1 to Runs (Config.Repeat).
	Run, Runs int
	Step      result.Step
	Err       error
	Reason    string
}

// Sweep is a validated sweep configuration.
type Sweep struct {
	cfg Config
}

// New validates cfg, including that every target is on loopback unless
// AllowRemote is set, and returns a Sweep. It starts nothing.
func New(ctx context.Context, cfg Config) (*Sweep, error) {
	if len(cfg.Targets) == 0 {
		return nil, errors.New("sweep: no targets")
	}
	if len(cfg.Runners) == 0 {
		return nil, errors.New("sweep: no load tools")
	}
	names := map[string]bool{}
	for _, t := range cfg.Targets {
		if t.Name == "" {
			return nil, fmt.Errorf("sweep: target %s has no name", t.URL)
		}
		if names[t.Name] {
			return nil, fmt.Errorf("sweep: target name %q used twice", t.Name)
		}
		names[t.Name] = true
		if err := CheckTarget(ctx, t.URL, cfg.AllowRemote); err != nil {
			return nil, err
		}
	}
	if len(cfg.Steps) == 0 {
		cfg.Steps = DefaultSteps()
	}
	cfg.Steps = slices.Clone(cfg.Steps)
	slices.Sort(cfg.Steps)
	cfg.Steps = slices.Compact(cfg.Steps)
	if cfg.Steps[0] < 1 || cfg.Steps[len(cfg.Steps)-1] > MaxConcurrency {
		return nil, fmt.Errorf("sweep: concurrency must be between 1 and %d", MaxConcurrency)
	}
	if cfg.Duration == 0 {
		cfg.Duration = 10 * time.Second
	}
	if cfg.Duration < time.Second || cfg.Duration > MaxStepDuration {
		return nil, fmt.Errorf("sweep: step duration %v outside [1s, %v]", cfg.Duration, MaxStepDuration)
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 2 * time.Second
	}
	if cfg.Timeout < 0 || cfg.Timeout > MaxStepDuration {
		return nil, fmt.Errorf("sweep: request timeout %v", cfg.Timeout)
	}
	if cfg.MaxFailRate == 0 {
		cfg.MaxFailRate = 0.05
	}
	if cfg.MaxFailRate < 0 {
		return nil, fmt.Errorf("sweep: negative MaxFailRate %v", cfg.MaxFailRate)
	}
	if cfg.Repeat == 0 {
		cfg.Repeat = 1
	}
	if cfg.Repeat < 0 {
		return nil, fmt.Errorf("sweep: negative Repeat %d", cfg.Repeat)
	}
	if cfg.Pause == 0 {
		cfg.Pause = time.Second
	}
	if cfg.Pause < 0 {
		cfg.Pause = 0
	}
	if n := len(cfg.Steps) * cfg.Repeat * len(cfg.Targets) * len(cfg.Runners); n > MaxRuns {
		return nil, fmt.Errorf("sweep: %d runs, more than %d", n, MaxRuns)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Sweep{cfg: cfg}, nil
}

// Steps returns the concurrency levels in the order they run.
func (s *Sweep) Steps() []int { return slices.Clone(s.cfg.Steps) }

// Deadliner is implemented by runners that know their hard deadline.
type Deadliner interface {
	Deadline(tool.Request) time.Duration
}

// Bound returns the longest the sweep can take if nothing stops early and
// every run lasts until its hard deadline.
func (s *Sweep) Bound() time.Duration {
	var total time.Duration
	for _, c := range s.cfg.Steps {
		req := s.request("", c)
		for _, r := range s.cfg.Runners {
			d := req.Duration + 5*req.Timeout + 10*time.Second
			if dl, ok := r.(Deadliner); ok {
				d = dl.Deadline(req)
			}
			total += time.Duration(s.cfg.Repeat*len(s.cfg.Targets)) * (d + s.cfg.Pause)
		}
	}
	return total
}

func (s *Sweep) request(url string, c int) tool.Request {
	return tool.Request{URL: url, Concurrency: c, Duration: s.cfg.Duration, Timeout: s.cfg.Timeout, Insecure: s.cfg.Insecure}
}

type versioner interface{ Version() string }

type seriesState struct {
	series  result.Series
	target  Target
	runner  tool.Runner
	stopped bool
}

// Run runs the sweep. When ctx ends first it returns the results so far
// with File.Interrupted set. It fails only if RawDir cannot be created.
func (s *Sweep) Run(ctx context.Context) (*result.File, error) {
	cfg := &s.cfg
	f := &result.File{
		Format:  result.FormatV1,
		Started: time.Now().UTC(),
		Machine: machine(),
		Settings: result.Settings{
			Steps:          slices.Clone(cfg.Steps),
			StepSeconds:    cfg.Duration.Seconds(),
			TimeoutSeconds: cfg.Timeout.Seconds(),
			MaxFailRate:    cfg.MaxFailRate,
			Repeat:         cfg.Repeat,
			NoFileLimit:    cfg.NoFileLimit,
		},
	}
	if cfg.RawDir != "" {
		if err := os.MkdirAll(cfg.RawDir, 0o755); err != nil {
			return nil, fmt.Errorf("sweep: %w", err)
		}
	}
	var states []*seriesState
	for _, t := range cfg.Targets {
		for _, r := range cfg.Runners {
			st := &seriesState{target: t, runner: r, series: result.Series{Target: t.Name, URL: t.URL, Tool: r.Name()}}
			if v, ok := r.(versioner); ok {
				st.series.ToolVersion = v.Version()
			}
			states = append(states, st)
		}
	}
	stop := func(st *seriesState, reason string) {
		st.stopped = true
		st.series.Stopped = reason
		cfg.Logger.Debug("series stopped", "target", st.target.Name, "tool", st.runner.Name(), "reason", reason)
		s.progress(Event{Kind: EventStop, Target: st.target.Name, Tool: st.runner.Name(), Reason: reason})
	}
	finish := func() (*result.File, error) {
		f.Finished = time.Now().UTC()
		for _, st := range states {
			f.Series = append(f.Series, st.series)
		}
		return f, nil
	}
	first := true
steps:
	for _, c := range cfg.Steps {
		for _, st := range states {
			if lim, ok := st.runner.(tool.ConcurrencyLimiter); ok && !st.stopped {
				if m := lim.MaxConcurrency(); m > 0 && c > m {
					stop(st, fmt.Sprintf("steps above concurrency %d skipped: %s cannot drive more connections", m, st.runner.Name()))
				}
			}
		}
		runs := map[*seriesState][]result.Step{}
		for rep := 1; rep <= cfg.Repeat; rep++ {
			for _, st := range states {
				if st.stopped {
					continue
				}
				if !first && cfg.Pause > 0 {
					select {
					case <-ctx.Done():
					case <-time.After(cfg.Pause):
					}
				}
				first = false
				if ctx.Err() != nil {
					f.Interrupted = interruption(ctx)
					break steps
				}
				out, err := st.runner.Run(ctx, s.request(st.target.URL, c))
				if cfg.RawDir != "" && len(out.Raw) > 0 {
					name := fmt.Sprintf("%s_%s_c%d_r%d.txt", fileSafe(st.target.Name), fileSafe(st.runner.Name()), c, rep)
					if werr := os.WriteFile(filepath.Join(cfg.RawDir, name), out.Raw, 0o644); werr != nil {
						cfg.Logger.Warn("raw tool output not saved", "err", werr)
					}
				}
				if ctx.Err() != nil {
					f.Interrupted = interruption(ctx)
					break steps
				}
				step := out.Step
				if err != nil {
					step = result.Step{
						Failed:  err.Error(),
						RPS:     result.Unknown,
						ToolRPS: result.Unknown,
						Latency: result.NoLatency(),
					}
				}
				step.Concurrency = c
				s.progress(Event{Kind: EventRun, Target: st.target.Name, Tool: st.runner.Name(), Run: rep, Runs: cfg.Repeat, Step: step, Err: err})
				runs[st] = append(runs[st], step)
			}
		}
		for _, st := range states {
			if len(runs[st]) == 0 {
				continue
			}
			m := result.MedianStep(runs[st])
			st.series.Steps = append(st.series.Steps, m)
			if reason := StopReason(m, cfg.MaxFailRate); reason != "" {
				stop(st, reason)
			}
		}
		if !slices.ContainsFunc(states, func(st *seriesState) bool { return !st.stopped }) {
			break
		}
	}
	return finish()
}

func (s *Sweep) progress(e Event) {
	if s.cfg.Progress != nil {
		s.cfg.Progress(e)
	}
}

// StopReason returns why a series must stop after step m, or "" to go on:
// the step failed, completed no request, or its (errors + timeouts) /
// requests exceeds maxFailRate.
func StopReason(m result.Step, maxFailRate float64) string {
	switch {
	case m.Failed != "":
		return fmt.Sprintf("concurrency %d failed: %s", m.Concurrency, m.Failed)
	case m.Requests == 0:
		return fmt.Sprintf("concurrency %d: no request completed", m.Concurrency)
	case m.FailRate() > maxFailRate:
		to := "unknown"
		if m.Timeouts != nil {
			to = fmt.Sprint(*m.Timeouts)
		}
		return fmt.Sprintf("concurrency %d: %.1f%% of %d requests failed (errors %d, timeouts %s), above %.1f%%",
			m.Concurrency, 100*m.FailRate(), m.Requests, m.Errors, to, 100*maxFailRate)
	}
	return ""
}

func interruption(ctx context.Context) string {
	if err := context.Cause(ctx); err != nil {
		return err.Error()
	}
	return "interrupted"
}

var unsafeChars = regexp.MustCompile(`[^A-Za-z0-9._-]+`)

func fileSafe(s string) string { return unsafeChars.ReplaceAllString(s, "_") }

func machine() result.Machine {
	m := result.Machine{OS: runtime.GOOS, Arch: runtime.GOARCH, CPUs: runtime.NumCPU(), GoVersion: runtime.Version()}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	return m
}
