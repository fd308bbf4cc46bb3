package chart

import (
	"bytes"
	"errors"
	"fmt"
	"image/color"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	stdfont "golang.org/x/image/font"
	"gonum.org/v1/plot"
	"gonum.org/v1/plot/font"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/text"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
	"gonum.org/v1/plot/vg/vgsvg"

	"github.com/quenchnet/quench/scripts/load/result"
)

// Options control the chart.
type Options struct {
	// Title is drawn above the panels. Default: "HTTP load sweep".
	Title string
	// Subtitle is a smaller line under the title, e.g. the settings.
	// Default: none.
	Subtitle string
	// Width and Height are the image size. Default: 13 × 5 inches.
	Width, Height vg.Length
	// DPI is the PNG resolution. Default: 120.
	DPI int
	// MaxFailRate marks steps whose (errors + timeouts) / requests exceeds
	// it with a red cross. Default: 0, no marks.
	MaxFailRate float64
}

// Formats are the image formats Render accepts.
var formats = []string{"png", "svg"}

// WriteFile renders the chart into path; the extension (.png or .svg)
// chooses the format.
func WriteFile(path string, series []result.Series, opts Options) error {
	format := strings.TrimPrefix(strings.ToLower(filepath.Ext(path)), ".")
	var buf bytes.Buffer
	if err := Render(&buf, format, series, opts); err != nil {
		return err
	}
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		return fmt.Errorf("chart: %w", err)
	}
	return nil
}

// Render draws the chart in format ("png" or "svg") to w.
func Render(w io.Writer, format string, series []result.Series, opts Options) error {
	if !slices.Contains(formats, format) {
		return fmt.Errorf("chart: format %q, want png or svg", format)
	}
	if len(series) == 0 {
		return errors.New("chart: no series")
	}
	if opts.Title == "" {
		opts.Title = "HTTP load sweep"
	}
	if opts.Width <= 0 {
		opts.Width = 13 * vg.Inch
	}
	if opts.Height <= 0 {
		opts.Height = 5 * vg.Inch
	}
	if opts.DPI <= 0 {
		opts.DPI = 120
	}
	var cw vg.CanvasWriterTo
	switch format {
	case "png":
		cw = vgimg.PngCanvas{Canvas: vgimg.NewWith(vgimg.UseWH(opts.Width, opts.Height), vgimg.UseDPI(opts.DPI))}
	case "svg":
		cw = vgsvg.New(opts.Width, opts.Height)
	}
	if err := draw1(draw.New(cw), series, opts); err != nil {
		return err
	}
	if _, err := cw.WriteTo(w); err != nil {
		return fmt.Errorf("chart: write %s: %w", format, err)
	}
	return nil
}

// palette is Okabe & Ito's colour-blind-safe set, without yellow.
var palette = []color.Color{
	rgb(0x00, 0x72, 0xB2), rgb(0xD5, 0x5E, 0x00), rgb(0x00, 0x9E, 0x73),
	rgb(0xCC, 0x79, 0xA7), rgb(0xE6, 0x9F, 0x00), rgb(0x56, 0xB4, 0xE9),
	rgb(0x00, 0x00, 0x00),
}

var failColor = rgb(0xC0, 0x00, 0x00)

func rgb(r, g, b uint8) color.Color { return color.RGBA{r, g, b, 0xff} }

func sans(size vg.Length, bold bool) font.Font {
	f := font.Font{Typeface: "Liberation", Variant: "Sans", Size: size}
	if bold {
		f.Weight = stdfont.WeightBold
	}
	return f
}

func style(size vg.Length, bold bool) text.Style {
	return text.Style{Color: color.Black, Font: sans(size, bold), Handler: plot.DefaultTextHandler}
}

type seriesStyle struct {
	line  draw.LineStyle
	glyph draw.GlyphStyle
}

