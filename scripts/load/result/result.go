package result

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"sort"
	"strconv"
	"time"
)

// FormatV1 is the value of [File.Format] for files written by this package.
const FormatV1 = "quench-load/v1"

// Num is a measured value. NaN means unknown: the tool did not report it.
// It is written as JSON null and read back from null as NaN.
type Num float64

// Unknown is the Num for a value that was not measured.
var Unknown = Num(math.NaN())

// Known reports whether n holds a finite measured value.
func (n Num) Known() bool {
	f := float64(n)
	return !math.IsNaN(f) && !math.IsInf(f, 0)
}

// MarshalJSON writes n as a JSON number, or null when it is not Known.
func (n Num) MarshalJSON() ([]byte, error) {
	if !n.Known() {
		return []byte("null"), nil
	}
	return strconv.AppendFloat(nil, float64(n), 'g', -1, 64), nil
}

// UnmarshalJSON reads a JSON number, or null as NaN.
func (n *Num) UnmarshalJSON(b []byte) error {
	if bytes.Equal(bytes.TrimSpace(b), []byte("null")) {
		*n = Unknown
		return nil
	}
	var f float64
	if err := json.Unmarshal(b, &f); err != nil {
		return fmt.Errorf("result: number: %w", err)
	}
	*n = Num(f)
	return nil
}

// Latency is a latency summary in milliseconds. Fields a tool does not
// report are Unknown.
type Latency struct {
	Mean Num `json:"mean"`
	P50  Num `json:"p50"`
	P90  Num `json:"p90"`
	P99  Num `json:"p99"`
	Max  Num `json:"max"`
}

// NoLatency returns a Latency with every field Unknown.
func NoLatency() Latency {
	return Latency{Unknown, Unknown, Unknown, Unknown, Unknown}
}

// UnmarshalJSON reads a Latency; fields missing from the input are Unknown,
// not zero.
func (l *Latency) UnmarshalJSON(b []byte) error {
	type plain Latency
	v := plain(NoLatency())
	if err := json.Unmarshal(b, &v); err != nil {
		return fmt.Errorf("result: latency: %w", err)
	}
	*l = Latency(v)
	return nil
}

// Codes counts responses by HTTP status class. Other counts responses whose
// status is outside 100-599 (bombardier also counts failed requests there;
// the parsers move those into [Step.Errors]).
type Codes struct {
	C1xx  int64 `json:"1xx"`
	C2xx  int64 `json:"2xx"`
	C3xx  int64 `json:"3xx"`
	C4xx  int64 `json:"4xx"`
	C5xx  int64 `json:"5xx"`
	Other int64 `json:"other,omitempty"`
}

// ErrorCount is one transport error as the tool described it and how often
// it happened.
type ErrorCount struct {
	Error string `json:"error"`
	Count int64  `json:"count"`
}

// Step is the result of one load tool run at one concurrency level.
type Step struct {
	// Concurrency is the number of concurrent connections (bombardier -c,
	// baton -c).
	Concurrency int `json:"concurrency"`
	// Seconds is the time the tool measured for the run, which can exceed
	// the requested duration when requests were slow.
	Seconds float64 `json:"seconds"`
	// Requests counts every request the tool finished, failed or not.
	Requests int64 `json:"requests"`
	// OK counts requests answered with a 1xx, 2xx or 3xx status.
	OK int64 `json:"ok"`
	// Errors counts failed requests other than timeouts: transport errors
	// (connection refused, reset, ...) plus 4xx and 5xx responses.
	Errors int64 `json:"errors"`
	// HTTPErrors is the part of Errors that are 4xx/5xx responses.
	HTTPErrors int64 `json:"http_errors"`
	// Timeouts counts requests that timed out; nil when the tool cannot tell
	// them apart (baton has no request timeout and counts dial timeouts as
	// connection errors).
	Timeouts *int64 `json:"timeouts"`
	// RPS is OK divided by Seconds: successful requests per second.
	RPS Num `json:"rps"`
	// ToolRPS is the tool's own requests-per-second figure, failed requests
	// included (bombardier: mean of its 10 ms samples; baton: all requests
	// divided by time, rounded).
	ToolRPS Num `json:"tool_rps"`
	// Latency is the tool's latency summary in milliseconds.
	Latency Latency `json:"latency_ms"`
	// Codes counts responses by status class.
	Codes Codes `json:"codes"`
	// ErrorSamples lists the most frequent transport errors.
	ErrorSamples []ErrorCount `json:"error_samples,omitempty"`
	// Runs is the number of repetitions merged into this step by median;
	// 0 or 1 means one run.
	Runs int `json:"runs,omitempty"`
	// Command is the tool command line that produced the step.
	Command string `json:"command,omitempty"`
	// Failed says why the step produced no usable measurement (the tool
	// failed, was killed at its deadline, or printed nothing parsable).
	Failed string `json:"failed,omitempty"`
	// Notes are caveats about the figures.
	Notes []string `json:"notes,omitempty"`
}

