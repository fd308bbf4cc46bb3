package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

var update = flag.Bool("update", false, "rewrite testdata/golden.md")

func f64(v float64) *float64 { return &v }

func readTestdata(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestParseOutput(t *testing.T) {
	approx := cmpopts.EquateApprox(0, 1e-9)
	tests := []struct {
		file    string
		want    Record
		wantErr string // substring of Record.Error
	}{
		{file: "wrk-ok.txt", want: Record{Tool: "wrk", RPS: f64(43673.14), ToolRPS: f64(43673.14), Requests: 48037,
			P50Ms: f64(0.173), P90Ms: f64(1.48), P99Ms: f64(4.30)}},
		{file: "wrk-errors.txt", want: Record{Tool: "wrk", RPS: f64(17009.97 * (51200 - 1024) / 51200), ToolRPS: f64(17009.97),
			Requests: 51200, P50Ms: f64(45.12), P90Ms: f64(88.40), P99Ms: f64(1200), Errors: 16, Timeouts: 40, Non2xx: 1024}},
		{file: "wrk-refused.txt", wantErr: "unparsable output: unable to connect"},
		{file: "iperf3-ok.json", want: Record{Tool: "iperf3", Gbps: f64(12183485444.844667 / 1e9), Retransmits: new(int64(2))}},
		{file: "iperf3-refused.json", wantErr: "unable to connect to server"},
		{file: "loadgen-ok.txt", want: Record{Tool: "loadgen", RPS: f64(4659), ToolRPS: f64(33924), Requests: 4663 + 29293,
			P50Ms: f64(0.91), P99Ms: f64(5.79), Non2xx: 29293, Refused: 29293, RefusedP50Ms: f64(0.21), RefusedP99Ms: f64(1.95)}},
		// Nothing answered: no percentiles, the failures counted.
		{file: "loadgen-errors.txt", want: Record{Tool: "loadgen", RPS: f64(0), ToolRPS: f64(0), Timeouts: 17, Errors: 1007}},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			var got Record
			ParseOutput(&got, readTestdata(t, tt.file))
			if tt.wantErr != "" {
				if !strings.Contains(got.Error, tt.wantErr) {
					t.Fatalf("Error = %q, want it to contain %q", got.Error, tt.wantErr)
				}
				if got.RPS != nil || got.Gbps != nil {
					t.Fatalf("figures from a failed run: %+v", got)
				}
				return
			}
			if diff := cmp.Diff(tt.want, got, approx); diff != "" {
				t.Fatalf("ParseOutput (-want +got):\n%s", diff)
			}
		})
	}
}

func TestParseOutputOddInput(t *testing.T) {
	for _, in := range []string{"", "{", `{"end":{}}`, "Requests/sec: x", "   ",
		"c=1 secs=1 rps=5 ok=1", // loadgen line cut short
		"c=1 secs=1 rps=NaN ok=1 ok_rps=1 ok_p50=1 ok_p99=1 refused=0 refused_p50=0 refused_p99=0 other=0 timeouts=0 errors=0",
		"c=1 secs=1 rps=1 ok=9 ok_rps=9 ok_p50=1 ok_p99=1 refused=0 refused_p50=0 refused_p99=0 other=0 timeouts=0 errors=0", // served above all
		"c=1 secs=1 rps=9 ok=-1 ok_rps=1 ok_p50=1 ok_p99=1 refused=0 refused_p50=0 refused_p99=0 other=0 timeouts=0 errors=0",
	} {
		var r Record
		ParseOutput(&r, in)
		if r.Error == "" {
			t.Errorf("ParseOutput(%q): no error, record %+v", in, r)
		}
	}
}

func TestDurMs(t *testing.T) {
	tests := []struct {
		in   string
		want float64
		ok   bool
	}{
		{"812.00us", 0.812, true}, {"1.20ms", 1.2, true}, {"2.01s", 2010, true}, {"1.50m", 90000, true},
		{"abc", 0, false}, {"5h", 0, false},
	}
	for _, tt := range tests {
		got, ok := durMs(tt.in)
		if ok != tt.ok || math.Abs(got-tt.want) > 1e-9 {
			t.Errorf("durMs(%q) = %v, %v; want %v, %v", tt.in, got, ok, tt.want, tt.ok)
		}
	}
}