// styles gives each target a colour and each tool a dash and a glyph.
func styles(series []result.Series) []seriesStyle {
	var targets, tools []string
	for _, s := range series {
		if !slices.Contains(targets, s.Target) {
			targets = append(targets, s.Target)
		}
		if !slices.Contains(tools, s.Tool) {
			tools = append(tools, s.Tool)
		}
	}
	dashes := [][]vg.Length{nil, {vg.Points(6), vg.Points(3)}, {vg.Points(2), vg.Points(2)}}
	glyphs := []draw.GlyphDrawer{draw.CircleGlyph{}, draw.TriangleGlyph{}, draw.SquareGlyph{}}
	out := make([]seriesStyle, len(series))
	for i, s := range series {
		c := palette[slices.Index(targets, s.Target)%len(palette)]
		t := slices.Index(tools, s.Tool)
		out[i] = seriesStyle{
			line:  draw.LineStyle{Color: c, Width: vg.Points(1.8), Dashes: dashes[t%len(dashes)]},
			glyph: draw.GlyphStyle{Color: c, Radius: vg.Points(3), Shape: glyphs[t%len(glyphs)]},
		}
	}
	return out
}

func points(s result.Series, get func(result.Step) result.Num, positive bool) plotter.XYs {
	var xy plotter.XYs
	for _, st := range s.Steps {
		v := get(st)
		if st.Failed != "" || !v.Known() || (positive && v <= 0) {
			continue
		}
		xy = append(xy, plotter.XY{X: float64(st.Concurrency), Y: float64(v)})
	}
	return xy
}

func failed(s result.Series, get func(result.Step) result.Num, positive bool, maxRate float64) plotter.XYs {
	var xy plotter.XYs
	if maxRate <= 0 {
		return nil
	}
	for _, st := range s.Steps {
		v := get(st)
		if st.Failed != "" || !v.Known() || (positive && v <= 0) || !(st.FailRate() > maxRate) {
			continue
		}
		xy = append(xy, plotter.XY{X: float64(st.Concurrency), Y: float64(v)})
	}
	return xy
}

func rps(st result.Step) result.Num { return st.RPS }
func p99(st result.Step) result.Num { return st.Latency.P99 }

