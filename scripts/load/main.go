package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/quenchnet/quench/scripts/load/chart"
	"github.com/quenchnet/quench/scripts/load/result"
	"github.com/quenchnet/quench/scripts/load/sweep"
	"github.com/quenchnet/quench/scripts/load/tool"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// listFlag collects a repeatable flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

type options struct {
	targets     listFlag
	fromJSON    listFlag
	toolName    string
	steps       string
	duration    time.Duration
	timeout     time.Duration
	maxFail     string
	repeat      int
	pause       time.Duration
	insecure    bool
	allowRemote bool
	out         string
	name        string
	write       string
	title       string
	markdown    bool
	baseline    string
	median      bool
	bombardier  string
	baton       string
	toolsModule string
	batonMax    int
	grace       time.Duration
	maxTime     time.Duration
	verbose     bool
}

const usageHead = `Usage:
  go run ./load [flags] -target NAME=URL [-target NAME=URL ...]
  go run ./load [flags] URL ...
  go run ./load -from-json FILE [-from-json FILE ...] [-median] [output flags]

Sweeps concurrency against each target with bombardier and/or baton, stops
a series once failed requests exceed -max-fail, and writes NAME.json,
NAME.csv, NAME.md and a chart (NAME.png/.svg) into -out. Load goes only to
loopback (127.0.0.0/8, ::1, localhost) unless -allow-remote is given.

Flags:
`

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var o options
	fs := flag.NewFlagSet("load", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Var(&o.targets, "target", "target as `NAME=URL` (repeatable); a bare URL is named after its host and path")
	fs.Var(&o.fromJSON, "from-json", "render charts and tables from this result `file` instead of running load (repeatable)")
	fs.StringVar(&o.toolName, "tool", "bombardier", "load tool: bombardier, baton or both")
	fs.StringVar(&o.steps, "steps", "1,10,50,100,250,500,1000,2000", "concurrency levels, comma-separated")
	fs.DurationVar(&o.duration, "duration", 10*time.Second, "duration of each step (≥ 1s; baton rounds up to whole seconds)")
	fs.DurationVar(&o.timeout, "timeout", 2*time.Second, "per-request timeout (bombardier -t; baton has none)")
	fs.StringVar(&o.maxFail, "max-fail", "5%", "stop a series after a step where errors+timeouts exceed this share of requests (\"5%\" or 0.05)")
	fs.IntVar(&o.repeat, "repeat", 1, "runs per step, merged by median")
	fs.DurationVar(&o.pause, "pause", time.Second, "idle time after each run")
	fs.BoolVar(&o.insecure, "insecure", false, "skip TLS certificate verification (self-signed enclave certificates)")
	fs.BoolVar(&o.allowRemote, "allow-remote", false, "allow targets that are not on loopback (e.g. an enclave on EC2)")
	fs.StringVar(&o.out, "out", "", "output `directory` (default: load-YYYYMMDD-HHMMSS for a sweep, . for -from-json)")
	fs.StringVar(&o.name, "name", "load", "base name of the output files")
	fs.StringVar(&o.write, "write", "json,csv,md,png,raw", "outputs to write, comma-separated: json,csv,md,png,svg and raw (each tool run's output under raw/)")
	fs.StringVar(&o.title, "title", "", "chart title (default: \"HTTP load sweep\")")
	fs.BoolVar(&o.markdown, "markdown", false, "also print the Markdown tables on stdout")
	fs.StringVar(&o.baseline, "baseline", "", "target the Markdown comparison divides by (default: the first)")
	fs.BoolVar(&o.median, "median", false, "with -from-json: merge series with the same target and tool by per-step median")
	fs.StringVar(&o.bombardier, "bombardier", "", "bombardier binary (default: built from the tools module into the user cache)")
	fs.StringVar(&o.baton, "baton", "", "baton binary (default: built from the tools module into the user cache)")
	fs.StringVar(&o.toolsModule, "tools-module", "", "directory of the tools module to build the tools from (default: found from the working directory)")
	fs.IntVar(&o.batonMax, "baton-max-conc", 512, "skip baton steps above this concurrency (its client opens at most 512 connections per host); 0 = no limit")
	fs.DurationVar(&o.grace, "grace", 10*time.Second, "extra time before a tool that has not finished is killed")
	fs.DurationVar(&o.maxTime, "max-time", 2*time.Hour, "stop the whole sweep after this long and keep the results so far")
	fs.BoolVar(&o.verbose, "v", false, "verbose logging on stderr")
	fs.Usage = func() {
		fmt.Fprint(stderr, usageHead)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	level := slog.LevelWarn
	if o.verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	var err error
	if len(o.fromJSON) > 0 {
		if len(o.targets) > 0 || fs.NArg() > 0 {
			fmt.Fprintln(stderr, "load: -from-json renders existing results; it takes no targets")
			return 2
		}
		err = render(o, stdout)
	} else {
		err = sweepMain(ctx, o, fs.Args(), stdout, log)
	}
	if err != nil {
		fmt.Fprintf(stderr, "load: %v\n", err)
		return 1
	}
	return 0
}

func parseTargets(flags, positional []string) ([]sweep.Target, error) {
	var out []sweep.Target
	for _, t := range flags {
		name, u, ok := strings.Cut(t, "=")
		if !ok || strings.Contains(name, "/") {
			name, u = "", t
		}
		out = append(out, sweep.Target{Name: name, URL: u})
	}
	for _, u := range positional {
		out = append(out, sweep.Target{URL: u})
	}
	for i := range out {
		if out[i].Name == "" {
			pu, err := url.Parse(out[i].URL)
			if err != nil {
				return nil, fmt.Errorf("target %q: %w", out[i].URL, err)
			}
			out[i].Name = strings.TrimSuffix(pu.Host+pu.Path, "/")
		}
	}
	return out, nil
}

func parseSteps(s string) ([]int, error) {
	var out []int
	for f := range strings.SplitSeq(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		n, err := strconv.Atoi(f)
		if err != nil || n < 1 {
			return nil, fmt.Errorf("bad concurrency step %q", f)
		}
		out = append(out, n)
	}
	if len(out) == 0 {
		return nil, errors.New("no concurrency steps")
	}
	return out, nil
}

func parseRate(s string) (float64, error) {
	s = strings.TrimSpace(s)
	pct := strings.HasSuffix(s, "%")
	v, err := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(s, "%")), 64)
	if err != nil || v < 0 {
		return 0, fmt.Errorf("bad -max-fail %q", s)
	}
	if pct {
		v /= 100
	}
	if v == 0 {
		v = 1e-12 // stop at the first failed request
	}
	return v, nil
}

