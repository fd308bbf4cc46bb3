package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"strconv"
	"strings"
)

// Format names the JSON-lines schema every suite writes.
const Format = "quench-bench/v1"

// Record is one measurement: one tool run against one configuration, or a
// machine snapshot (Name "machine"). Pointer fields are nil when the tool
// did not report the value.
type Record struct {
	// Suite is the suite that measured: tunnel, userspace, ingress, proxy,
	// enclave, or "run" for machine snapshots.
	Suite string `json:"suite"`
	// Config is the thing measured: direct, quench:65520, peer:1500,
	// fastpath, nginx, nitriding, ...
	Config string `json:"config"`
	// Name is the measurement: http (wrk at C), sweep (bombardier step at
	// C), a bulk direction (ingress, ingress_rev, egress, egress_rev,
	// bulk), idle (idle-connection memory), peak (the proxy suite's wrk
	// search for the concurrency where req/s peaks), overload (loadgen at
	// PeakC or 4 × PeakC) or machine.
	Name string `json:"name"`
	// C is the client concurrency for http and sweep.
	C int `json:"c,omitempty"`
	// Run is the repetition, from 1; medians are taken over runs.
	Run int `json:"run"`
	// Tool is the tool that produced the figures (wrk, iperf3, bulk,
	// bombardier, python).
	Tool string `json:"tool,omitempty"`
	// Command is the exact command line.
	Command string `json:"command,omitempty"`

	// Gbps is bulk throughput in Gbit/s (received).
	Gbps *float64 `json:"gbps,omitempty"`
	// Retransmits is iperf3's sender retransmit count.
	Retransmits *int64 `json:"retransmits,omitempty"`

	// RPS is successful (non-error, 2xx/3xx) responses per second.
	RPS *float64 `json:"rps,omitempty"`
	// ToolRPS is the tool's own req/s figure, failed requests included.
	ToolRPS *float64 `json:"tool_rps,omitempty"`
	// Requests is the number of requests the tool completed.
	Requests int64 `json:"requests,omitempty"`
	// P50Ms, P90Ms and P99Ms are latency percentiles in milliseconds.
	P50Ms *float64 `json:"p50_ms,omitempty"`
	P90Ms *float64 `json:"p90_ms,omitempty"`
	P99Ms *float64 `json:"p99_ms,omitempty"`
	// Errors counts transport errors (connect, read, write); Timeouts the
	// timed-out requests; Non2xx the responses outside 2xx/3xx.
	Errors   int64 `json:"errors,omitempty"`
	Timeouts int64 `json:"timeouts,omitempty"`
	Non2xx   int64 `json:"non2xx,omitempty"`

	// Refused counts the 503 responses among Non2xx (loadgen keeps them
	// apart); RefusedP50Ms and RefusedP99Ms are their latency percentiles.
	// On loadgen records P50Ms and P99Ms are the served (2xx) requests'
	// alone, and RPS the served requests per second.
	Refused      int64    `json:"refused,omitempty"`
	RefusedP50Ms *float64 `json:"refused_p50_ms,omitempty"`
	RefusedP99Ms *float64 `json:"refused_p99_ms,omitempty"`
	// PeakC is, on overload records, the concurrency where the proxy's
	// req/s peaked in the same run; C is PeakC (peak load) or a multiple
	// of it (overload).
	PeakC int `json:"peak_c,omitempty"`

	// HostCPU and EnclCPU are the cores used during the run by the host
	// daemon (or the proxy) and by the enclave-side forwarder (or the app).
	HostCPU *float64 `json:"host_cpu,omitempty"`
	EnclCPU *float64 `json:"encl_cpu,omitempty"`

	// Conns, KBPerConn and Alive describe an idle-connection measurement:
	// host daemon RSS growth per idle connection, and whether the last
	// connection still worked.
	Conns     int      `json:"conns,omitempty"`
	KBPerConn *float64 `json:"kb_per_conn,omitempty"`
	Alive     *bool    `json:"alive,omitempty"`

	// Machine is set on machine snapshots.
	Machine *Machine `json:"machine,omitempty"`

	// Error says why the run produced no figures.
	Error string `json:"error,omitempty"`
}

// Machine describes the machine at one moment of a run.
type Machine struct {
	Phase     string     `json:"phase"` // start or end
	Time      string     `json:"time"`
	NProc     int        `json:"nproc"`
	CPUModel  string     `json:"cpu_model,omitempty"`
	MemGiB    float64    `json:"mem_gib,omitempty"`
	Kernel    string     `json:"kernel,omitempty"`
	GoVersion string     `json:"go_version,omitempty"`
	Load      [3]float64 `json:"load"`
	Mode      string     `json:"mode,omitempty"` // full or quick
}