// draw1 lays out title, two panels and the legend on c.
func draw1(c draw.Canvas, series []result.Series, opts Options) error {
	c.FillPolygon(color.White, []vg.Point{c.Min, {X: c.Min.X, Y: c.Max.Y}, c.Max, {X: c.Max.X, Y: c.Min.Y}})
	pad := vg.Points(10)
	labels := result.Labels(series)
	sty := styles(series)

	// Title and subtitle.
	top := c.Max.Y - pad
	ts := style(15, true)
	ts.XAlign, ts.YAlign = draw.XLeft, draw.YTop
	c.FillText(ts, vg.Point{X: c.Min.X + pad, Y: top}, opts.Title)
	top -= ts.Height(opts.Title) + vg.Points(4)
	if opts.Subtitle != "" {
		ss := style(10, false)
		ss.Color = rgb(0x44, 0x44, 0x44)
		ss.XAlign, ss.YAlign = draw.XLeft, draw.YTop
		c.FillText(ss, vg.Point{X: c.Min.X + pad, Y: top}, opts.Subtitle)
		top -= ss.Height(opts.Subtitle) + vg.Points(4)
	}

	// Legend, in a column on the right.
	leg := plot.NewLegend()
	leg.TextStyle = style(11, false)
	leg.Top, leg.Left = true, true
	leg.ThumbnailWidth = vg.Points(28)
	leg.Padding = vg.Points(4)
	var steps []float64
	var anyFail, noP99 bool
	var noP99Labels []string
	for i, s := range series {
		l, err := plotter.NewLine(plotter.XYs{{X: 0, Y: 0}})
		if err != nil {
			return fmt.Errorf("chart: %w", err)
		}
		l.LineStyle = sty[i].line
		g, err := plotter.NewScatter(plotter.XYs{{X: 0, Y: 0}})
		if err != nil {
			return fmt.Errorf("chart: %w", err)
		}
		g.GlyphStyle = sty[i].glyph
		leg.Add(labels[i], l, g)
		for _, st := range s.Steps {
			if !slices.Contains(steps, float64(st.Concurrency)) {
				steps = append(steps, float64(st.Concurrency))
			}
		}
		if len(failed(s, rps, false, opts.MaxFailRate)) > 0 {
			anyFail = true
		}
		if len(points(s, rps, false)) > 0 && len(points(s, p99, true)) == 0 {
			noP99 = true
			noP99Labels = append(noP99Labels, labels[i])
		}
	}
	if anyFail {
		g, err := plotter.NewScatter(plotter.XYs{{X: 0, Y: 0}})
		if err != nil {
			return fmt.Errorf("chart: %w", err)
		}
		g.GlyphStyle = failGlyph()
		leg.Add(failLabel(opts.MaxFailRate), g)
	}
	// A note lists the series missing from the p99 panel, unless the panel
	// is empty anyway and says so itself.
	var notes []string
	if noP99 && len(noP99Labels) < len(series) {
		notes = append([]string{"Not in the p99 panel", "(no latency percentiles):"}, noP99Labels...)
	}
	noteStyle := style(9, false)
	noteStyle.Color = rgb(0x44, 0x44, 0x44)
	noteStyle.XAlign, noteStyle.YAlign = draw.XLeft, draw.YTop
	legW := vg.Length(0)
	for _, e := range labels {
		legW = max(legW, leg.ThumbnailWidth+leg.TextStyle.Width(" "+e))
	}
	if anyFail {
		legW = max(legW, leg.ThumbnailWidth+leg.TextStyle.Width(" "+failLabel(opts.MaxFailRate)))
	}
	for _, n := range notes {
		legW = max(legW, noteStyle.Width(n))
	}
	legW += vg.Points(8)
	legW = min(legW, (c.Max.X-c.Min.X)/3)
	legCanvas := draw.Crop(c, c.Max.X-c.Min.X-legW-pad, -pad, pad, top-c.Max.Y-vg.Points(24))
	leg.Draw(legCanvas)
	y := leg.Rectangle(legCanvas).Min.Y - vg.Points(12)
	for _, line := range notes {
		c.FillText(noteStyle, vg.Point{X: legCanvas.Min.X, Y: y}, line)
		y -= noteStyle.Height(line) + vg.Points(2)
	}

	// Panels.
	slices.Sort(steps)
	left := newPanel("requests/s", steps)
	left.Y.Min = 0
	left.Y.Tick.Marker = plot.TickerFunc(countTicks)
	right := newPanel("ms (log scale)", steps)
	right.Y.Scale = plot.LogScale{}
	right.Y.Tick.Marker = plot.TickerFunc(msTicks)
	var rpsMax, latMin, latMax float64
	latMin = math.Inf(1)
	for i, s := range series {
		if err := addSeries(left, points(s, rps, false), sty[i]); err != nil {
			return err
		}
		if err := addSeries(right, points(s, p99, true), sty[i]); err != nil {
			return err
		}
		for _, p := range points(s, rps, false) {
			rpsMax = max(rpsMax, p.Y)
		}
		for _, p := range points(s, p99, true) {
			latMin, latMax = min(latMin, p.Y), max(latMax, p.Y)
		}
	}
	for _, s := range series {
		if err := addFails(left, failed(s, rps, false, opts.MaxFailRate)); err != nil {
			return err
		}
		if err := addFails(right, failed(s, p99, true, opts.MaxFailRate)); err != nil {
			return err
		}
	}
	left.Y.Max = max(rpsMax*1.08, 1)
	emptyRight := math.IsInf(latMin, 1)
	if emptyRight {
		right.Y.Scale = plot.LinearScale{}
		right.Y.Tick.Marker = plot.ConstantTicks{}
		right.Y.Min, right.Y.Max = 0, 1
	} else {
		right.Y.Min, right.Y.Max = latMin/1.6, latMax*1.6
	}
	panelTitle := style(12, true)
	panelTitle.XAlign, panelTitle.YAlign = draw.XCenter, draw.YBottom
	titleH := panelTitle.Height("p99") + vg.Points(18)
	plotsArea := draw.Crop(c, pad, -(legW + 2*pad), pad, top-c.Max.Y-titleH)
	tiles := draw.Tiles{Rows: 1, Cols: 2, PadX: vg.Points(28)}
	canv := plot.Align([][]*plot.Plot{{left, right}}, tiles, plotsArea)
	for i, p := range []*plot.Plot{left, right} {
		p.Draw(canv[0][i])
		da := p.DataCanvas(canv[0][i])
		title := []string{"Successful requests per second", "p99 latency"}[i]
		c.FillText(panelTitle, vg.Point{X: da.Center().X, Y: da.Max.Y + vg.Points(8)}, title)
	}
	if emptyRight {
		da := right.DataCanvas(canv[0][1])
		ns := style(11, false)
		ns.Color = rgb(0x66, 0x66, 0x66)
		ns.XAlign, ns.YAlign = draw.XCenter, draw.YCenter
		c.FillText(ns, da.Center(), "no series reported latency percentiles")
	}
	return nil
}