func TestMedianAndRatio(t *testing.T) {
	tests := []struct {
		in   []float64
		want float64
	}{
		{[]float64{3}, 3}, {[]float64{3, 1, 2}, 2}, {[]float64{4, 1, 3, 2}, 2.5}, {[]float64{5, 5, 1}, 5},
	}
	for _, tt := range tests {
		if got := median(tt.in); got != tt.want {
			t.Errorf("median(%v) = %v, want %v", tt.in, got, tt.want)
		}
	}
	if !math.IsNaN(median(nil)) {
		t.Error("median(nil) is not NaN")
	}
	for _, r := range []float64{ratio(1, 0), ratio(nan, 1), ratio(1, nan)} {
		if !math.IsNaN(r) {
			t.Errorf("ratio with unknown or zero operand = %v, want NaN", r)
		}
	}
	if got := ratio(3, 2); got != 1.5 {
		t.Errorf("ratio(3, 2) = %v", got)
	}
}

func TestReadRecordsOldShape(t *testing.T) {
	in := `{"name": "http_c100", "config": "peer:1500", "run": 2, "rps": 12.5}

{"name": "ingress", "config": "quench:65520", "run": 1, "gbps": 6.1, "host_cpu": 0.8}
`
	got, err := ReadRecords(strings.NewReader(in), "tunnel")
	if err != nil {
		t.Fatal(err)
	}
	want := []Record{
		{Suite: "tunnel", Config: "peer:1500", Name: "http", C: 100, Run: 2, RPS: f64(12.5)},
		{Suite: "tunnel", Config: "quench:65520", Name: "ingress", Run: 1, Gbps: f64(6.1), HostCPU: f64(0.8)},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("ReadRecords (-want +got):\n%s", diff)
	}
	if _, err := ReadRecords(strings.NewReader("{\"name\": 1}\n"), ""); err == nil {
		t.Fatal("ReadRecords accepted a bad line")
	}
}

func testData(t *testing.T) *Data {
	t.Helper()
	recs, err := ReadFiles([]string{"testdata/tunnel-old.jsonl", "testdata/run.jsonl", "testdata/overload.jsonl"})
	if err != nil {
		t.Fatal(err)
	}
	return Merge(recs)
}

func TestMerge(t *testing.T) {
	d := testData(t)
	p := d.get("proxy", "quench", "http", 100)
	if p == nil || p.Runs != 3 || p.RPS != 20000 || p.P99 != 10 {
		t.Fatalf("proxy quench c=100 = %+v, want 3 runs, median 20000 req/s, p99 10", p)
	}
	if p := d.get("ingress", "fastpath", "http", 1000); p == nil || len(p.Failed) != 1 || known(p.RPS) {
		t.Fatalf("failed point = %+v, want one failure and no figure", p)
	}
	if got, want := d.Suites, []string{"tunnel", "proxy", "enclave", "ingress"}; !cmp.Equal(got, want) {
		t.Fatalf("Suites = %v, want %v", got, want)
	}
	if len(d.Machines) != 2 || d.Invocations["proxy"][0] != `RUNS="3" scripts/bench/proxy.sh` {
		t.Fatalf("machines %v, invocations %v", d.Machines, d.Invocations)
	}
	if c, v := d.best("enclave", []string{"quench", "quench-fast"}, "http", 1000, fP99, true); c != "quench-fast" || v != 200 {
		t.Fatalf("lowest p99 = %s %v, want quench-fast 200", c, v)
	}
}

