package tool_test

import (
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/quenchnet/quench/scripts/load/result"
	"github.com/quenchnet/quench/scripts/load/tool"
)

// numEqual treats NaN as equal to NaN and allows rounding differences.
var numEqual = cmp.Comparer(func(a, b result.Num) bool {
	x, y := float64(a), float64(b)
	if math.IsNaN(x) || math.IsNaN(y) {
		return math.IsNaN(x) && math.IsNaN(y)
	}
	return math.Abs(x-y) <= 1e-9*math.Max(math.Abs(x), math.Abs(y))
})

func readFixture(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func lat(mean, p50, p90, p99, max float64) result.Latency {
	return result.Latency{Mean: result.Num(mean), P50: result.Num(p50), P90: result.Num(p90), P99: result.Num(p99), Max: result.Num(max)}
}

const latNote = "bombardier's latencies include failed requests"

// The want values come from the recorded files in ../testdata (see
// TestRecord); re-recording changes them.
func TestParseBombardier(t *testing.T) {
	tests := []struct {
		file string
		want result.Step
	}{
		{"bombardier-ok.json", result.Step{
			Seconds: 0.997774028, Requests: 13283, OK: 13283, Timeouts: result.Int64(0),
			RPS: 13283 / 0.997774028, ToolRPS: 13336.229871589983,
			Latency: lat(0.7457200933524053, 0.610, 1.242, 2.744, 13.432),
			Codes:   result.Codes{C2xx: 13283},
		}},
		{"bombardier-5xx.json", result.Step{
			Seconds: 1.001365421, Requests: 17112, Errors: 17112, HTTPErrors: 17112, Timeouts: result.Int64(0),
			RPS: 0, ToolRPS: 17160.761149814327,
			Latency: lat(0.5809027582982702, 0.434, 0.976, 3.108, 52.420),
			Codes:   result.Codes{C5xx: 17112},
		}},
		{"bombardier-mixed.json", result.Step{
			Seconds: 0.999627534, Requests: 20242, OK: 18218, Errors: 2024, HTTPErrors: 2024, Timeouts: result.Int64(0),
			RPS: 18218 / 0.999627534, ToolRPS: 20389.318249477168,
			Latency: lat(0.4893318347989329, 0.406, 0.791, 2.076, 12.708),
			Codes:   result.Codes{C2xx: 18218, C5xx: 2024},
		}},
		{"bombardier-refused.json", result.Step{
			Seconds: 0.999554837, Requests: 44658, Errors: 44658, Timeouts: result.Int64(0),
			RPS: 0, ToolRPS: 44801.96839707929,
			Latency:      lat(0.2186880738053652, 0.153, 0.386, 1.237, 11.363),
			Codes:        result.Codes{Other: 44658},
			ErrorSamples: []result.ErrorCount{{Error: "dial tcp 127.0.0.1:34073: connect: connection refused", Count: 44658}},
			Notes:        []string{latNote},
		}},
		{"bombardier-timeout.json", result.Step{
			Seconds: 1.5084462379999999, Requests: 5, Timeouts: result.Int64(5),
			RPS: 0, ToolRPS: 0.19037628789011424,
			Latency:      lat(1506.4826, 1506.476, 1507.193, 1507.193, 1507.193),
			Codes:        result.Codes{Other: 5},
			ErrorSamples: []result.ErrorCount{{Error: "timeout", Count: 5}},
			Notes:        []string{latNote},
		}},
		{"bombardier-timeout-http1.json", result.Step{
			Seconds: 1.20649604, Requests: 20, Timeouts: result.Int64(20),
			RPS: 0, ToolRPS: 15.162012461220717,
			Latency: lat(300.96405, 300.751, 302.217, 303.026, 303.026),
			Codes:   result.Codes{Other: 20},
			ErrorSamples: []result.ErrorCount{{
				Error: `Get "http://127.0.0.1:34269/slow": context deadline exceeded (Client.Timeout exceeded while awaiting headers)`,
				Count: 20,
			}},
			Notes: []string{latNote},
		}},
		{"bombardier-intro.txt", result.Step{
			Seconds: 0.999564835, Requests: 18597, OK: 18597, Timeouts: result.Int64(0),
			RPS: 18597 / 0.999564835, ToolRPS: 18606.94879118631,
			Latency: lat(0.10571602946711835, 0.072, 0.182, 0.694, 5.831),
			Codes:   result.Codes{C2xx: 18597},
		}},
	}
	for _, tc := range tests {
		t.Run(tc.file, func(t *testing.T) {
			got, err := tool.ParseBombardier(readFixture(t, tc.file))
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got, numEqual); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestParseBombardierSynthetic(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want result.Step
	}{
		{
			// Go's %q writes \x.. and \a for odd bytes in error texts;
			// JSON has no such escapes.
			name: "go escapes",
			in: `{"spec":{"numberOfConnections":1},"result":{"timeTakenSeconds":2,"req2xx":3,"others":2,` +
				`"errors":[{"description":"bad \xff\a byte","count":2}]}}`,
			want: result.Step{
				Seconds: 2, Requests: 5, OK: 3, Errors: 2, Timeouts: result.Int64(0), RPS: 1.5, ToolRPS: result.Unknown,
				Latency: result.NoLatency(), Codes: result.Codes{C2xx: 3, Other: 2},
				ErrorSamples: []result.ErrorCount{{Error: "bad \u00ff\a byte", Count: 2}},
				Notes:        []string{latNote},
			},
		},
		{
			// Without -l there are no percentiles; they stay unknown.
			name: "no percentiles",
			in:   `{"spec":{},"result":{"timeTakenSeconds":1,"req2xx":10,"latency":{"mean":1500,"max":9000}}}`,
			want: result.Step{
				Seconds: 1, Requests: 10, OK: 10, Timeouts: result.Int64(0), RPS: 10, ToolRPS: result.Unknown,
				Latency: result.Latency{Mean: 1.5, P50: result.Unknown, P90: result.Unknown, P99: result.Unknown, Max: 9},
				Codes:   result.Codes{C2xx: 10},
			},
		},
		{
			// "others" beyond the reported errors are odd status codes.
			name: "odd status",
			in:   `{"spec":{},"result":{"timeTakenSeconds":1,"req2xx":8,"others":2}}`,
			want: result.Step{
				Seconds: 1, Requests: 10, OK: 8, Errors: 2, Timeouts: result.Int64(0), RPS: 8, ToolRPS: result.Unknown,
				Latency: result.NoLatency(), Codes: result.Codes{C2xx: 8, Other: 2},
				Notes: []string{"2 responses with a status outside 100-599 counted as errors"},
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tool.ParseBombardier([]byte(tc.in))
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got, numEqual); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestParseBombardierErrors(t *testing.T) {
	ok := string(readFixture(t, "bombardier-ok.json"))
	tests := []struct{ name, in, want string }{
		{"empty", "", "no JSON"},
		{"text only", "Bombarding http://x for 1s\n", "no JSON"},
		{"truncated (killed)", ok[:len(ok)/2], "parse JSON"},
		{"no result", `{"spec":{"numberOfConnections":1}}`, "no result"},
		{"zero time", `{"spec":{},"result":{"timeTakenSeconds":0}}`, "timeTakenSeconds"},
		{"negative count", `{"spec":{},"result":{"timeTakenSeconds":1,"req2xx":-1}}`, "out of range"},
		{"huge count", `{"spec":{},"result":{"timeTakenSeconds":1,"req2xx":9000000000000000000,"req5xx":9000000000000000000}}`, "out of range"},
		{"negative error count", `{"spec":{},"result":{"timeTakenSeconds":1,"errors":[{"description":"x","count":-4}]}}`, "out of range"},
		{"plain-text format", "Statistics        Avg      Stdev        Max\n  Reqs/sec  100\n", "no JSON"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tool.ParseBombardier([]byte(tc.in))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want it to contain %q", err, tc.want)
			}
		})
	}
}

const (
	batonTimedNote = "baton reports no latency in timed mode; timeouts unknown (no request timeout)"
	batonCountNote = "baton latencies: whole ms, successful requests only, first request per worker left out"
)

func TestParseBaton(t *testing.T) {
	noLat := result.NoLatency()
	tests := []struct {
		file string
		want result.Step
	}{
		{"baton-ok.txt", result.Step{
			Seconds: 1.003548851, Requests: 21079, OK: 21079,
			RPS: 21079 / 1.003548851, ToolRPS: 21004, Latency: noLat,
			Codes: result.Codes{C2xx: 21079}, Notes: []string{batonTimedNote},
		}},
		{"baton-5xx.txt", result.Step{
			Seconds: 1.013273214, Requests: 17985, Errors: 17985, HTTPErrors: 17985,
			RPS: 0, ToolRPS: 17749, Latency: noLat,
			Codes: result.Codes{C5xx: 17985}, Notes: []string{batonTimedNote},
		}},
		{"baton-mixed.txt", result.Step{
			Seconds: 1.00293, Requests: 15265, OK: 13739, Errors: 1526, HTTPErrors: 1526,
			RPS: 13739 / 1.00293, ToolRPS: 15220, Latency: noLat,
			Codes: result.Codes{C2xx: 13739, C5xx: 1526}, Notes: []string{batonTimedNote},
		}},
		{"baton-refused.txt", result.Step{
			Seconds: 1.006764383, Requests: 15616, Errors: 15616,
			RPS: 0, ToolRPS: 15511, Latency: noLat,
			ErrorSamples: []result.ErrorCount{{Error: "connection errors (baton does not say which)", Count: 15616}},
			Notes:        []string{batonTimedNote},
		}},
		{"baton-slow.txt", result.Step{
			Seconds: 1.425909666, Requests: 5, OK: 5,
			RPS: 5 / 1.425909666, ToolRPS: 4, Latency: noLat,
			Codes: result.Codes{C2xx: 5}, Notes: []string{batonTimedNote},
		}},
		{"baton-count.txt", result.Step{
			Seconds: 1.350436904, Requests: 20000, OK: 20000,
			RPS: 20000 / 1.350436904, ToolRPS: 14810,
			Latency: result.Latency{Mean: 0.28, P50: result.Unknown, P90: result.Unknown, P99: result.Unknown, Max: 334},
			Codes:   result.Codes{C2xx: 20000}, Notes: []string{batonCountNote},
		}},
	}
	for _, tc := range tests {
		t.Run(tc.file, func(t *testing.T) {
			got, err := tool.ParseBaton(readFixture(t, tc.file))
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got, numEqual); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestParseBatonErrors(t *testing.T) {
	ok := string(readFixture(t, "baton-ok.txt"))
	tests := []struct{ name, in, want string }{
		{"empty (killed)", "", "no results"},
		{"bad config", string(readFixture(t, "baton-badconfig.txt")), "invalid concurrency level"},
		{"log lines only", ok[:strings.Index(ok, "=====")], "no results"},
		{"truncated", ok[:strings.Index(ok, "Number of 3xx")], "incomplete"},
		{"inconsistent total", strings.Replace(ok, "21079\n", "21080\n", 1), "total 21080"},
		{"bad duration", strings.Replace(ok, "1.003548851s", "1.0x3s", 1), "line"},
		{"overflowing count", strings.Replace(ok, "21079\n", "99999999999999999999\n", 1), "line"},
		{"huge count", strings.Replace(ok, "21079\n", "9000000000000000000\n", 1), "out of range"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tool.ParseBaton([]byte(tc.in))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want it to contain %q", err, tc.want)
			}
		})
	}
}

func FuzzParseBombardier(f *testing.F) {
	for _, name := range []string{"bombardier-ok.json", "bombardier-refused.json", "bombardier-timeout.json", "bombardier-intro.txt"} {
		f.Add(readFixture(f, name))
	}
	f.Add([]byte(`{"spec":{},"result":{"timeTakenSeconds":1,"errors":[{"description":"\x41\U0001F600\v","count":1}]}}`))
	f.Fuzz(func(t *testing.T, in []byte) {
		st, err := tool.ParseBombardier(in)
		if err != nil {
			return
		}
		checkStep(t, st)
	})
}

func FuzzParseBaton(f *testing.F) {
	for _, name := range []string{"baton-ok.txt", "baton-refused.txt", "baton-count.txt", "baton-badconfig.txt"} {
		f.Add(readFixture(f, name))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		st, err := tool.ParseBaton(in)
		if err != nil {
			return
		}
		checkStep(t, st)
	})
}

// checkStep checks the invariants every parsed step keeps.
func checkStep(t *testing.T, st result.Step) {
	t.Helper()
	if st.Requests < 0 || st.OK < 0 || st.Errors < 0 || st.TimeoutCount() < 0 {
		t.Fatalf("negative count: %+v", st)
	}
	if st.Requests >= 0 && st.OK+st.Errors+st.TimeoutCount() != st.Requests && st.OK != 0 {
		t.Fatalf("ok %d + errors %d + timeouts %d != requests %d", st.OK, st.Errors, st.TimeoutCount(), st.Requests)
	}
	if !(st.Seconds > 0) {
		t.Fatalf("seconds %v", st.Seconds)
	}
}
