package main

import (
	"fmt"
	"image/color"
	"math"
	"slices"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/text"
	"gonum.org/v1/plot/vg"
)

// The proxy suite's overload scenario (issue 4): a wrk search for the
// concurrency where the quench proxy's req/s peaks (records named peak),
// then loadgen at that c_peak and at 4 × c_peak (records named overload,
// PeakC set) against the configurations below.
const (
	overloadSuite = "proxy"
	overloadName  = "overload"
	peakName      = "peak"
	// overloadFactor is how far past c_peak the overload runs go.
	overloadFactor = 4
	// overloadP99Factor bounds the served p99 at overload, as a multiple
	// of the p99 at c_peak; overloadRefusalMs bounds the 503s' p99.
	overloadP99Factor = 3
	overloadRefusalMs = 10
)

// overloadConfigs are the overload runs' configurations in report order;
// Target marks the two the issue's targets are computed for; Label names
// them in the tables and Short on the chart.
var overloadConfigs = []struct {
	Config, Label, Short string
	Target               bool
}{
	{"quench-limited", "quench, default limit; clients retry a 503 at once", "quench, limit, retry at once", true},
	{"quench-limited+retry-after", "quench, default limit; clients honour Retry-After", "quench, limit, honour Retry-After", true},
	{"quench-unlimited", "quench, no limit", "quench, no limit", false},
	{"nginx", "nginx (no limit)", "nginx", false},
}

// overloadLabel returns the table label of an overload config, or its
// short chart label.
func overloadLabel(cfg string, short bool) string {
	for _, o := range overloadConfigs {
		if o.Config == cfg {
			if short {
				return o.Short
			}
			return o.Label
		}
	}
	return cfg
}

// overloadOrder returns the suite's overload configs: the known ones in
// report order, then any others in first-seen order.
func (d *Data) overloadOrder(s string) []string {
	measured := d.measuredConfigs(s, overloadName)
	var out []string
	for _, o := range overloadConfigs {
		if slices.Contains(measured, o.Config) {
			out = append(out, o.Config)
		}
	}
	for _, c := range measured {
		if !slices.Contains(out, c) {
			out = append(out, c)
		}
	}
	return out
}

// overloadLevels returns c_peak and the overload concurrency of suite s:
// c_peak from the records' PeakC (else the lowest c measured), the
// overload c is overloadFactor × c_peak when measured, else the highest c
// above c_peak. Zero when not measured.
func (d *Data) overloadLevels(s string) (peak, over int) {
	cs := d.concs(s, overloadName)
	if len(cs) == 0 {
		return 0, 0
	}
	for k, p := range d.Points {
		if k.Suite == s && k.Name == overloadName {
			peak = max(peak, p.PeakC)
		}
	}
	if peak == 0 {
		peak = cs[0]
	}
	if slices.Contains(cs, overloadFactor*peak) {
		return peak, overloadFactor * peak
	}
	if last := cs[len(cs)-1]; last > peak {
		return peak, last
	}
	return peak, 0
}

// overloadTargets evaluates issue 4's overload targets for the default
// limit with both client behaviours.
func overloadTargets(d *Data) []Target {
	s := overloadSuite
	peak, over := d.overloadLevels(s)
	if peak == 0 || over == 0 {
		return []Target{{Issue: "4", Goal: fmt.Sprintf("overload at %d×c_peak (default limit): served p99 ≤ %d× the p99 at c_peak, 503s within %d ms, zero timeouts",
			overloadFactor, overloadP99Factor, overloadRefusalMs), Status: NotMeasured}}
	}
	var out []Target
	add := func(goal, measured string, st Status, detail string) {
		if st == NotMeasured {
			measured = ""
		}
		out = append(out, Target{"4", goal, measured, st, detail})
	}
	for _, o := range overloadConfigs {
		if !o.Target {
			continue
		}
		who := "overload, " + o.Label
		at := fmt.Sprintf("at %d×c_peak", overloadFactor)
		pp, po := d.get(s, o.Config, overloadName, peak), d.get(s, o.Config, overloadName, over)

		// Served p99 at overload against the p99 at peak load.
		goal := fmt.Sprintf("%s: served p99 %s ≤ %d× the p99 at c_peak", who, at, overloadP99Factor)
		switch {
		case pp == nil || po == nil:
			add(goal, "", NotMeasured, "")
		case known(po.RPS) && po.RPS == 0:
			add(goal, fmt.Sprintf("nothing served at c = %d", over), Missed, "no request served")
		default:
			r := ratio(po.P99, pp.P99)
			st, det := atMost(r, overloadP99Factor)
			add(goal, fmt.Sprintf("%s: %s at c = %d vs %s at c = %d", x(r), ms(po.P99), over, ms(pp.P99), peak), st, det)
		}

		// 503s answered quickly.
		goal = fmt.Sprintf("%s: 503s %s within %d ms (p99; p50 shown)", who, at, overloadRefusalMs)
		switch {
		case po == nil:
			add(goal, "", NotMeasured, "")
		case po.Refused == 0 && !known(po.RefP99):
			add(goal, fmt.Sprintf("no 503 at c = %d: every request was served", over), Info, "")
		default:
			st, det := atMost(po.RefP99, overloadRefusalMs)
			add(goal, fmt.Sprintf("p99 %s, p50 %s (%s refused per run, %s of responses)", ms(po.RefP99), ms(po.RefP50), num(po.Refused, 0), pct(po.RefusedShare)), st, det)
		}

		// No timeouts.
		goal = fmt.Sprintf("%s: zero timeouts %s", who, at)
		if po == nil {
			add(goal, "", NotMeasured, "")
			continue
		}
		st, det := Met, ""
		if po.Timeouts > 0 {
			st, det = Missed, fmt.Sprintf("%d timeouts", po.Timeouts)
		}
		add(goal, fmt.Sprintf("%d timeouts in %d run(s) at c = %d (transport errors %d, other statuses %d)", po.Timeouts, po.Runs, over, po.Errors, po.Other), st, det)
	}
	return out
}