func TestTargets(t *testing.T) {
	type row struct {
		Issue, Goal, Measured string
		Status                Status
	}
	var got []row
	for _, tg := range Targets(testData(t)) {
		got = append(got, row{tg.Issue, tg.Goal, tg.Measured, tg.Status})
	}
	want := []row{
		{"2", "bulk host→enclave (published port) ≥ 2.5× the peer at its best MTU", "3.40×: 6.21 Gbit/s (quench:65520) vs 1.83 (peer:65520)", Met},
		{"2", "bulk enclave→host (published port, -R) ≥ 2.5× the peer at its best MTU", "2.45×: 5.67 Gbit/s (quench:65520) vs 2.32 (peer:65520)", Missed},
		{"2", "bulk enclave→host (egress NAT) ≥ 2.5× the peer at its best MTU", "2.37×: 5.73 Gbit/s (quench:65520) vs 2.41 (peer:65520)", Missed},
		{"2", "bulk host→enclave (egress NAT, -R) ≥ 2.5× the peer at its best MTU", "3.43×: 6.27 Gbit/s (quench:65520) vs 1.82 (peer:65520)", Met},
		{"2", "HTTP req/s at c = 100 ≥ 2× the peer's", "1.34×: 17325 (quench:65520) vs 12967 (peer:65520)", Missed},
		{"2", "p99 at c = 1000 no worse than the peer's", "293 ms (quench:65520) vs 430 ms (peer:1500)", Met},
		{"4", "c = 10: quench ratio to direct ≥ nginx's", "0.50× vs 0.40×", Met},
		{"4", "c = 10: quench ≥ 1.5× go-nitriding", "2.00× (15000 vs 7500 req/s)", Met},
		{"4", "c = 10: quench p99 ≤ nginx's", "10.0 ms vs 8.0 ms", Missed},
		{"4", "c = 100: quench ratio to direct ≥ nginx's", "0.50× vs 0.40×", Met},
		{"4", "c = 100: quench ≥ 1.5× go-nitriding", "2.00× (20000 vs 10000 req/s)", Met},
		{"4", "c = 100: quench p99 ≤ nginx's", "10.0 ms vs 8.0 ms", Missed},
		{"4", "overload, quench, default limit; clients retry a 503 at once: served p99 at 4×c_peak ≤ 3× the p99 at c_peak",
			"4.09×: 45.0 ms at c = 256 vs 11.0 ms at c = 64", Missed},
		{"4", "overload, quench, default limit; clients retry a 503 at once: 503s at 4×c_peak within 10 ms (p99; p50 shown)",
			"p99 16.0 ms, p50 4.8 ms (61000 refused per run, 80 % of responses)", Missed},
		{"4", "overload, quench, default limit; clients retry a 503 at once: zero timeouts at 4×c_peak",
			"0 timeouts in 3 run(s) at c = 256 (transport errors 0, other statuses 3)", Met},
		{"4", "overload, quench, default limit; clients honour Retry-After: served p99 at 4×c_peak ≤ 3× the p99 at c_peak",
			"2.50×: 25.0 ms at c = 256 vs 10.0 ms at c = 64", Met},
		{"4", "overload, quench, default limit; clients honour Retry-After: 503s at 4×c_peak within 10 ms (p99; p50 shown)",
			"p99 4.0 ms, p50 1.2 ms (1500 refused per run, 3 % of responses)", Met},
		{"4", "overload, quench, default limit; clients honour Retry-After: zero timeouts at 4×c_peak",
			"2 timeouts in 3 run(s) at c = 256 (transport errors 0, other statuses 0)", Missed},
		{"6", "full HTTPS path req/s at c = 100 ≥ 3× nitriding's (best quench path)", "3.60×: 9000 (quench-fast) vs 2500", Met},
		{"6", "full HTTPS path p99 at c = 1000 lower than nitriding's", "200 ms (quench-fast) vs 400 ms", Met},
		{"7", "fast path req/s at c = 100 ≥ 0.6× direct", "0.55×: 22000 vs 40000", Missed},
		{"7", "host memory per idle connection ≤ 1/4 of gvproxy's", "0.22×: 7.0 vs 32.0 KiB", Met},
		{"7", "fast path bulk vs a raw unix socket", "0.50×: 6.00 vs 12.00 Gbit/s", Info},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("Targets (-want +got):\n%s", diff)
	}
}