// maxLine bounds one JSON line when reading.
const maxLine = 1 << 20

// ReadRecords reads JSON lines, skipping blank lines. A record without a
// suite takes defSuite. The old parse.py shape (name "http_cN") is read as
// name http, C N.
func ReadRecords(r io.Reader, defSuite string) ([]Record, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), maxLine)
	var out []Record
	line := 0
	for sc.Scan() {
		line++
		b := strings.TrimSpace(sc.Text())
		if b == "" {
			continue
		}
		var rec Record
		if err := json.Unmarshal([]byte(b), &rec); err != nil {
			return nil, fmt.Errorf("report: line %d: %w", line, err)
		}
		if rec.Suite == "" {
			rec.Suite = defSuite
		}
		if c, ok := strings.CutPrefix(rec.Name, "http_c"); ok {
			if n, err := strconv.Atoi(c); err == nil {
				rec.Name, rec.C = "http", n
			}
		}
		out = append(out, rec)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("report: read: %w", err)
	}
	return out, nil
}

// ReadFiles reads every file; a suite missing from a record is taken from
// the file name's first dash-separated word (tunnel-2026....jsonl).
func ReadFiles(paths []string) ([]Record, error) {
	var all []Record
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			return nil, fmt.Errorf("report: %w", err)
		}
		base := p[strings.LastIndex(p, "/")+1:]
		suite, _, _ := strings.Cut(strings.TrimSuffix(base, ".jsonl"), "-")
		recs, err := ReadRecords(f, suite)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("report: %s: %w", p, err)
		}
		all = append(all, recs...)
	}
	return all, nil
}

var (
	wrkRPS      = regexp.MustCompile(`Requests/sec:\s+([\d.]+)`)
	wrkReqs     = regexp.MustCompile(`(?m)^\s*(\d+) requests in `)
	wrkSockErr  = regexp.MustCompile(`Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)`)
	wrkNon2xx   = regexp.MustCompile(`Non-2xx or 3xx responses: (\d+)`)
	wrkDuration = regexp.MustCompile(`^([\d.]+)(us|ms|s|m)$`)
)

func wrkPercentile(p string) *regexp.Regexp {
	return regexp.MustCompile(`(?m)^\s+` + p + `(?:\.0+)?%\s+(\S+)`)
}

var wrkPct = map[string]*regexp.Regexp{"50": wrkPercentile("50"), "90": wrkPercentile("90"), "99": wrkPercentile("99")}

// durMs converts a wrk duration ("812.00us", "1.20ms", "2.01s") to ms.
func durMs(s string) (float64, bool) {
	m := wrkDuration.FindStringSubmatch(s)
	if m == nil {
		return 0, false
	}
	v, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		return 0, false
	}
	switch m[2] {
	case "us":
		return v / 1000, true
	case "s":
		return v * 1000, true
	case "m":
		return v * 60000, true
	}
	return v, true
}

func ptr[T any](v T) *T { return &v }

// ParseOutput fills rec's figures from one tool's output: iperf3 -J (or
// bulkcmd's and the ingress sender's iperf3-shaped JSON), loadgen's
// key=value line (internal/benchapps/loadgen) or wrk --latency. Output it
// cannot read sets rec.Error.
func ParseOutput(rec *Record, text string) {
	if strings.HasPrefix(strings.TrimSpace(text), "{") {
		parseIperf(rec, text)
		return
	}
	if line := loadgenLine.FindString(text); line != "" {
		parseLoadgen(rec, line)
		return
	}
	m := wrkRPS.FindStringSubmatch(text)
	if m == nil {
		rec.Error = "unparsable output: " + tail(text, 300)
		return
	}
	if rec.Tool == "" {
		rec.Tool = "wrk"
	}
	rps, _ := strconv.ParseFloat(m[1], 64)
	rec.ToolRPS = ptr(rps)
	for p, re := range wrkPct {
		if m := re.FindStringSubmatch(text); m != nil {
			if v, ok := durMs(m[1]); ok {
				switch p {
				case "50":
					rec.P50Ms = ptr(v)
				case "90":
					rec.P90Ms = ptr(v)
				case "99":
					rec.P99Ms = ptr(v)
				}
			}
		}
	}
	if m := wrkSockErr.FindStringSubmatch(text); m != nil {
		for _, s := range m[1:4] {
			n, _ := strconv.ParseInt(s, 10, 64)
			rec.Errors += n
		}
		rec.Timeouts, _ = strconv.ParseInt(m[4], 10, 64)
	}
	if m := wrkNon2xx.FindStringSubmatch(text); m != nil {
		rec.Non2xx, _ = strconv.ParseInt(m[1], 10, 64)
	}
	if m := wrkReqs.FindStringSubmatch(text); m != nil {
		rec.Requests, _ = strconv.ParseInt(m[1], 10, 64)
	}
	good := rps
	if rec.Requests > 0 && rec.Non2xx > 0 {
		good = rps * float64(rec.Requests-min(rec.Non2xx, rec.Requests)) / float64(rec.Requests)
	}
	rec.RPS = ptr(good)
}