// pct formats a share as a percentage.
func pct(v float64) string {
	if !known(v) {
		return "–"
	}
	return fmt.Sprintf("%.0f %%", v*100)
}

// writeOverload writes the suite's peak search and overload table.
func writeOverload(b *strings.Builder, d *Data, s string) {
	cfgs := d.overloadOrder(s)
	if len(cfgs) == 0 {
		return
	}
	peak, over := d.overloadLevels(s)
	fmt.Fprintf(b, "### Overload (loadgen; c_peak = %d, overload at c = %d)\n\n", peak, over)
	b.WriteString("internal/benchapps/loadgen is a closed-loop HTTP/1.1 client that keeps served (2xx) and refused (503) latencies apart; a request without a response in 2 s is a timeout. ")
	if pcs := d.measuredConfigs(s, peakName); len(pcs) > 0 {
		for _, cfg := range pcs {
			var lv []string
			for _, c := range d.concs(s, peakName) {
				if v := d.val(s, cfg, peakName, c, fRPS); known(v) {
					lv = append(lv, fmt.Sprintf("%d: %.1fk", c, v/1000))
				}
			}
			fmt.Fprintf(b, "c_peak is where a wrk search of %s (no limit) reaches its plateau: the lowest concurrency within 5 %% of the highest req/s, best of its rounds; req/s by c (median of rounds): %s. Each loadgen run loads its connections for 1 s before it records. ", cfg, strings.Join(lv, ", "))
		}
	}
	fmt.Fprintf(b, "Targets (issue 4): at %d×c_peak the served p99 stays within %d× the p99 at c_peak, 503s within %d ms, zero timeouts.\n\n",
		overloadFactor, overloadP99Factor, overloadRefusalMs)
	b.WriteString("| config | c | served req/s | served p50 / p99 ms | p99 ÷ p99 at c_peak | refused per run (share) | 503 p50 / p99 ms | timeouts / errors / other |\n")
	b.WriteString("|---|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, cfg := range cfgs {
		ref := d.val(s, cfg, overloadName, peak, fP99)
		for _, c := range d.concs(s, overloadName) {
			p := d.get(s, cfg, overloadName, c)
			if p == nil {
				continue
			}
			refused, lat := "0", "–"
			if p.Refused > 0 || known(p.RefP99) {
				refused = fmt.Sprintf("%s (%s)", num(p.Refused, 0), pct(p.RefusedShare))
				lat = num(p.RefP50, 2) + " / " + num(p.RefP99, 1)
			}
			fmt.Fprintf(b, "| %s | %d | %s | %s / %s | %s | %s | %s | %d / %d / %d |\n",
				overloadLabel(cfg, false), c, num(p.RPS, 0), num(p.P50, 2), num(p.P99, 1), x(ratio(p.P99, ref)), refused, lat, p.Timeouts, p.Errors, p.Other)
		}
	}
	b.WriteString("\n")
}