func TestTargetsWithoutData(t *testing.T) {
	for _, tg := range Targets(Merge(nil)) {
		if tg.Status != NotMeasured {
			t.Errorf("%s %q: status %v on no data, want not measured", tg.Issue, tg.Goal, tg.Status)
		}
	}
}

func TestAtLeastAtMost(t *testing.T) {
	tests := []struct {
		name       string
		st         Status
		det        string
		wantSt     Status
		wantDetail string
	}{
		{"at least met", first(atLeast(3, 2.5)), second(atLeast(3, 2.5)), Met, "+20 % margin"},
		{"at least missed", first(atLeast(2, 2.5)), second(atLeast(2, 2.5)), Missed, "by 20 % (2.00× of the 2.5× wanted)"},
		{"at most met", first(atMost(50, 100)), second(atMost(50, 100)), Met, "50 % below"},
		{"at most missed", first(atMost(125, 100)), second(atMost(125, 100)), Missed, "by 25 % (125 over 100)"},
		{"unknown", first(atLeast(nan, 1)), "", NotMeasured, ""},
	}
	for _, tt := range tests {
		if tt.st != tt.wantSt || tt.det != tt.wantDetail {
			t.Errorf("%s: %v %q, want %v %q", tt.name, tt.st, tt.det, tt.wantSt, tt.wantDetail)
		}
	}
}

func first(s Status, _ string) Status  { return s }
func second(_ Status, d string) string { return d }