func parseWrite(s string) (map[string]bool, error) {
	out := map[string]bool{}
	for f := range strings.SplitSeq(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		if !slices.Contains([]string{"json", "csv", "md", "png", "svg", "raw"}, f) {
			return nil, fmt.Errorf("-write: unknown output %q", f)
		}
		out[f] = true
	}
	return out, nil
}

func sweepMain(ctx context.Context, o options, positional []string, stdout io.Writer, log *slog.Logger) error {
	targets, err := parseTargets(o.targets, positional)
	if err != nil {
		return err
	}
	if len(targets) == 0 {
		return errors.New("no targets: pass -target NAME=URL (see -help)")
	}
	steps, err := parseSteps(o.steps)
	if err != nil {
		return err
	}
	maxFail, err := parseRate(o.maxFail)
	if err != nil {
		return err
	}
	write, err := parseWrite(o.write)
	if err != nil {
		return err
	}
	var tools []string
	switch o.toolName {
	case "bombardier", "baton":
		tools = []string{o.toolName}
	case "both":
		tools = []string{"bombardier", "baton"}
	default:
		return fmt.Errorf("-tool %q: want bombardier, baton or both", o.toolName)
	}
	if o.out == "" {
		o.out = "load-" + time.Now().Format("20060102-150405")
	}
	cfg := sweep.Config{
		Targets:     targets,
		Steps:       steps,
		Duration:    o.duration,
		Timeout:     o.timeout,
		MaxFailRate: maxFail,
		Repeat:      o.repeat,
		Pause:       o.pause,
		Insecure:    o.insecure,
		AllowRemote: o.allowRemote,
		Logger:      log,
	}
	if o.pause == 0 {
		cfg.Pause = -1
	}
	if write["raw"] {
		cfg.RawDir = filepath.Join(o.out, "raw")
	}
	// Validate (loopback check included) before building anything.
	cfg.Runners = []tool.Runner{placeholder{}}
	if _, err := sweep.New(ctx, cfg); err != nil {
		return err
	}
	cfg.Runners = nil
	for _, name := range tools {
		r, err := newRunner(ctx, name, o, log, stdout)
		if err != nil {
			return err
		}
		cfg.Runners = append(cfg.Runners, r)
	}
	nf, err := sweep.RaiseNoFile(sweep.NeedNoFile(slices.Max(steps)))
	if err != nil {
		fmt.Fprintf(stdout, "warning: %v\n", err)
	} else {
		fmt.Fprintln(stdout, nf.Message)
		cfg.NoFileLimit = nf.NewSoft
	}
	width := 0
	for _, t := range targets {
		width = max(width, len(t.Name))
	}
	cfg.Progress = func(e sweep.Event) { printEvent(stdout, e, width) }
	sw, err := sweep.New(ctx, cfg)
	if err != nil {
		return err
	}
	bound := min(sw.Bound(), o.maxTime)
	fmt.Fprintf(stdout, "sweep: %d target(s) × %s, concurrency %v, %v per step, at most %v in all\n",
		len(targets), strings.Join(tools, "+"), sw.Steps(), o.duration, bound.Round(time.Second))
	for _, t := range targets {
		fmt.Fprintf(stdout, "  %s = %s\n", t.Name, t.URL)
	}
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return err
	}
	runCtx, cancel := context.WithTimeoutCause(ctx, o.maxTime, fmt.Errorf("sweep time limit -max-time %v reached", o.maxTime))
	defer cancel()
	f, err := sw.Run(runCtx)
	if err != nil {
		return err
	}
	if f.Interrupted != "" {
		fmt.Fprintf(stdout, "sweep interrupted (%s); writing the results so far\n", f.Interrupted)
	}
	return writeOutputs(f, o, write, stdout)
}