func failGlyph() draw.GlyphStyle {
	return draw.GlyphStyle{Color: failColor, Radius: vg.Points(6), Shape: draw.CrossGlyph{}}
}

func newPanel(ylabel string, steps []float64) *plot.Plot {
	p := plot.New()
	p.X.Label.Text = "concurrent connections (log scale)"
	p.Y.Label.Text = ylabel
	for _, a := range []*plot.Axis{&p.X, &p.Y} {
		a.Label.TextStyle.Font = sans(10, false)
		a.Tick.Label.Font = sans(9, false)
		a.Padding = vg.Points(2)
	}
	p.X.Scale = plot.LogScale{}
	var ticks plot.ConstantTicks
	for _, s := range steps {
		ticks = append(ticks, plot.Tick{Value: s, Label: shortCount(s)})
	}
	p.X.Tick.Marker = ticks
	if len(steps) > 0 {
		p.X.Min, p.X.Max = steps[0]/1.4, steps[len(steps)-1]*1.4
	} else {
		p.X.Min, p.X.Max = 1, 10
	}
	grid := plotter.NewGrid()
	grid.Vertical.Color = rgb(0xE0, 0xE0, 0xE0)
	grid.Horizontal.Color = rgb(0xE0, 0xE0, 0xE0)
	p.Add(grid)
	return p
}

func addSeries(p *plot.Plot, xy plotter.XYs, sty seriesStyle) error {
	if len(xy) == 0 {
		return nil
	}
	l, s, err := plotter.NewLinePoints(xy)
	if err != nil {
		return fmt.Errorf("chart: %w", err)
	}
	l.LineStyle = sty.line
	s.GlyphStyle = sty.glyph
	p.Add(l, s)
	return nil
}

func addFails(p *plot.Plot, xy plotter.XYs) error {
	if len(xy) == 0 {
		return nil
	}
	s, err := plotter.NewScatter(xy)
	if err != nil {
		return fmt.Errorf("chart: %w", err)
	}
	s.GlyphStyle = failGlyph()
	p.Add(s)
	return nil
}

// countTicks labels a linear count axis as 0, 5k, 10k, 1.5M...
func countTicks(lo, hi float64) []plot.Tick {
	ticks := plot.DefaultTicks{}.Ticks(lo, hi)
	for i := range ticks {
		if ticks[i].Label != "" {
			ticks[i].Label = shortCount(ticks[i].Value)
		}
	}
	return ticks
}

func shortCount(v float64) string {
	switch a := math.Abs(v); {
	case a >= 1e6:
		return strconv.FormatFloat(v/1e6, 'f', -1, 64) + "M"
	case a >= 1e3:
		return strconv.FormatFloat(v/1e3, 'f', -1, 64) + "k"
	default:
		return strconv.FormatFloat(v, 'f', -1, 64)
	}
}

// msTicks puts ticks at 1-2-5 steps of each decade on a log axis in
// milliseconds; across more than three decades only powers of ten are
// labelled.
func msTicks(lo, hi float64) []plot.Tick {
	if !(lo > 0) || !(hi > lo) {
		return nil
	}
	wide := math.Log10(hi/lo) > 3
	var ticks []plot.Tick
	for e := math.Floor(math.Log10(lo)); e <= math.Ceil(math.Log10(hi)); e++ {
		for _, m := range []float64{1, 2, 5} {
			v := m * math.Pow(10, e)
			if v < lo || v > hi {
				continue
			}
			t := plot.Tick{Value: v}
			if m == 1 || !wide {
				t.Label = formatMs(v)
			}
			ticks = append(ticks, t)
		}
	}
	return ticks
}

func formatMs(ms float64) string {
	if ms >= 1000 {
		return strconv.FormatFloat(ms/1000, 'g', 3, 64) + " s"
	}
	return strconv.FormatFloat(ms, 'g', 3, 64) + " ms"
}

func failLabel(rate float64) string {
	return "over " + percent(rate) + " of requests failed"
}

func percent(f float64) string {
	return strconv.FormatFloat(f*100, 'g', 3, 64) + "%"
}