func TestMarkdownGolden(t *testing.T) {
	d := testData(t)
	o := Options{Path: "out/BENCHMARKS.md", History: []string{"docs/bench/proxy.md"},
		Charts:  map[string][]string{"proxy": {"docs/bench/proxy-http.svg"}},
		GoBench: "testdata/gobench.txt", GoBenchText: readTestdata(t, "gobench.txt"),
		Raw: []string{"testdata/run.jsonl"}}
	var buf bytes.Buffer
	if err := WriteMarkdown(&buf, d, o); err != nil {
		t.Fatal(err)
	}
	golden := filepath.Join("testdata", "golden.md")
	if *update {
		if err := os.WriteFile(golden, buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want := readTestdata(t, "golden.md")
	if diff := cmp.Diff(want, buf.String()); diff != "" {
		t.Fatalf("Markdown differs from testdata/golden.md (go test -update rewrites it) (-want +got):\n%s", diff)
	}
	for _, s := range []string{
		"| 6 | full HTTPS path req/s at c = 100 ≥ 3× nitriding's (best quench path) | 3.60×: 9000 (quench-fast) vs 2500 | **met** +20 % margin |",
		"The machine was busy when this run started",
		"![proxy-http](../docs/bench/proxy-http.svg)",
		"| 100 | quench | 20000 | 0.50× | 1.25× |",
		"| tap | BenchmarkEncode-2 | 200 | 7100.0 | 0 | 0 |",
		"fastpath http c=1000: 1 of 1 runs failed",
	} {
		if !strings.Contains(buf.String(), s) {
			t.Errorf("Markdown lacks %q", s)
		}
	}
}

func TestCharts(t *testing.T) {
	d := testData(t)
	dir := t.TempDir()
	for _, tt := range []struct {
		suite string
		want  []string
	}{
		{"proxy", []string{"proxy-sweep.svg", "proxy-http.svg", "proxy-overload.svg"}},
		{"tunnel", []string{"tunnel-http.svg", "tunnel-bulk.svg"}},
		{"ingress", []string{"ingress-http.svg", "ingress-bulk.svg"}},
	} {
		paths, err := WriteCharts(d, tt.suite, dir, "")
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, p := range paths {
			names = append(names, filepath.Base(p))
			b, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			if len(b) < 1000 || !bytes.Contains(b, []byte("<svg")) {
				t.Errorf("%s: %d bytes, not an SVG chart", p, len(b))
			}
		}
		if !cmp.Equal(names, tt.want) {
			t.Errorf("%s charts = %v, want %v", tt.suite, names, tt.want)
		}
	}
}

func TestParseGoBench(t *testing.T) {
	rows := ParseGoBench(readTestdata(t, "gobench.txt"))
	if len(rows) != 2 {
		t.Fatalf("%d rows, want 2", len(rows))
	}
	r := rows[0]
	if r.Pkg != "github.com/quenchnet/quench/tap" || r.Name != "BenchmarkEncode-2" || median(r.Metrics["ns/op"]) != 200 || len(r.Metrics["allocs/op"]) != 3 {
		t.Fatalf("row 0 = %+v", r)
	}
	if rows[1].Pkg != "github.com/quenchnet/quench/proxy" || rows[1].Metrics["B/op"][0] != 1024 {
		t.Fatalf("row 1 = %+v", rows[1])
	}
}

// parseOne runs `report parse args` on testdata file in and returns the one
// record it must print.
func parseOne(t *testing.T, args []string, in string) Record {
	t.Helper()
	var out bytes.Buffer
	if err := run(append([]string{"parse"}, args...), strings.NewReader(readTestdata(t, in)), &out); err != nil {
		t.Fatal(err)
	}
	recs, err := ReadRecords(&out, "")
	if err != nil || len(recs) != 1 {
		t.Fatalf("records %v, err %v", recs, err)
	}
	return recs[0]
}

func TestRunParse(t *testing.T) {
	var out bytes.Buffer
	r := parseOne(t, []string{"-suite", "tunnel", "-config", "quench:65520", "-name", "http", "-c", "10", "-run", "2",
		"-cmd", "wrk ...", "-host", "100,150", "-encl", "10,30", "-wall", "1", "-hz", "100"}, "wrk-ok.txt")
	if r.Suite != "tunnel" || r.Config != "quench:65520" || r.C != 10 || r.Run != 2 || *r.HostCPU != 0.5 || *r.EnclCPU != 0.2 || *r.RPS != 43673.14 {
		t.Fatalf("record = %+v", r)
	}
	if err := run([]string{"parse", "-host", "1"}, strings.NewReader(""), &out); err == nil {
		t.Fatal("bad -host accepted")
	}
	if err := run([]string{"nope"}, nil, &out); err == nil {
		t.Fatal("unknown command accepted")
	}
}

func TestFromLoad(t *testing.T) {
	recs, err := FromLoad("testdata/load-sweep.json", "proxy", 1, "loadsweep ...")
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 12 {
		t.Fatalf("%d records, want 12", len(recs))
	}
	r := recs[1]
	if r.Suite != "proxy" || r.Config != "direct" || r.Name != "sweep" || r.C != 10 || r.Tool != "bombardier" || math.Abs(*r.RPS-35928.71014429009) > 1e-6 || *r.P99Ms != 1.744 {
		t.Fatalf("record 1 = %+v", r)
	}
	if recs[3].Config != "direct (baton)" || recs[3].P99Ms != nil {
		t.Fatalf("baton record = %+v", recs[3])
	}
}

func TestRunMarkdownWithCharts(t *testing.T) {
	dir := t.TempDir()
	md := filepath.Join(dir, "B.md")
	var out bytes.Buffer
	if err := run([]string{"md", "-o", md, "-charts", filepath.Join(dir, "charts"), "-quick", "testdata/run.jsonl"}, nil, &out); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(md)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"quick run", "![proxy-sweep](charts/proxy-sweep.svg)", "[run.jsonl]("} {
		if !strings.Contains(string(b), s) {
			t.Errorf("report lacks %q", s)
		}
	}
	if fi, err := os.Stat(filepath.Join(dir, "charts", "proxy-sweep.svg")); err != nil || fi.Size() == 0 {
		t.Fatalf("chart: %v", err)
	}
}

func TestMachineRecord(t *testing.T) {
	var out bytes.Buffer
	if err := run([]string{"machine", "-phase", "end", "-mode", "quick"}, nil, &out); err != nil {
		t.Fatal(err)
	}
	var r Record
	if err := json.Unmarshal(out.Bytes(), &r); err != nil {
		t.Fatal(err)
	}
	if r.Machine == nil || r.Machine.Phase != "end" || r.Machine.NProc < 1 || r.Machine.Kernel == "" {
		t.Fatalf("machine = %+v", r.Machine)
	}
}

func FuzzParseOutput(f *testing.F) {
	for _, name := range []string{"wrk-ok.txt", "wrk-errors.txt", "wrk-refused.txt", "iperf3-ok.json", "iperf3-refused.json", "loadgen-ok.txt", "loadgen-errors.txt"} {
		b, err := os.ReadFile(filepath.Join("testdata", name))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(string(b))
	}
	f.Fuzz(func(t *testing.T, in string) {
		var r Record
		ParseOutput(&r, in)
		if r.Error == "" && r.RPS == nil && r.Gbps == nil {
			t.Fatalf("no error and no figure for %q", in)
		}
		if r.RPS != nil && r.ToolRPS != nil && *r.RPS > *r.ToolRPS {
			t.Fatalf("successful req/s %v above the tool's %v", *r.RPS, *r.ToolRPS)
		}
		if r.Refused < 0 || r.Refused > r.Non2xx || r.Timeouts < 0 || r.Errors < 0 || r.Requests < 0 {
			t.Fatalf("impossible counts in %+v", r)
		}
	})
}

func FuzzReadRecords(f *testing.F) {
	f.Add(readTestdataF(f, "run.jsonl"))
	f.Add(`{"name":"http_c1x"}`)
	f.Fuzz(func(t *testing.T, in string) {
		recs, err := ReadRecords(strings.NewReader(in), "s")
		if err != nil {
			return
		}
		d := Merge(recs)
		var buf bytes.Buffer
		if err := WriteMarkdown(&buf, d, Options{}); err != nil {
			t.Fatal(err)
		}
	})
}

func readTestdataF(f *testing.F, name string) string {
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		f.Fatal(err)
	}
	return string(b)
}

