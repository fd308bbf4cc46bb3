package main

import (
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
)

// benchLine is one benchmark result line's metrics by unit.
type benchRow struct {
	Pkg, Name string
	Metrics   map[string][]float64
}

// ParseGoBench reads `go test -bench` output (several packages, -count N)
// and returns the rows in first-seen order with every metric's values.
func ParseGoBench(text string) []*benchRow {
	var rows []*benchRow
	idx := map[string]*benchRow{}
	pkg := ""
	for line := range strings.SplitSeq(text, "\n") {
		if p, ok := strings.CutPrefix(line, "pkg: "); ok {
			pkg = strings.TrimSpace(p)
			continue
		}
		if !strings.HasPrefix(line, "Benchmark") {
			continue
		}
		f := strings.Fields(line)
		if len(f) < 4 || len(f)%2 != 0 {
			continue
		}
		if _, err := strconv.ParseInt(f[1], 10, 64); err != nil {
			continue
		}
		k := pkg + " " + f[0]
		r := idx[k]
		if r == nil {
			r = &benchRow{Pkg: pkg, Name: f[0], Metrics: map[string][]float64{}}
			idx[k] = r
			rows = append(rows, r)
		}
		for i := 2; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				continue
			}
			r.Metrics[f[i+1]] = append(r.Metrics[f[i+1]], v)
		}
	}
	return rows
}

func writeGoBench(b *strings.Builder, o Options) {
	rows := ParseGoBench(o.GoBenchText)
	b.WriteString("## Go micro-benchmarks\n\n")
	fmt.Fprintf(b, "`go test -run XXX -bench . -benchtime 200ms -count 3 -benchmem` (quick runs: 100ms, -count 1) on tap, proxy, internal/relay and attestation; medians. Raw output (benchstat input): [%s](%s).\n\n",
		filepath.Base(o.GoBench), rel(o.Path, o.GoBench))
	if len(rows) == 0 {
		b.WriteString("No benchmark lines in the output.\n\n")
		return
	}
	b.WriteString("| package | benchmark | ns/op | MB/s | B/op | allocs/op |\n|---|---|---:|---:|---:|---:|\n")
	for _, r := range rows {
		m := func(unit string, digits int) string {
			v := r.Metrics[unit]
			if len(v) == 0 {
				return "–"
			}
			return num(median(v), digits)
		}
		fmt.Fprintf(b, "| %s | %s | %s | %s | %s | %s |\n", strings.TrimPrefix(r.Pkg, "github.com/quenchnet/quench/"),
			r.Name, m("ns/op", 0), m("MB/s", 1), m("B/op", 0), m("allocs/op", 0))
	}
	b.WriteString("\n")
}
