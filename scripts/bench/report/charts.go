package main

import (
	"fmt"
	"image/color"
	"math"
	"os"
	"path/filepath"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"

	"github.com/quenchnet/quench/scripts/load/chart"
	"github.com/quenchnet/quench/scripts/load/result"
)

// series converts a suite's points named name into load-chart series, one
// per config.
func (d *Data) series(s, name, tool string) []result.Series {
	var out []result.Series
	for _, cfg := range d.measuredConfigs(s, name) {
		sr := result.Series{Target: cfg, Tool: tool}
		for _, c := range d.concs(s, name) {
			p := d.get(s, cfg, name, c)
			if p == nil {
				continue
			}
			st := result.Step{Concurrency: c, RPS: result.Num(p.RPS), ToolRPS: result.Unknown, Latency: result.NoLatency()}
			st.Latency.P50, st.Latency.P90, st.Latency.P99 = result.Num(p.P50), result.Num(p.P90), result.Num(p.P99)
			if !known(p.RPS) {
				st.Failed = "no figures"
			}
			sr.Steps = append(sr.Steps, st)
		}
		if len(sr.Steps) > 0 {
			out = append(out, sr)
		}
	}
	return out
}

// WriteCharts draws the suite's charts into dir with the given file-name
// prefix and returns their paths: req/s and p99 against concurrency for
// wrk points and sweeps (every config on one chart), bulk bars, and the
// proxy overload scenario's latency bars.
func WriteCharts(d *Data, s, dir, prefix string) ([]string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("report: %w", err)
	}
	var out []string
	title := s
	if info, ok := suites[s]; ok {
		title = info.Title
	}
	for _, v := range []struct{ name, tool, suffix, sub string }{
		{"sweep", "bombardier", "sweep", "concurrency sweep, bombardier (scripts/load)"},
		{"http", "wrk", "http", "wrk, medians"},
	} {
		ser := d.series(s, v.name, v.tool)
		if len(ser) == 0 {
			continue
		}
		p := filepath.Join(dir, prefix+s+"-"+v.suffix+".svg")
		if err := chart.WriteFile(p, ser, chart.Options{Title: title, Subtitle: v.sub}); err != nil {
			return out, fmt.Errorf("report: chart %s: %w", p, err)
		}
		out = append(out, p)
	}
	if p, err := writeBulkChart(d, s, filepath.Join(dir, prefix+s+"-bulk.svg"), title); err != nil {
		return out, err
	} else if p != "" {
		out = append(out, p)
	}
	if p, err := writeOverloadChart(d, s, filepath.Join(dir, prefix+s+"-overload.svg"), title); err != nil {
		return out, err
	} else if p != "" {
		out = append(out, p)
	}
	return out, nil
}

var barColours = []color.Color{
	color.RGBA{0x00, 0x72, 0xB2, 0xff}, color.RGBA{0xD5, 0x5E, 0x00, 0xff}, color.RGBA{0x00, 0x9E, 0x73, 0xff},
	color.RGBA{0xCC, 0x79, 0xA7, 0xff}, color.RGBA{0xE6, 0x9F, 0x00, 0xff}, color.RGBA{0x56, 0xB4, 0xE9, 0xff},
	color.RGBA{0x00, 0x00, 0x00, 0xff},
}

// writeBulkChart draws grouped bars: one group per direction, one bar per
// config. It returns "" when the suite has no bulk figures.
func writeBulkChart(d *Data, s, path, title string) (string, error) {
	var dirs []string
	var labels []string
	for _, dir := range bulkDirs {
		if d.has(s, dir.Name) {
			dirs = append(dirs, dir.Name)
			labels = append(labels, dir.Label)
		}
	}
	if len(dirs) == 0 {
		return "", nil
	}
	var cfgs []string
	for _, c := range d.Configs[s] {
		for _, dir := range dirs {
			if p := d.get(s, c, dir, 0); p != nil && known(p.Gbps) {
				cfgs = append(cfgs, c)
				break
			}
		}
	}
	if len(cfgs) == 0 {
		return "", nil
	}
	pl := plot.New()
	pl.Title.Text = title + ": bulk throughput"
	pl.Y.Label.Text = "Gbit/s"
	pl.Legend.Top = true
	w := vg.Points(math.Min(28, 150/float64(len(cfgs))))
	top := 0.0
	for i, c := range cfgs {
		vals := make(plotter.Values, len(dirs))
		for j, dir := range dirs {
			if v := d.val(s, c, dir, 0, fGbps); known(v) {
				vals[j] = v
				top = math.Max(top, v)
			}
		}
		if _, err := addBarGroup(pl, vals, w, i, len(cfgs), c); err != nil {
			return "", fmt.Errorf("report: bulk chart: %w", err)
		}
	}
	pl.NominalX(labels...)
	pl.Y.Min = 0
	pl.Y.Max = top * 1.3 // room for the legend
	if err := pl.Save(10*vg.Inch, 4.5*vg.Inch, path); err != nil {
		return "", fmt.Errorf("report: bulk chart: %w", err)
	}
	return path, nil
}

// addBarGroup adds series i of n to a grouped bar chart, bars w wide, with
// its colour, offset and legend entry.
func addBarGroup(pl *plot.Plot, vals plotter.Values, w vg.Length, i, n int, label string) (*plotter.BarChart, error) {
	bars, err := plotter.NewBarChart(vals, w)
	if err != nil {
		return nil, err
	}
	bars.LineStyle.Width = 0
	bars.Color = barColours[i%len(barColours)]
	bars.Offset = w * vg.Length(float64(i)-float64(n-1)/2)
	pl.Add(bars)
	pl.Legend.Add(label, bars)
	return bars, nil
}