func TestRunParseLoadgen(t *testing.T) {
	r := parseOne(t, []string{"-suite", "proxy", "-config", "quench-limited", "-name", "overload", "-c", "64", "-peak-c", "16",
		"-run", "1", "-cmd", "loadgen -c 64", "-host", "0,90", "-wall", "1", "-hz", "100"}, "loadgen-ok.txt")
	if r.Name != "overload" || r.C != 64 || r.PeakC != 16 || r.Tool != "loadgen" || r.Refused != 29293 || *r.RefusedP99Ms != 1.95 || *r.HostCPU != 0.9 {
		t.Fatalf("record = %+v", r)
	}
}

func TestOverloadMarkdown(t *testing.T) {
	var buf bytes.Buffer
	if err := WriteMarkdown(&buf, testData(t), Options{}); err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{
		"### Overload (loadgen; c_peak = 64, overload at c = 256)",
		"req/s by c (median of rounds): 16: 13.9k, 32: 15.9k, 64: 17.6k, 128: 16.9k, 256: 16.4k.",
		"| quench, default limit; clients retry a 503 at once | 64 | 15000 | 4.00 / 11.0 | 1.00× | 0 | – | 0 / 0 / 0 |",
		"| quench, default limit; clients retry a 503 at once | 256 | 5000 | 30.00 / 45.0 | 4.09× | 61000 (80 %) | 4.80 / 16.0 | 0 / 0 / 3 |",
		"| quench, default limit; clients honour Retry-After | 256 | 14000 | 8.00 / 25.0 | 2.50× | 1500 (3 %) | 1.20 / 4.0 | 2 / 0 / 0 |",
		"| nginx (no limit) | 256 | 16000 | 16.00 / 40.0 | 4.44× | 0 | – | 0 / 0 / 0 |",
		"loadgen -addr 127.0.0.1:PORT -c 256 -d 3s -timeout 2s -honor-retry-after",
	} {
		if !strings.Contains(buf.String(), s) {
			t.Errorf("Markdown lacks %q", s)
		}
	}
	// The peak search is not an http point: no extra rows in the wrk table.
	if strings.Contains(buf.String(), "| 16 | quench |") {
		t.Error("peak-search records leaked into the wrk table")
	}
}