// loadgenLine matches the result line of internal/benchapps/loadgen.
var loadgenLine = regexp.MustCompile(`(?m)^c=\d+ secs=\S+ rps=.*$`)

// loadgenKeys are the keys of loadgen's line the record needs.
var loadgenKeys = []string{"secs", "rps", "ok", "ok_rps", "ok_p50", "ok_p99", "refused", "refused_p50", "refused_p99", "other", "timeouts", "errors"}

// parseLoadgen reads loadgen's result line ("c=64 secs=3.0 rps=... ok=...
// ok_rps=... ok_p50=... ok_p99=... refused=... refused_p50=...
// refused_p99=... other=... timeouts=... errors=..."; latencies in ms).
// A percentile of a class with no response is left unset.
func parseLoadgen(rec *Record, line string) {
	kv := map[string]float64{}
	for f := range strings.FieldsSeq(line) {
		k, v, ok := strings.Cut(f, "=")
		if !ok {
			continue
		}
		x, err := strconv.ParseFloat(v, 64)
		if err != nil || !known(x) || x < 0 || x > 1e15 {
			rec.Error = fmt.Sprintf("loadgen: bad value %q", f)
			return
		}
		kv[k] = x
	}
	for _, k := range loadgenKeys {
		if _, ok := kv[k]; !ok {
			rec.Error = "loadgen: no " + k + " in " + tail(line, 300)
			return
		}
	}
	ok, refused, other := int64(kv["ok"]), int64(kv["refused"]), int64(kv["other"])
	if kv["ok_rps"] > kv["rps"] {
		rec.Error = "loadgen: ok_rps above rps in " + tail(line, 300)
		return
	}
	if rec.Tool == "" {
		rec.Tool = "loadgen"
	}
	rec.RPS, rec.ToolRPS = ptr(kv["ok_rps"]), ptr(kv["rps"])
	rec.Requests = ok + refused + other
	rec.Refused, rec.Non2xx = refused, refused+other
	rec.Timeouts, rec.Errors = int64(kv["timeouts"]), int64(kv["errors"])
	if ok > 0 {
		rec.P50Ms, rec.P99Ms = ptr(kv["ok_p50"]), ptr(kv["ok_p99"])
	}
	if refused > 0 {
		rec.RefusedP50Ms, rec.RefusedP99Ms = ptr(kv["refused_p50"]), ptr(kv["refused_p99"])
	}
}

func parseIperf(rec *Record, text string) {
	var j struct {
		Error string `json:"error"`
		End   *struct {
			SumReceived *struct {
				BPS float64 `json:"bits_per_second"`
			} `json:"sum_received"`
			SumSent *struct {
				Retransmits *int64 `json:"retransmits"`
			} `json:"sum_sent"`
		} `json:"end"`
	}
	// iperf3 may print more after the JSON object (e.g. a warning line).
	dec := json.NewDecoder(strings.NewReader(text))
	if err := dec.Decode(&j); err != nil {
		rec.Error = "unparsable iperf3 output: " + err.Error()
		return
	}
	switch {
	case j.Error != "":
		rec.Error = j.Error
	case j.End == nil || j.End.SumReceived == nil:
		rec.Error = "iperf3 output without end.sum_received"
	default:
		rec.Gbps = ptr(j.End.SumReceived.BPS / 1e9)
		if j.End.SumSent != nil {
			rec.Retransmits = j.End.SumSent.Retransmits
		}
		if rec.Tool == "" {
			rec.Tool = "iperf3"
		}
	}
}

func tail(s string, n int) string {
	s = strings.TrimSpace(s)
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// cpuCores converts two tick counts over wall seconds into cores.
func cpuCores(ticks0, ticks1, hz, wall float64) *float64 {
	if wall <= 0 || hz <= 0 || ticks1 < ticks0 {
		return nil
	}
	return ptr((ticks1 - ticks0) / hz / wall)
}

// parseTicks reads "T0,T1".
func parseTicks(s string) (float64, float64, error) {
	a, b, ok := strings.Cut(s, ",")
	if !ok {
		return 0, 0, errors.New("want T0,T1")
	}
	x, err1 := strconv.ParseFloat(strings.TrimSpace(a), 64)
	y, err2 := strconv.ParseFloat(strings.TrimSpace(b), 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, 0, err
	}
	return x, y, nil
}
