package result

import (
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// csvHeader is the first row WriteCSV writes. error_rate is derived and
// ignored when reading.
var csvHeader = []string{
	"target", "url", "tool", "tool_version", "concurrency", "seconds",
	"requests", "ok", "errors", "http_errors", "timeouts", "error_rate",
	"rps", "tool_rps", "lat_mean_ms", "p50_ms", "p90_ms", "p99_ms", "lat_max_ms",
	"c1xx", "c2xx", "c3xx", "c4xx", "c5xx", "cother",
	"runs", "failed", "stopped", "command", "notes",
}

// notesSep joins Step.Notes in one CSV cell.
const notesSep = " | "

// WriteCSV writes one row per step, after a header row. Unknown values are
// empty cells. Error samples are not written.
func WriteCSV(w io.Writer, series []Series) error {
	cw := csv.NewWriter(w)
	if err := cw.Write(csvHeader); err != nil {
		return fmt.Errorf("result: write csv: %w", err)
	}
	for _, s := range series {
		for _, st := range s.Steps {
			timeouts := ""
			if st.Timeouts != nil {
				timeouts = strconv.FormatInt(*st.Timeouts, 10)
			}
			row := []string{
				s.Target, s.URL, s.Tool, s.ToolVersion,
				strconv.Itoa(st.Concurrency), fmtFloat(st.Seconds),
				i64(st.Requests), i64(st.OK), i64(st.Errors), i64(st.HTTPErrors), timeouts,
				fmtFloat(st.FailRate()),
				fmtNum(st.RPS), fmtNum(st.ToolRPS),
				fmtNum(st.Latency.Mean), fmtNum(st.Latency.P50), fmtNum(st.Latency.P90),
				fmtNum(st.Latency.P99), fmtNum(st.Latency.Max),
				i64(st.Codes.C1xx), i64(st.Codes.C2xx), i64(st.Codes.C3xx), i64(st.Codes.C4xx),
				i64(st.Codes.C5xx), i64(st.Codes.Other),
				strconv.Itoa(st.Runs), st.Failed, s.Stopped, st.Command,
				strings.Join(st.Notes, notesSep),
			}
			if err := cw.Write(row); err != nil {
				return fmt.Errorf("result: write csv: %w", err)
			}
		}
	}
	cw.Flush()
	if err := cw.Error(); err != nil {
		return fmt.Errorf("result: write csv: %w", err)
	}
	return nil
}

// ReadCSV reads rows written by WriteCSV back into series, in the order
// they first appear. Columns are found by header name, so columns may be
// reordered; unknown columns are ignored.
func ReadCSV(r io.Reader) ([]Series, error) {
	lr := &io.LimitedReader{R: r, N: MaxFileSize + 1}
	cr := csv.NewReader(lr)
	cr.ReuseRecord = false
	header, err := cr.Read()
	if err != nil {
		return nil, fmt.Errorf("result: read csv header: %w", err)
	}
	col := map[string]int{}
	for i, h := range header {
		col[strings.TrimSpace(h)] = i
	}
	for _, need := range []string{"target", "tool", "concurrency"} {
		if _, ok := col[need]; !ok {
			return nil, fmt.Errorf("result: read csv: no %q column", need)
		}
	}
	type key struct{ target, tool string }
	index := map[key]int{}
	var out []Series
	for line := 2; ; line++ {
		rec, err := cr.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			if lr.N <= 0 {
				return nil, fmt.Errorf("result: read csv: larger than %d bytes", MaxFileSize)
			}
			return nil, fmt.Errorf("result: read csv: %w", err)
		}
		p := rowParser{rec: rec, col: col}
		k := key{p.str("target"), p.str("tool")}
		i, ok := index[k]
		if !ok {
			i = len(out)
			index[k] = i
			out = append(out, Series{Target: k.target, Tool: k.tool, URL: p.str("url"), ToolVersion: p.str("tool_version")})
		}
		st := Step{
			Concurrency: int(p.int("concurrency")),
			Seconds:     float64(p.num("seconds")),
			Requests:    p.int("requests"),
			OK:          p.int("ok"),
			Errors:      p.int("errors"),
			HTTPErrors:  p.int("http_errors"),
			RPS:         p.num("rps"),
			ToolRPS:     p.num("tool_rps"),
			Latency: Latency{
				Mean: p.num("lat_mean_ms"), P50: p.num("p50_ms"), P90: p.num("p90_ms"),
				P99: p.num("p99_ms"), Max: p.num("lat_max_ms"),
			},
			Codes: Codes{
				C1xx: p.int("c1xx"), C2xx: p.int("c2xx"), C3xx: p.int("c3xx"),
				C4xx: p.int("c4xx"), C5xx: p.int("c5xx"), Other: p.int("cother"),
			},
			Runs:    int(p.int("runs")),
			Failed:  p.str("failed"),
			Command: p.str("command"),
		}
		if p.str("timeouts") != "" {
			st.Timeouts = Int64(p.int("timeouts"))
		}
		if n := p.str("notes"); n != "" {
			st.Notes = strings.Split(n, notesSep)
		}
		if p.err != nil {
			return nil, fmt.Errorf("result: read csv line %d: %w", line, p.err)
		}
		if s := p.str("stopped"); s != "" {
			out[i].Stopped = s
		}
		out[i].Steps = append(out[i].Steps, st)
	}
	if err := validate(out); err != nil {
		return nil, fmt.Errorf("result: read csv: %w", err)
	}
	return out, nil
}

type rowParser struct {
	rec []string
	col map[string]int
	err error
}

func (p *rowParser) str(name string) string {
	i, ok := p.col[name]
	if !ok || i >= len(p.rec) {
		return ""
	}
	return p.rec[i]
}

func (p *rowParser) int(name string) int64 {
	s := p.str(name)
	if s == "" {
		return 0
	}
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil && p.err == nil {
		p.err = fmt.Errorf("column %s: %w", name, err)
	}
	return v
}

func (p *rowParser) num(name string) Num {
	s := p.str(name)
	if s == "" {
		return Unknown
	}
	v, err := strconv.ParseFloat(s, 64)
	if err != nil && p.err == nil {
		p.err = fmt.Errorf("column %s: %w", name, err)
	}
	return Num(v)
}

func i64(v int64) string { return strconv.FormatInt(v, 10) }

func fmtFloat(f float64) string { return fmtNum(Num(f)) }

func fmtNum(n Num) string {
	if !n.Known() {
		return ""
	}
	return strconv.FormatFloat(float64(n), 'g', -1, 64)
}