// TestOverloadTargetsEdges covers what the testdata run does not: no 503s
// at all, nothing served, one variant missing, and PeakC absent.
func TestOverloadTargetsEdges(t *testing.T) {
	lg := func(cfg string, c, peak int, rps, p99 float64, refused int64, rp99 *float64) Record {
		return Record{Suite: "proxy", Config: cfg, Name: "overload", C: c, PeakC: peak, Run: 1, Tool: "loadgen",
			RPS: f64(rps), P99Ms: f64(p99), Requests: 1000, Refused: refused, Non2xx: refused, RefusedP99Ms: rp99}
	}
	type row struct {
		Goal   string
		Status Status
	}
	tests := []struct {
		name string
		recs []Record
		want []Status // per overload row: p99, 503s, timeouts (retry at once, then honour)
	}{
		{"no refusals", []Record{
			lg("quench-limited", 8, 8, 100, 10, 0, nil), lg("quench-limited", 32, 8, 100, 20, 0, nil),
			lg("quench-limited+retry-after", 8, 8, 100, 10, 0, nil), lg("quench-limited+retry-after", 32, 8, 100, 31, 10, f64(10.5)),
		}, []Status{Met, Info, Met, Missed, Missed, Met}},
		{"nothing served, honour missing", []Record{
			lg("quench-limited", 8, 8, 100, 10, 0, nil), lg("quench-limited", 32, 8, 0, 0, 900, f64(2)),
		}, []Status{Missed, Met, Met, NotMeasured, NotMeasured, NotMeasured}},
		{"no peak_c: lowest c is the peak", []Record{
			lg("quench-limited", 10, 0, 100, 10, 0, nil), lg("quench-limited", 40, 0, 100, 30, 5, f64(10)),
		}, []Status{Met, Met, Met, NotMeasured, NotMeasured, NotMeasured}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []Status
			for _, tg := range overloadTargets(Merge(tt.recs)) {
				got = append(got, tg.Status)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Fatalf("statuses (-want +got):\n%s", diff)
			}
		})
	}
	if ts := overloadTargets(Merge(nil)); len(ts) != 1 || ts[0].Status != NotMeasured {
		t.Fatalf("no data: %+v", ts)
	}
}

// TestTargetsFastPath: issue 2's published-port targets take the better of
// the tunnel and the fast path, egress only the tunnel, and the tunnel's
// own figures are kept as information.
func TestTargetsFastPath(t *testing.T) {
	rec := func(cfg, name string, c int, gbps, rps, p99 float64) Record {
		r := Record{Suite: "tunnel", Config: cfg, Name: name, C: c, Run: 1}
		if gbps > 0 {
			r.Gbps = f64(gbps)
		} else {
			r.RPS, r.P99Ms = f64(rps), f64(p99)
		}
		return r
	}
	var recs []Record
	for _, cfg := range []struct {
		name                  string
		in, rev, eg, rps, p99 float64
	}{{"quench:65520", 5, 3, 4, 12000, 250}, {"fastpath:65520", 4, 6, 9, 25000, 90}, {"peer:1500", 2, 2, 2, 10000, 500}} {
		recs = append(recs, rec(cfg.name, "ingress", 0, cfg.in, 0, 0), rec(cfg.name, "ingress_rev", 0, cfg.rev, 0, 0),
			rec(cfg.name, "http", 100, 0, cfg.rps, 0), rec(cfg.name, "http", 1000, 0, cfg.rps, cfg.p99))
		if cfg.name != "fastpath:65520" {
			recs = append(recs, rec(cfg.name, "egress", 0, cfg.eg, 0, 0))
		} else {
			// Not measured by the suite; were it there, egress must ignore it.
			recs = append(recs, rec(cfg.name, "egress", 0, 99, 0, 0))
		}
	}
	got := map[string]string{}
	for _, tg := range Targets(Merge(recs)) {
		if tg.Issue == "2" {
			got[tg.Goal] = tg.Measured
		}
	}
	for goal, want := range map[string]string{
		"bulk host→enclave (published port) ≥ 2.5× the peer at its best MTU":     "2.50×: 5.00 Gbit/s (quench:65520) vs 2.00 (peer:1500)",
		"bulk enclave→host (published port, -R) ≥ 2.5× the peer at its best MTU": "3.00×: 6.00 Gbit/s (fastpath:65520) vs 2.00 (peer:1500)",
		"bulk enclave→host (egress NAT) ≥ 2.5× the peer at its best MTU":         "2.00×: 4.00 Gbit/s (quench:65520) vs 2.00 (peer:1500)",
		"HTTP req/s at c = 100 ≥ 2× the peer's":                                  "2.50×: 25000 (fastpath:65520) vs 10000 (peer:1500)",
		"p99 at c = 1000 no worse than the peer's":                               "90.0 ms (fastpath:65520) vs 500 ms (peer:1500)",
		"frame tunnel alone: HTTP req/s at c = 100":                              "1.20× the peer: 12000 (quench:65520)",
		"frame tunnel alone: bulk enclave→host (published port, -R)":             "1.50× the peer: 3.00 Gbit/s (quench:65520)",
	} {
		if got[goal] != want {
			t.Errorf("%s: %q, want %q", goal, got[goal], want)
		}
	}
}