// TimeoutCount returns the number of timeouts, or 0 when unknown.
func (s Step) TimeoutCount() int64 {
	if s.Timeouts == nil {
		return 0
	}
	return *s.Timeouts
}

// FailRate returns (Errors + Timeouts) / Requests, or NaN when the step
// has no requests.
func (s Step) FailRate() float64 {
	if s.Requests <= 0 {
		return math.NaN()
	}
	return float64(s.Errors+s.TimeoutCount()) / float64(s.Requests)
}

// Int64 returns a pointer to v, for [Step.Timeouts].
func Int64(v int64) *int64 { return &v }

// Series is one load tool's sweep against one target.
type Series struct {
	// Target is the short name of the target ("direct", "quench-tap").
	Target string `json:"target"`
	// URL is the URL the load was sent to.
	URL string `json:"url"`
	// Tool is the load tool: "bombardier" or "baton".
	Tool string `json:"tool"`
	// ToolVersion is the tool's module version when known ("v1.2.6").
	ToolVersion string `json:"tool_version,omitempty"`
	// Stopped says why the sweep stopped before its last step; empty when
	// every step ran.
	Stopped string `json:"stopped,omitempty"`
	// Steps are the results in order of increasing concurrency.
	Steps []Step `json:"steps"`
}

// Label returns "target" or, when withTool, "target · tool".
func (s Series) Label(withTool bool) string {
	if withTool {
		return s.Target + " · " + s.Tool
	}
	return s.Target
}

// Labels returns a display label for each series: target names alone when
// every series uses the same tool, "target · tool" otherwise.
func Labels(series []Series) []string {
	tools := map[string]bool{}
	for _, s := range series {
		tools[s.Tool] = true
	}
	out := make([]string, len(series))
	for i, s := range series {
		out[i] = s.Label(len(tools) > 1)
	}
	return out
}

// Machine describes where the load generator ran.
type Machine struct {
	OS        string `json:"os"`
	Arch      string `json:"arch"`
	CPUs      int    `json:"cpus"`
	Kernel    string `json:"kernel,omitempty"`
	GoVersion string `json:"go_version,omitempty"`
}

// Settings are the sweep parameters shared by every series in a file.
type Settings struct {
	// Steps are the concurrency levels requested.
	Steps []int `json:"steps"`
	// StepSeconds is the requested duration of each step.
	StepSeconds float64 `json:"step_seconds"`
	// TimeoutSeconds is the per-request timeout given to tools that take one.
	TimeoutSeconds float64 `json:"timeout_seconds"`
	// MaxFailRate is the (errors+timeouts)/requests ratio above which a
	// series stopped.
	MaxFailRate float64 `json:"max_fail_rate"`
	// Repeat is the number of runs per step merged by median.
	Repeat int `json:"repeat"`
	// NoFileLimit is the RLIMIT_NOFILE soft limit the tools ran with.
	NoFileLimit uint64 `json:"nofile_limit,omitempty"`
}

// File is one load run: what was measured, where and how.
type File struct {
	// Format is FormatV1.
	Format   string    `json:"format"`
	Started  time.Time `json:"started"`
	Finished time.Time `json:"finished"`
	Machine  Machine   `json:"machine"`
	Settings Settings  `json:"settings"`
	// Interrupted says why the run ended before it was complete (signal,
	// total time limit); empty otherwise.
	Interrupted string   `json:"interrupted,omitempty"`
	Series      []Series `json:"series"`
}