// writeOverloadChart draws, per overload config, the served p99 at c_peak
// and at overload and the 503s' p99 at overload, with the targets' ceilings
// (overloadP99Factor × the p99 at c_peak per config, overloadRefusalMs for
// all). It returns "" when the suite has no overload figures.
func writeOverloadChart(d *Data, s, path, title string) (string, error) {
	cfgs := d.overloadOrder(s)
	peak, over := d.overloadLevels(s)
	if len(cfgs) == 0 || over == 0 {
		return "", nil
	}
	series := []struct {
		label string
		c     int
		f     func(*Point) float64
	}{
		{fmt.Sprintf("served p99 at c_peak = %d", peak), peak, fP99},
		{fmt.Sprintf("served p99 at %d×c_peak = %d", overloadFactor, over), over, fP99},
		{fmt.Sprintf("503 p99 at %d×c_peak", overloadFactor), over, fRefP99},
	}
	pl := plot.New()
	pl.Title.Text = title + ": overload"
	pl.Y.Label.Text = "ms"
	pl.Legend.Top = true
	w := vg.Points(math.Min(36, 360/float64(len(cfgs)*len(series))))
	top := float64(overloadRefusalMs)
	for i, sr := range series {
		vals := make(plotter.Values, len(cfgs))
		labels := make([]string, len(cfgs))
		for j, cfg := range cfgs {
			labels[j] = "–"
			if v := d.val(s, cfg, overloadName, sr.c, sr.f); known(v) {
				vals[j] = v
				labels[j] = fmt.Sprintf("%.3g", v)
				top = math.Max(top, v)
			}
		}
		bars, err := addBarGroup(pl, vals, w, i, len(series), sr.label)
		if err != nil {
			return "", fmt.Errorf("report: overload chart: %w", err)
		}
		xys := make(plotter.XYs, len(cfgs))
		for j := range cfgs {
			xys[j] = plotter.XY{X: float64(j), Y: vals[j]}
		}
		lb, err := plotter.NewLabels(plotter.XYLabels{XYs: xys, Labels: labels})
		if err != nil {
			return "", fmt.Errorf("report: overload chart: %w", err)
		}
		for k := range lb.TextStyle {
			lb.TextStyle[k].XAlign, lb.TextStyle[k].YAlign = text.XCenter, text.YBottom
			lb.TextStyle[k].Font.Size = vg.Points(8)
		}
		lb.Offset = vg.Point{X: bars.Offset, Y: vg.Points(2)}
		pl.Add(lb)
	}
	dashed := func(l *plotter.Line, c color.Color) {
		l.LineStyle.Color, l.LineStyle.Width = c, vg.Points(1.5)
		l.LineStyle.Dashes = []vg.Length{vg.Points(5), vg.Points(3)}
	}
	red := color.RGBA{0xC0, 0x00, 0x00, 0xff}
	first := true
	for j, cfg := range cfgs {
		p := d.val(s, cfg, overloadName, peak, fP99)
		if !known(p) {
			continue
		}
		lim := overloadP99Factor * p
		top = math.Max(top, lim)
		l, err := plotter.NewLine(plotter.XYs{{X: float64(j) - 0.45, Y: lim}, {X: float64(j) + 0.45, Y: lim}})
		if err != nil {
			return "", fmt.Errorf("report: overload chart: %w", err)
		}
		dashed(l, red)
		pl.Add(l)
		if first {
			pl.Legend.Add(fmt.Sprintf("%d × p99 at c_peak (ceiling for served p99 at %d×)", overloadP99Factor, overloadFactor), l)
			first = false
		}
	}
	l, err := plotter.NewLine(plotter.XYs{{X: -0.5, Y: overloadRefusalMs}, {X: float64(len(cfgs)) - 0.5, Y: overloadRefusalMs}})
	if err != nil {
		return "", fmt.Errorf("report: overload chart: %w", err)
	}
	dashed(l, barColours[2])
	l.LineStyle.Dashes = []vg.Length{vg.Points(2), vg.Points(2)}
	pl.Add(l)
	pl.Legend.Add(fmt.Sprintf("%d ms (ceiling for 503 p99)", overloadRefusalMs), l)
	names := make([]string, len(cfgs))
	for j, c := range cfgs {
		names[j] = overloadLabel(c, true)
	}
	pl.NominalX(names...)
	pl.X.Tick.Label.Font.Size = vg.Points(8)
	pl.Y.Min = 0
	pl.Y.Max = top * 1.45 // room for the legend and labels
	if err := pl.Save(10*vg.Inch, 5*vg.Inch, path); err != nil {
		return "", fmt.Errorf("report: overload chart: %w", err)
	}
	return path, nil
}
