package chart_test

import (
	"bytes"
	"encoding/xml"
	"image/png"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/quenchnet/quench/scripts/load/chart"
	"github.com/quenchnet/quench/scripts/load/result"
)

func sample(t testing.TB) *result.File {
	t.Helper()
	f, err := result.ReadJSONFile(filepath.Join("..", "testdata", "sample-results.json"))
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func series(target, tool string, p99 bool, failAt int, concs ...int) result.Series {
	s := result.Series{Target: target, Tool: tool}
	for i, c := range concs {
		st := result.Step{
			Concurrency: c, Seconds: 10, Requests: 1000, OK: 1000, RPS: result.Num(1000 * math.Sqrt(float64(c))),
			ToolRPS: result.Unknown, Latency: result.NoLatency(),
		}
		if p99 {
			st.Latency.P99 = result.Num(0.2 * float64(i+1) * float64(i+1))
		}
		if c == failAt {
			st.Errors, st.OK = 200, 800
		}
		s.Steps = append(s.Steps, st)
	}
	return s
}

func TestRender(t *testing.T) {
	failed := series("broken", "bombardier", true, 0, 1, 10)
	failed.Steps = append(failed.Steps, result.Step{Concurrency: 100, Failed: "killed", RPS: result.Unknown, ToolRPS: result.Unknown, Latency: result.NoLatency()})
	tests := []struct {
		name   string
		series []result.Series
	}{
		{"sample", sample(t).Series},
		{"several targets and tools", []result.Series{
			series("direct", "bombardier", true, 0, 1, 10, 100, 1000),
			series("quench", "bombardier", true, 1000, 1, 10, 100, 1000),
			series("direct", "baton", false, 0, 1, 10, 100),
			failed,
		}},
		{"baton only: no latency anywhere", []result.Series{series("direct", "baton", false, 0, 1, 10)}},
		{"one step", []result.Series{series("direct", "bombardier", true, 0, 1)}},
		{"nothing measured", []result.Series{{Target: "x", Tool: "baton"}}},
		{"many targets", func() []result.Series {
			var out []result.Series
			for _, n := range []string{"a", "b", "c", "d", "e", "f", "g", "h", "i"} {
				out = append(out, series(n, "bombardier", true, 0, 1, 50, 2000))
			}
			return out
		}()},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			// A low resolution keeps the test fast under the race detector.
			opts := chart.Options{Title: "test", Subtitle: "sub", MaxFailRate: 0.05, DPI: 40}
			var pngBuf, svgBuf bytes.Buffer
			if err := chart.Render(&pngBuf, "png", tc.series, opts); err != nil {
				t.Fatal(err)
			}
			img, err := png.Decode(&pngBuf)
			if err != nil {
				t.Fatalf("not a PNG: %v", err)
			}
			if b := img.Bounds(); b.Dx() != 13*40 || b.Dy() != 5*40 {
				t.Errorf("PNG is %v, want 520x200", b)
			}
			if err := chart.Render(&svgBuf, "svg", tc.series, opts); err != nil {
				t.Fatal(err)
			}
			checkSVG(t, svgBuf.Bytes())
		})
	}
}

// checkSVG checks that b is well-formed XML with an <svg> root.
func checkSVG(t *testing.T, b []byte) {
	t.Helper()
	if !bytes.HasPrefix(b, []byte("<?xml")) {
		t.Errorf("SVG starts with %q", b[:min(len(b), 20)])
	}
	dec := xml.NewDecoder(bytes.NewReader(b))
	root := ""
	for {
		tok, err := dec.Token()
		if err != nil {
			if err.Error() != "EOF" {
				t.Fatalf("SVG is not well-formed XML: %v", err)
			}
			break
		}
		if se, ok := tok.(xml.StartElement); ok && root == "" {
			root = se.Name.Local
		}
	}
	if root != "svg" {
		t.Errorf("root element %q, want svg", root)
	}
}

func TestRenderShowsSeriesNames(t *testing.T) {
	var buf bytes.Buffer
	s := []result.Series{series("direct", "bombardier", true, 0, 1, 10), series("quench-tap", "baton", false, 0, 1, 10)}
	if err := chart.Render(&buf, "svg", s, chart.Options{MaxFailRate: 0.05}); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"direct · bombardier", "quench-tap · baton", "HTTP load sweep", "p99 latency", "Successful requests per second", "no latency percentiles"} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("SVG lacks %q", want)
		}
	}
}

func TestWriteFile(t *testing.T) {
	dir := t.TempDir()
	for _, name := range []string{"c.png", "c.svg"} {
		p := filepath.Join(dir, name)
		if err := chart.WriteFile(p, sample(t).Series, chart.Options{}); err != nil {
			t.Fatal(err)
		}
		if name == "c.png" {
			fh, err := os.Open(p)
			if err != nil {
				t.Fatal(err)
			}
			cfg, err := png.DecodeConfig(fh)
			fh.Close()
			if err != nil || cfg.Width != 1560 || cfg.Height != 600 {
				t.Errorf("default PNG %dx%d, %v; want 1560x600 (13x5 in at 120 dpi)", cfg.Width, cfg.Height, err)
			}
		}
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		header := map[string]string{"c.png": "\x89PNG\r\n\x1a\n", "c.svg": "<?xml"}[name]
		if len(b) < 1000 || !bytes.HasPrefix(b, []byte(header)) {
			t.Errorf("%s: %d bytes starting %q", name, len(b), b[:min(len(b), 8)])
		}
	}
	if err := chart.WriteFile(filepath.Join(dir, "c.gif"), sample(t).Series, chart.Options{}); err == nil {
		t.Error("wrote a .gif")
	}
	if err := chart.Render(&bytes.Buffer{}, "png", nil, chart.Options{}); err == nil {
		t.Error("rendered no series")
	}
}