// MedianStep merges repetitions of one step: every number is the median of
// the runs that did not fail, Runs is their count, and notes and error
// samples are combined. If every run failed, the first run is returned with
// Runs set. steps must not be empty.
func MedianStep(steps []Step) Step {
	var ok []Step
	for _, s := range steps {
		if s.Failed == "" {
			ok = append(ok, s)
		}
	}
	if len(ok) == 0 {
		out := steps[0]
		out.Runs = len(steps)
		return out
	}
	if len(ok) == 1 && len(steps) == 1 {
		return ok[0]
	}
	out := ok[0]
	out.Runs = len(ok)
	f := func(get func(Step) float64) float64 {
		v := make([]float64, 0, len(ok))
		for _, s := range ok {
			if x := get(s); !math.IsNaN(x) {
				v = append(v, x)
			}
		}
		return median(v)
	}
	i := func(get func(Step) int64) int64 {
		return int64(math.Round(f(func(s Step) float64 { return float64(get(s)) })))
	}
	out.Seconds = f(func(s Step) float64 { return s.Seconds })
	out.Requests = i(func(s Step) int64 { return s.Requests })
	out.OK = i(func(s Step) int64 { return s.OK })
	out.Errors = i(func(s Step) int64 { return s.Errors })
	out.HTTPErrors = i(func(s Step) int64 { return s.HTTPErrors })
	if out.Timeouts != nil {
		out.Timeouts = Int64(i(func(s Step) int64 { return s.TimeoutCount() }))
	}
	out.RPS = Num(f(func(s Step) float64 { return float64(s.RPS) }))
	out.ToolRPS = Num(f(func(s Step) float64 { return float64(s.ToolRPS) }))
	out.Latency = Latency{
		Mean: Num(f(func(s Step) float64 { return float64(s.Latency.Mean) })),
		P50:  Num(f(func(s Step) float64 { return float64(s.Latency.P50) })),
		P90:  Num(f(func(s Step) float64 { return float64(s.Latency.P90) })),
		P99:  Num(f(func(s Step) float64 { return float64(s.Latency.P99) })),
		Max:  Num(f(func(s Step) float64 { return float64(s.Latency.Max) })),
	}
	out.Codes = Codes{
		C1xx:  i(func(s Step) int64 { return s.Codes.C1xx }),
		C2xx:  i(func(s Step) int64 { return s.Codes.C2xx }),
		C3xx:  i(func(s Step) int64 { return s.Codes.C3xx }),
		C4xx:  i(func(s Step) int64 { return s.Codes.C4xx }),
		C5xx:  i(func(s Step) int64 { return s.Codes.C5xx }),
		Other: i(func(s Step) int64 { return s.Codes.Other }),
	}
	counts := map[string]int64{}
	var notes []string
	for _, s := range steps {
		for _, e := range s.ErrorSamples {
			counts[e.Error] += e.Count
		}
		for _, n := range s.Notes {
			if !slices.Contains(notes, n) {
				notes = append(notes, n)
			}
		}
		if s.Failed != "" {
			n := "a repetition failed: " + s.Failed
			if !slices.Contains(notes, n) {
				notes = append(notes, n)
			}
		}
	}
	out.ErrorSamples = TopErrors(counts, 5)
	out.Notes = notes
	return out
}

// TopErrors returns at most n errors, most frequent first.
func TopErrors(counts map[string]int64, n int) []ErrorCount {
	if len(counts) == 0 {
		return nil
	}
	out := make([]ErrorCount, 0, len(counts))
	for e, c := range counts {
		out = append(out, ErrorCount{Error: e, Count: c})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Count != out[j].Count {
			return out[i].Count > out[j].Count
		}
		return out[i].Error < out[j].Error
	})
	if len(out) > n {
		out = out[:n]
	}
	return out
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return math.NaN()
	}
	v = slices.Clone(v)
	slices.Sort(v)
	m := len(v) / 2
	if len(v)%2 == 1 {
		return v[m]
	}
	return (v[m-1] + v[m]) / 2
}

// MedianSeries merges series with the same target and tool, typically the
// repetitions of a benchmark read from several files, into one series each:
// every step is the [MedianStep] of the steps with its concurrency. Series
// keep the order in which they first appear; steps are sorted by
// concurrency. A merged series is marked stopped if any input was.
func MedianSeries(in []Series) []Series {
	type key struct{ target, tool string }
	var order []key
	groups := map[key][]Series{}
	for _, s := range in {
		k := key{s.Target, s.Tool}
		if _, ok := groups[k]; !ok {
			order = append(order, k)
		}
		groups[k] = append(groups[k], s)
	}
	out := make([]Series, 0, len(order))
	for _, k := range order {
		g := groups[k]
		m := Series{Target: g[0].Target, URL: g[0].URL, Tool: g[0].Tool, ToolVersion: g[0].ToolVersion}
		byConc := map[int][]Step{}
		var concs []int
		for _, s := range g {
			if s.Stopped != "" && m.Stopped == "" {
				m.Stopped = s.Stopped
			}
			for _, st := range s.Steps {
				if _, ok := byConc[st.Concurrency]; !ok {
					concs = append(concs, st.Concurrency)
				}
				byConc[st.Concurrency] = append(byConc[st.Concurrency], st)
			}
		}
		slices.Sort(concs)
		for _, c := range concs {
			m.Steps = append(m.Steps, MedianStep(byConc[c]))
		}
		out = append(out, m)
	}
	return out
}
