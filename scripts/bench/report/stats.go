package main

import (
	"math"
	"slices"
)

// key identifies one measured point; its runs are merged by median.
type key struct {
	Suite, Config, Name string
	C                   int
}

// Point is the median of one key's runs. A field is NaN when no run
// reported it.
type Point struct {
	Runs                  int
	Gbps, RPS             float64
	P50, P90, P99         float64
	HostCPU, EnclCPU      float64
	KBPerConn             float64
	Errors, Timeouts, Bad int64 // sums over runs; Bad = non-2xx
	// Refused is the median count of 503 responses per run and
	// RefusedShare their median share of all responses; RefP50 and RefP99
	// their latency (loadgen records). Other sums the non-2xx responses
	// that were not 503s over runs.
	Refused, RefusedShare float64
	RefP50, RefP99        float64
	Other                 int64
	// PeakC is the highest PeakC of the runs (overload records).
	PeakC    int
	Failed   []string
	Alive    bool
	Commands []string
}

// Data is a run's records merged into medians.
type Data struct {
	Points   map[key]*Point
	Configs  map[string][]string // suite -> configs in first-seen order
	Suites   []string            // in first-seen order
	Machines []Machine
	Runs     map[string]int // suite -> highest run number
	Commands map[string][]string
	// Invocations are the suite command lines (records named invocation).
	Invocations map[string][]string
}

// median returns the median of v, NaN for none.
func median(v []float64) float64 {
	if len(v) == 0 {
		return math.NaN()
	}
	s := slices.Clone(v)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// ratio returns a/b, NaN when either is unknown or b is 0.
func ratio(a, b float64) float64 {
	if math.IsNaN(a) || math.IsNaN(b) || b == 0 {
		return math.NaN()
	}
	return a / b
}

func known(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) }

// Merge groups records by (suite, config, name, c) and takes medians.
func Merge(recs []Record) *Data {
	d := &Data{Points: map[key]*Point{}, Configs: map[string][]string{}, Runs: map[string]int{}, Commands: map[string][]string{}, Invocations: map[string][]string{}}
	type acc struct {
		gbps, rps, p50, p90, p99, hc, ec, kb []float64
		refused, share, rp50, rp99           []float64
	}
	accs := map[key]*acc{}
	for _, r := range recs {
		if r.Machine != nil {
			d.Machines = append(d.Machines, *r.Machine)
			continue
		}
		if r.Name == "invocation" {
			if !slices.Contains(d.Invocations[r.Suite], r.Command) {
				d.Invocations[r.Suite] = append(d.Invocations[r.Suite], r.Command)
			}
			if !slices.Contains(d.Suites, r.Suite) {
				d.Suites = append(d.Suites, r.Suite)
			}
			continue
		}
		if !slices.Contains(d.Suites, r.Suite) {
			d.Suites = append(d.Suites, r.Suite)
		}
		if !slices.Contains(d.Configs[r.Suite], r.Config) {
			d.Configs[r.Suite] = append(d.Configs[r.Suite], r.Config)
		}
		d.Runs[r.Suite] = max(d.Runs[r.Suite], r.Run)
		if r.Command != "" && !slices.Contains(d.Commands[r.Suite], r.Command) {
			d.Commands[r.Suite] = append(d.Commands[r.Suite], r.Command)
		}
		k := key{r.Suite, r.Config, r.Name, r.C}
		p := d.Points[k]
		if p == nil {
			p = &Point{}
			d.Points[k] = p
			accs[k] = &acc{}
		}
		a := accs[k]
		p.Runs++
		p.Errors += r.Errors
		p.Timeouts += r.Timeouts
		p.Bad += r.Non2xx
		p.Other += r.Non2xx - min(r.Refused, r.Non2xx)
		p.PeakC = max(p.PeakC, r.PeakC)
		if r.Error != "" {
			p.Failed = append(p.Failed, r.Error)
			continue
		}
		add := func(dst *[]float64, v *float64) {
			if v != nil && known(*v) {
				*dst = append(*dst, *v)
			}
		}
		add(&a.gbps, r.Gbps)
		add(&a.rps, r.RPS)
		if r.RPS == nil {
			add(&a.rps, r.ToolRPS)
		}
		add(&a.p50, r.P50Ms)
		add(&a.p90, r.P90Ms)
		add(&a.p99, r.P99Ms)
		add(&a.hc, r.HostCPU)
		add(&a.ec, r.EnclCPU)
		add(&a.kb, r.KBPerConn)
		if r.Tool == "loadgen" || r.Refused > 0 || r.RefusedP99Ms != nil {
			a.refused = append(a.refused, float64(r.Refused))
			if r.Requests > 0 {
				a.share = append(a.share, float64(r.Refused)/float64(r.Requests))
			}
		}
		add(&a.rp50, r.RefusedP50Ms)
		add(&a.rp99, r.RefusedP99Ms)
		if r.Alive != nil && *r.Alive {
			p.Alive = true
		}
	}
	for k, p := range d.Points {
		a := accs[k]
		p.Gbps, p.RPS = median(a.gbps), median(a.rps)
		p.P50, p.P90, p.P99 = median(a.p50), median(a.p90), median(a.p99)
		p.HostCPU, p.EnclCPU, p.KBPerConn = median(a.hc), median(a.ec), median(a.kb)
		p.Refused, p.RefusedShare = median(a.refused), median(a.share)
		p.RefP50, p.RefP99 = median(a.rp50), median(a.rp99)
	}
	return d
}

// nan is the value of a missing point's field.
var nan = math.NaN()

// get returns the point or nil.
func (d *Data) get(suite, config, name string, c int) *Point {
	return d.Points[key{suite, config, name, c}]
}

// val returns field f of a point, NaN when the point is missing.
func (d *Data) val(suite, config, name string, c int, f func(*Point) float64) float64 {
	p := d.get(suite, config, name, c)
	if p == nil {
		return nan
	}
	return f(p)
}

func fRPS(p *Point) float64    { return p.RPS }
func fGbps(p *Point) float64   { return p.Gbps }
func fP99(p *Point) float64    { return p.P99 }
func fKB(p *Point) float64     { return p.KBPerConn }
func fRefP99(p *Point) float64 { return p.RefP99 }

// best returns the config among configs with the highest f (lowest when
// low), and its value; "" and NaN when none is known.
func (d *Data) best(suite string, configs []string, name string, c int, f func(*Point) float64, low bool) (string, float64) {
	bc, bv := "", nan
	for _, cfg := range configs {
		v := d.val(suite, cfg, name, c, f)
		if !known(v) {
			continue
		}
		if !known(bv) || (!low && v > bv) || (low && v < bv) {
			bc, bv = cfg, v
		}
	}
	return bc, bv
}

// withPrefix returns the suite's configs starting with prefix.
func (d *Data) withPrefix(suite, prefix string) []string {
	var out []string
	for _, c := range d.Configs[suite] {
		if len(c) >= len(prefix) && c[:len(prefix)] == prefix {
			out = append(out, c)
		}
	}
	return out
}

// concs returns the sorted concurrencies of name in suite.
func (d *Data) concs(suite, name string) []int {
	var out []int
	for k := range d.Points {
		if k.Suite == suite && k.Name == name && !slices.Contains(out, k.C) {
			out = append(out, k.C)
		}
	}
	slices.Sort(out)
	return out
}

// has reports whether suite measured name for any config.
func (d *Data) has(suite, name string) bool {
	for k := range d.Points {
		if k.Suite == suite && k.Name == name {
			return true
		}
	}
	return false
}