// The app on a unix socket is a row of its own: the targets compare paths
// whose app is reached the way the peer reaches it.
func TestTargetsUnixApp(t *testing.T) {
	rec := func(suite, cfg string, c int, rps float64) Record {
		return Record{Suite: suite, Config: cfg, Name: "http", C: c, Run: 1, RPS: f64(rps), P99Ms: f64(100)}
	}
	recs := []Record{
		rec("tunnel", "fastpath:65520", 100, 15000), rec("tunnel", "fastpath-unix:65520", 100, 18000),
		rec("tunnel", "peer:1500", 100, 10000),
		rec("enclave", "quench-fast", 100, 20000), rec("enclave", "quench-unix", 100, 31000),
		rec("enclave", "quench-go", 100, 40000), rec("enclave", "nitriding", 100, 10000),
	}
	got := map[string]Target{}
	for _, tg := range Targets(Merge(recs)) {
		got[tg.Goal] = tg
	}
	for goal, want := range map[string]Target{
		"HTTP req/s at c = 100 ≥ 2× the peer's":                                                       {Measured: "1.50×: 15000 (fastpath:65520) vs 10000 (peer:1500)", Status: Missed},
		"HTTP req/s at c = 100 with the app on a unix socket (the peer cannot)":                       {Measured: "1.80× the peer: 18000 (fastpath-unix:65520)", Status: Info},
		"full HTTPS path req/s at c = 100 ≥ 3× nitriding's (best quench path)":                        {Measured: "2.00×: 20000 (quench-fast) vs 10000", Status: Missed},
		"full HTTPS path req/s at c = 100, with the app on a unix socket (nitriding cannot)":          {Measured: "3.10× nitriding's: 31000 vs 10000", Status: Info},
		"full HTTPS path req/s at c = 100, a Go app importing enclave (handler in process, no proxy)": {Measured: "4.00× nitriding's: 40000 vs 10000", Status: Info},
	} {
		if g := got[goal]; g.Measured != want.Measured || g.Status != want.Status {
			t.Errorf("%s: %q (%v), want %q (%v)", goal, g.Measured, g.Status, want.Measured, want.Status)
		}
	}
}

func TestBusyAtStart(t *testing.T) {
	for _, tt := range []struct {
		load float64
		want bool
	}{
		{0.5, false}, // the end's load (the suites' own) does not count
		{2.0, false},
		{2.5, true},
	} {
		m := &Machine{NProc: 2, Load: [3]float64{tt.load, 0, 0}}
		if got := busyAtStart(m); got != tt.want {
			t.Errorf("busyAtStart(load %.1f on 2 CPUs) = %v, want %v", tt.load, got, tt.want)
		}
	}
}