// placeholder stands in for the tools while the configuration is checked.
type placeholder struct{}

func (placeholder) Name() string { return "placeholder" }
func (placeholder) Run(context.Context, tool.Request) (tool.Output, error) {
	return tool.Output{}, errors.New("placeholder")
}

func newRunner(ctx context.Context, name string, o options, log *slog.Logger, stdout io.Writer) (tool.Runner, error) {
	path, pkg := o.bombardier, tool.BombardierPackage
	if name == "baton" {
		path, pkg = o.baton, tool.BatonPackage
	}
	if path == "" {
		var err error
		path, err = tool.Build(ctx, tool.BuildConfig{Package: pkg, ModuleDir: o.toolsModule, Logger: log})
		if err != nil {
			return nil, err
		}
	}
	version := tool.Version(path, pkg)
	fmt.Fprintf(stdout, "%s: %s %s\n", name, path, version)
	cfg := tool.Config{Path: path, Version: version, Grace: o.grace, Logger: log}
	if name == "baton" {
		cfg.MaxConcurrency = o.batonMax
		if o.batonMax == 0 {
			cfg.MaxConcurrency = -1
		}
		return tool.NewBaton(cfg)
	}
	return tool.NewBombardier(cfg)
}

func printEvent(w io.Writer, e sweep.Event, width int) {
	label := fmt.Sprintf("%-*s  %-10s", width, e.Target, e.Tool)
	switch e.Kind {
	case sweep.EventStop:
		fmt.Fprintf(w, "%s stopped: %s\n", label, e.Reason)
	case sweep.EventRun:
		run := ""
		if e.Runs > 1 {
			run = fmt.Sprintf(" run %d/%d", e.Run, e.Runs)
		}
		st := e.Step
		if e.Err != nil {
			fmt.Fprintf(w, "%s c=%-5d%s FAILED: %v\n", label, st.Concurrency, run, e.Err)
			return
		}
		timeouts := "n/a"
		if st.Timeouts != nil {
			timeouts = strconv.FormatInt(*st.Timeouts, 10)
		}
		fmt.Fprintf(w, "%s c=%-5d%s %9.0f req/s  p50 %s  p90 %s  p99 %s  errors %d  timeouts %s  (%d requests in %.1fs)\n",
			label, st.Concurrency, run, float64(st.RPS), ms(st.Latency.P50), ms(st.Latency.P90), ms(st.Latency.P99),
			st.Errors, timeouts, st.Requests, st.Seconds)
	}
}

func ms(n result.Num) string {
	if !n.Known() {
		return "n/a"
	}
	return result.FormatMs(float64(n)) + "ms"
}

