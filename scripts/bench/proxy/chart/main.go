// Command chart draws the proxy benchmark's medians (medians.tsv, written
// by scripts/bench/proxy.sh) as grouped bars, one bar per concurrency:
// with -metric ratio, each proxy's request rate as a fraction of the app's
// own (direct); with -metric cpu, the proxy's CPU time per request.
//
//	go run ./bench/proxy/chart -in RESULTS/medians.tsv -out ../docs/bench/proxy.svg
//	go run ./bench/proxy/chart -metric cpu -in RESULTS/medians.tsv -out ../docs/bench/proxy-cpu.svg
//
// (from the scripts module directory).
package main

import (
	"bufio"
	"flag"
	"fmt"
	"image/color"
	"log"
	"os"
	"slices"
	"strconv"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
)

// order is the targets in the order drawn; others in the file are skipped.
var order = []string{"quench", "quench-handler", "nginx", "haproxy", "go-nitriding", "go-stock"}

// Okabe-Ito colours, safe for colour-blind readers.
var colours = []color.Color{
	color.RGBA{0x00, 0x72, 0xB2, 0xff},
	color.RGBA{0xE6, 0x9F, 0x00, 0xff},
	color.RGBA{0x00, 0x9E, 0x73, 0xff},
	color.RGBA{0xCC, 0x79, 0xA7, 0xff},
}

func main() {
	in := flag.String("in", "medians.tsv", "medians.tsv from scripts/bench/proxy.sh")
	out := flag.String("out", "proxy.svg", "output image (.svg or .png)")
	title := flag.String("title", "Reverse proxies in front of a Go hello app, wrk, 2 cores", "chart title")
	metric := flag.String("metric", "ratio", "ratio (req/s ÷ direct) or cpu (proxy CPU µs per request)")
	flag.Parse()
	if *metric != "ratio" && *metric != "cpu" {
		log.Fatalf("unknown -metric %q", *metric)
	}
	if err := run(*in, *out, *title, *metric == "cpu"); err != nil {
		log.Fatal(err)
	}
}

func run(in, out, title string, cpu bool) error {
	f, err := os.Open(in)
	if err != nil {
		return err
	}
	defer f.Close()
	rps := map[string]map[int]float64{}   // target -> c -> req/s
	cpuUS := map[string]map[int]float64{} // target -> c -> proxy CPU µs per request
	var concs []int
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Split(sc.Text(), "\t")
		if len(fields) < 5 {
			continue
		}
		c, err1 := strconv.Atoi(fields[1])
		v, err2 := strconv.ParseFloat(fields[2], 64)
		u, err3 := strconv.ParseFloat(fields[4], 64)
		if err1 != nil || err2 != nil || err3 != nil {
			continue
		}
		if rps[fields[0]] == nil {
			rps[fields[0]] = map[int]float64{}
			cpuUS[fields[0]] = map[int]float64{}
		}
		rps[fields[0]][c] = v
		cpuUS[fields[0]][c] = u
		if !slices.Contains(concs, c) {
			concs = append(concs, c)
		}
	}
	if err := sc.Err(); err != nil {
		return err
	}
	slices.Sort(concs)
	direct := rps["direct"]
	if direct == nil {
		return fmt.Errorf("%s: no direct rows", in)
	}
	var names []string
	for _, n := range order {
		if rps[n] != nil {
			names = append(names, n)
		}
	}

	value := func(n string, c int) float64 {
		if cpu {
			return cpuUS[n][c]
		}
		if d := direct[c]; d > 0 {
			return rps[n][c] / d
		}
		return 0
	}
	p := plot.New()
	p.Title.Text = title
	p.Y.Label.Text = "req/s as a fraction of direct"
	if cpu {
		p.Y.Label.Text = "proxy CPU µs per request (lower is better)"
	}
	p.Y.Min = 0
	p.Legend.Top = true
	w := vg.Points(14)
	top := 0.0
	for _, n := range names {
		for _, c := range concs {
			top = max(top, value(n, c))
		}
	}
	p.Y.Max = top * 1.2 // room for the legend
	for i, c := range concs {
		vals := make(plotter.Values, len(names))
		for j, n := range names {
			vals[j] = value(n, c)
		}
		bars, err := plotter.NewBarChart(vals, w)
		if err != nil {
			return err
		}
		bars.LineStyle.Width = 0
		bars.Color = colours[i%len(colours)]
		bars.Offset = w * vg.Length(float64(i)-float64(len(concs)-1)/2)
		p.Add(bars)
		p.Legend.Add(fmt.Sprintf("c=%d", c), bars)
	}
	p.NominalX(names...)
	p.Add(plotter.NewGrid())
	return p.Save(vg.Points(640), vg.Points(360), out)
}
