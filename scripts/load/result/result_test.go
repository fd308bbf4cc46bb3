package result_test

import (
	"bytes"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/quenchnet/quench/scripts/load/result"
)

var numEqual = cmp.Comparer(func(a, b result.Num) bool {
	x, y := float64(a), float64(b)
	if math.IsNaN(x) || math.IsNaN(y) {
		return math.IsNaN(x) && math.IsNaN(y)
	}
	return x == y
})

func sample(t testing.TB) *result.File {
	t.Helper()
	f, err := result.ReadJSONFile(filepath.Join("..", "testdata", "sample-results.json"))
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// edgeSeries has the values that are easy to lose in a round trip:
// unknown numbers, nil timeouts, a failed step, notes, a stop reason.
func edgeSeries() []result.Series {
	return []result.Series{
		{
			Target: "quench, tap", URL: "https://127.0.0.1:8443/a?b=c", Tool: "baton", ToolVersion: "v0.0.0-x",
			Stopped: "concurrency 500: 12.0% of 100 requests failed",
			Steps: []result.Step{
				{
					Concurrency: 10, Seconds: 10.5, Requests: 100, OK: 90, Errors: 10, HTTPErrors: 4,
					RPS: 90 / 10.5, ToolRPS: 10, Latency: result.Latency{Mean: 1.25, P50: result.Unknown, P90: result.Unknown, P99: result.Unknown, Max: 7},
					Codes: result.Codes{C2xx: 90, C4xx: 1, C5xx: 3}, Runs: 3, Command: `baton -u 'http://x/a b' -c 10 -t 10`,
					Notes: []string{"first, with comma", `second "quoted"`},
				},
				{
					Concurrency: 500, Failed: "tool: killed at its deadline", RPS: result.Unknown, ToolRPS: result.Unknown,
					Latency: result.NoLatency(),
				},
			},
		},
		{
			Target: "direct", URL: "http://127.0.0.1:1/", Tool: "bombardier",
			Steps: []result.Step{{
				Concurrency: 1, Seconds: 1, Requests: 5, OK: 3, Errors: 1, Timeouts: result.Int64(1),
				RPS: 3, ToolRPS: 4.5, Latency: result.Latency{Mean: 0.5, P50: 0.25, P90: 1, P99: 2, Max: 3},
				Codes: result.Codes{C2xx: 3, Other: 2},
			}},
		},
	}
}

func TestJSONRoundTrip(t *testing.T) {
	for name, f := range map[string]*result.File{
		"sample": sample(t),
		"edge": {
			Format: result.FormatV1, Started: time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC),
			Interrupted: "signal", Series: edgeSeries(),
		},
	} {
		t.Run(name, func(t *testing.T) {
			var buf bytes.Buffer
			if err := result.WriteJSON(&buf, f); err != nil {
				t.Fatal(err)
			}
			got, err := result.ReadJSON(&buf)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(f, got, numEqual); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestJSONUnknowns(t *testing.T) {
	var buf bytes.Buffer
	if err := result.WriteJSON(&buf, &result.File{Series: edgeSeries()}); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"p99": null`, `"timeouts": null`, `"format": "quench-load/v1"`} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("JSON lacks %s", want)
		}
	}
	// A latency object with fields missing reads them as unknown, not 0.
	in := `{"format":"quench-load/v1","series":[{"target":"a","tool":"b","steps":[{"concurrency":1,"latency_ms":{"p50":2}}]}]}`
	f, err := result.ReadJSON(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	want := result.Latency{Mean: result.Unknown, P50: 2, P90: result.Unknown, P99: result.Unknown, Max: result.Unknown}
	if diff := cmp.Diff(want, f.Series[0].Steps[0].Latency, numEqual); diff != "" {
		t.Errorf("latency (-want +got):\n%s", diff)
	}
}

func TestReadJSONErrors(t *testing.T) {
	tests := []struct{ name, in, want string }{
		{"not json", "hello", "read json"},
		{"other format", `{"format":"something/v2","series":[]}`, "format"},
		{"no format", `{"series":[]}`, "format"},
		{"trailing", `{"format":"quench-load/v1"} {}`, "trailing"},
		{"empty target", `{"format":"quench-load/v1","series":[{"tool":"x"}]}`, "empty target"},
		{"zero concurrency", `{"format":"quench-load/v1","series":[{"target":"a","tool":"x","steps":[{"concurrency":0}]}]}`, "concurrency 0"},
		{"negative", `{"format":"quench-load/v1","series":[{"target":"a","tool":"x","steps":[{"concurrency":1,"errors":-1}]}]}`, "negative"},
		{"bad number", `{"format":"quench-load/v1","series":[{"target":"a","tool":"x","steps":[{"concurrency":1,"rps":"fast"}]}]}`, "number"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := result.ReadJSON(strings.NewReader(tc.in))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want it to contain %q", err, tc.want)
			}
		})
	}
}

func TestCSVRoundTrip(t *testing.T) {
	for name, series := range map[string][]result.Series{"sample": sample(t).Series, "edge": edgeSeries()} {
		t.Run(name, func(t *testing.T) {
			var buf bytes.Buffer
			if err := result.WriteCSV(&buf, series); err != nil {
				t.Fatal(err)
			}
			got, err := result.ReadCSV(&buf)
			if err != nil {
				t.Fatal(err)
			}
			// CSV does not carry error samples.
			ignore := cmpopts.IgnoreFields(result.Step{}, "ErrorSamples")
			if diff := cmp.Diff(series, got, numEqual, ignore, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestCSVHeaderAndUnknowns(t *testing.T) {
	var buf bytes.Buffer
	if err := result.WriteCSV(&buf, edgeSeries()[:1]); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(buf.String(), "\n")
	if !strings.HasPrefix(lines[0], "target,url,tool,tool_version,concurrency,seconds,requests,ok,errors,http_errors,timeouts,error_rate,rps,") {
		t.Errorf("header %q", lines[0])
	}
	// Unknown timeouts and percentiles are empty cells.
	if !strings.Contains(lines[1], ",100,90,10,4,,0.1,") || !strings.Contains(lines[1], ",1.25,,,,7,") {
		t.Errorf("row %q", lines[1])
	}
}

func TestReadCSVErrors(t *testing.T) {
	tests := []struct{ name, in, want string }{
		{"empty", "", "header"},
		{"no target column", "tool,concurrency\nx,1\n", `"target"`},
		{"bad int", "target,tool,concurrency\na,b,many\n", "concurrency"},
		{"bad float", "target,tool,concurrency,rps\na,b,1,fast\n", "rps"},
		{"zero concurrency", "target,tool,concurrency\na,b,0\n", "concurrency 0"},
		{"ragged", "target,tool,concurrency\na,b\n", "wrong number of fields"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := result.ReadCSV(strings.NewReader(tc.in))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want it to contain %q", err, tc.want)
			}
		})
	}
}

func step(rps, p99 float64, requests, errors int64) result.Step {
	return result.Step{
		Concurrency: 10, Seconds: 10, Requests: requests, OK: requests - errors, Errors: errors, Timeouts: result.Int64(0),
		RPS: result.Num(rps), ToolRPS: result.Unknown,
		Latency: result.Latency{Mean: result.Unknown, P50: 1, P90: 2, P99: result.Num(p99), Max: result.Unknown},
	}
}

func TestMedianStep(t *testing.T) {
	failed := result.Step{Concurrency: 10, Failed: "killed", RPS: result.Unknown, ToolRPS: result.Unknown, Latency: result.NoLatency()}
	tests := []struct {
		name string
		in   []result.Step
		want result.Step
	}{
		{"one", []result.Step{step(100, 5, 1000, 1)}, step(100, 5, 1000, 1)},
		{
			"three",
			[]result.Step{step(100, 9, 1000, 0), step(300, 5, 3000, 30), step(200, 7, 2000, 2)},
			func() result.Step { s := step(200, 7, 2000, 2); s.Runs = 3; return s }(),
		},
		{
			"even count averages the middle two",
			[]result.Step{step(100, 4, 1000, 0), step(300, 8, 3000, 0)},
			func() result.Step { s := step(200, 6, 2000, 0); s.Runs = 2; return s }(),
		},
		{
			"failed runs left out",
			[]result.Step{step(100, 4, 1000, 0), failed, step(300, 8, 3000, 0)},
			func() result.Step {
				s := step(200, 6, 2000, 0)
				s.Runs = 2
				s.Notes = []string{"a repetition failed: killed"}
				return s
			}(),
		},
		{"all failed", []result.Step{failed, failed}, func() result.Step { s := failed; s.Runs = 2; return s }()},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := result.MedianStep(tc.in)
			if diff := cmp.Diff(tc.want, got, numEqual, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestMedianSeries(t *testing.T) {
	mk := func(target string, rps ...float64) result.Series {
		s := result.Series{Target: target, Tool: "bombardier"}
		for i, r := range rps {
			st := step(r, 1, 100, 0)
			st.Concurrency = []int{1, 10, 100}[i]
			s.Steps = append(s.Steps, st)
		}
		return s
	}
	stopped := mk("b", 5)
	stopped.Stopped = "errors"
	got := result.MedianSeries([]result.Series{mk("a", 1, 10, 100), mk("b", 3, 30), mk("a", 3, 30, 300), stopped, mk("a", 2, 20)})
	if len(got) != 2 || got[0].Target != "a" || got[1].Target != "b" {
		t.Fatalf("series %+v", got)
	}
	var rpsA []float64
	for _, st := range got[0].Steps {
		rpsA = append(rpsA, float64(st.RPS))
	}
	if diff := cmp.Diff([]float64{2, 20, 200}, rpsA); diff != "" {
		t.Errorf("a req/s (-want +got):\n%s", diff)
	}
	if got[1].Stopped != "errors" || len(got[1].Steps) != 2 || got[1].Steps[0].RPS != 4 {
		t.Errorf("b = %+v", got[1])
	}
}

func TestWriteMarkdown(t *testing.T) {
	mk := func(target string, rps, p99 float64, errors int64) result.Series {
		st := step(rps, p99, 1000, errors)
		return result.Series{Target: target, Tool: "bombardier", Steps: []result.Step{st}}
	}
	series := []result.Series{mk("direct", 40000, 2, 0), mk("quench", 30000, 3, 0), mk("peer", 10000, 20, 60)}
	series[2].Stopped = "too many errors"
	var buf bytes.Buffer
	if err := result.WriteMarkdown(&buf, series, result.MarkdownOptions{}); err != nil {
		t.Fatal(err)
	}
	want := `**Successful requests per second** (ratio to direct)

| concurrency | direct | quench | peer |
|--:|--:|--:|--:|
| 10 | 40,000 | 30,000 (0.75×) | 10,000 (0.25×) |

**p99 latency, ms** (ratio to direct)

| concurrency | direct | quench | peer |
|--:|--:|--:|--:|
| 10 | 2.00 | 3.00 (1.50×) | 20.0 (10.00×) |

| target | tool | concurrency | req/s | p50 ms | p90 ms | p99 ms | requests | errors | timeouts | failed |
|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|
| direct | bombardier | 10 | 40,000 | 1.00 | 2.00 | 2.00 | 1000 | 0 | 0 | 0 % |
| quench | bombardier | 10 | 30,000 | 1.00 | 2.00 | 3.00 | 1000 | 0 | 0 | 0 % |
| peer | bombardier | 10 | 10,000 | 1.00 | 2.00 | 20.0 | 1000 | 60 | 0 | 6.0 % |

- peer stopped early: too many errors
`
	if diff := cmp.Diff(want, buf.String()); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

func TestWriteMarkdownUnknownsAndBaseline(t *testing.T) {
	series := edgeSeries()
	var buf bytes.Buffer
	if err := result.WriteMarkdown(&buf, series, result.MarkdownOptions{Baseline: "direct"}); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	for _, want := range []string{
		"(ratio to direct)",
		"| concurrency | quench, tap · baton | direct · bombardier |",
		"| 10 | 9 | n/a |", // the baseline has no step 10: no ratio
		"| 500 | n/a | n/a |",
		"| quench, tap | baton | 500 | failed: tool: killed at its deadline |",
		"| quench, tap | baton | 10 | 9 | n/a | n/a | n/a | 100 | 10 | n/a | 10.0 % |",
		"| 1 | n/a | 3 |",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("markdown lacks %q:\n%s", want, out)
		}
	}
}

func TestFormatMs(t *testing.T) {
	for in, want := range map[float64]string{0.0641: "0.064", 1.234: "1.23", 12.34: "12.3", 209.4: "209", 1500: "1500"} {
		if got := result.FormatMs(in); got != want {
			t.Errorf("FormatMs(%v) = %q, want %q", in, got, want)
		}
	}
}

func FuzzReadJSON(f *testing.F) {
	b, err := os.ReadFile(filepath.Join("..", "testdata", "sample-results.json"))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b)
	f.Add([]byte(`{"format":"quench-load/v1","series":[{"target":"a","tool":"b","steps":[{"concurrency":1,"latency_ms":{"p50":null}}]}]}`))
	f.Fuzz(func(t *testing.T, in []byte) {
		file, err := result.ReadJSON(bytes.NewReader(in))
		if err != nil {
			return
		}
		var buf bytes.Buffer
		if err := result.WriteJSON(&buf, file); err != nil {
			t.Fatalf("write what was read: %v", err)
		}
		again, err := result.ReadJSON(&buf)
		if err != nil {
			t.Fatalf("read what was written: %v\n%s", err, buf.Bytes())
		}
		if diff := cmp.Diff(file, again, numEqual); diff != "" {
			t.Fatalf("round trip (-first +second):\n%s", diff)
		}
	})
}

func FuzzReadCSV(f *testing.F) {
	var buf bytes.Buffer
	if err := result.WriteCSV(&buf, edgeSeries()); err != nil {
		f.Fatal(err)
	}
	f.Add(buf.Bytes())
	f.Add([]byte("target,tool,concurrency,timeouts\na,b,1,\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		series, err := result.ReadCSV(bytes.NewReader(in))
		if err != nil {
			return
		}
		var out bytes.Buffer
		if err := result.WriteCSV(&out, series); err != nil {
			t.Fatalf("write what was read: %v", err)
		}
		if _, err := result.ReadCSV(&out); err != nil {
			t.Fatalf("read what was written: %v", err)
		}
	})
}

// Num must stay a JSON-compatible type: NaN and infinities become null.
func TestNumJSON(t *testing.T) {
	b, err := json.Marshal([]result.Num{1.5, result.Unknown, result.Num(math.Inf(1)), 0})
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != "[1.5,null,null,0]" {
		t.Errorf("got %s", b)
	}
}