func render(o options, stdout io.Writer) error {
	write, err := parseWrite(o.write)
	if err != nil {
		return err
	}
	if o.out == "" {
		o.out = "."
	}
	var files []*result.File
	for _, p := range o.fromJSON {
		f, err := result.ReadJSONFile(p)
		if err != nil {
			return err
		}
		files = append(files, f)
	}
	merged := *files[0]
	merged.Series = nil
	merged.Interrupted = ""
	for _, f := range files {
		merged.Series = append(merged.Series, f.Series...)
		merged.Started = minTime(merged.Started, f.Started)
		if f.Finished.After(merged.Finished) {
			merged.Finished = f.Finished
		}
	}
	if o.median {
		merged.Settings.Repeat *= len(files)
		merged.Series = result.MedianSeries(merged.Series)
	} else {
		dedupeLabels(merged.Series)
	}
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return err
	}
	return writeOutputs(&merged, o, write, stdout)
}

func minTime(a, b time.Time) time.Time {
	if a.IsZero() || (!b.IsZero() && b.Before(a)) {
		return b
	}
	return a
}

// dedupeLabels renames repeated target+tool pairs "name#2", "name#3", so
// each series stays distinct in tables and charts.
func dedupeLabels(series []result.Series) {
	seen := map[string]int{}
	for i := range series {
		k := series[i].Target + "\x00" + series[i].Tool
		seen[k]++
		if n := seen[k]; n > 1 {
			series[i].Target = fmt.Sprintf("%s#%d", series[i].Target, n)
		}
	}
}

func subtitle(f *result.File) string {
	var tools []string
	for _, s := range f.Series {
		t := s.Tool
		if s.ToolVersion != "" {
			t += " " + s.ToolVersion
		}
		if !slices.Contains(tools, t) {
			tools = append(tools, t)
		}
	}
	parts := []string{strings.Join(tools, ", ")}
	st := f.Settings
	if st.StepSeconds > 0 {
		parts = append(parts, fmt.Sprintf("%gs per step", st.StepSeconds))
	}
	if st.Repeat > 1 {
		parts = append(parts, fmt.Sprintf("median of %d", st.Repeat))
	}
	if st.TimeoutSeconds > 0 {
		parts = append(parts, fmt.Sprintf("request timeout %gs (bombardier)", st.TimeoutSeconds))
	}
	if st.MaxFailRate > 0 && st.MaxFailRate < 1 {
		parts = append(parts, fmt.Sprintf("series stop above %g%% failed", st.MaxFailRate*100))
	}
	m := f.Machine
	if m.OS != "" {
		parts = append(parts, fmt.Sprintf("client %s/%s, %d CPUs", m.OS, m.Arch, m.CPUs))
	}
	if !f.Started.IsZero() {
		parts = append(parts, f.Started.Format("2006-01-02"))
	}
	return strings.Join(parts, " · ")
}

func writeOutputs(f *result.File, o options, write map[string]bool, stdout io.Writer) error {
	base := filepath.Join(o.out, o.name)
	var wrote []string
	create := func(ext string, fn func(io.Writer) error) error {
		p := base + "." + ext
		fh, err := os.Create(p)
		if err != nil {
			return err
		}
		if err := fn(fh); err != nil {
			fh.Close()
			return err
		}
		if err := fh.Close(); err != nil {
			return err
		}
		wrote = append(wrote, p)
		return nil
	}
	if write["json"] {
		if err := create("json", func(w io.Writer) error { return result.WriteJSON(w, f) }); err != nil {
			return err
		}
	}
	if write["csv"] {
		if err := create("csv", func(w io.Writer) error { return result.WriteCSV(w, f.Series) }); err != nil {
			return err
		}
	}
	mdOpts := result.MarkdownOptions{Baseline: o.baseline}
	if write["md"] {
		if err := create("md", func(w io.Writer) error { return result.WriteMarkdown(w, f.Series, mdOpts) }); err != nil {
			return err
		}
	}
	copts := chart.Options{Title: o.title, Subtitle: subtitle(f), MaxFailRate: f.Settings.MaxFailRate}
	for _, ext := range []string{"png", "svg"} {
		if !write[ext] {
			continue
		}
		if err := chart.WriteFile(base+"."+ext, f.Series, copts); err != nil {
			return err
		}
		wrote = append(wrote, base+"."+ext)
	}
	if o.markdown {
		fmt.Fprintln(stdout)
		if err := result.WriteMarkdown(stdout, f.Series, mdOpts); err != nil {
			return err
		}
	}
	for _, p := range wrote {
		fmt.Fprintf(stdout, "wrote %s\n", p)
	}
	return nil
}
