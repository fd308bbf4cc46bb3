package result

import (
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
)

// MarkdownOptions control WriteMarkdown.
type MarkdownOptions struct {
	// Baseline is the target the comparison tables divide by. Each series is
	// compared with the baseline series of the same tool, or else with the
	// first baseline series. Default: the first series' target.
	Baseline string
	// NoDetail leaves out the per-step detail table.
	NoDetail bool
}

// WriteMarkdown writes GitHub-flavoured Markdown tables: when there are
// several series, a comparison of successful req/s and of p99 latency by
// concurrency with ratios to the baseline; then one detail row per step.
// Unknown values are written as "n/a".
func WriteMarkdown(w io.Writer, series []Series, opts MarkdownOptions) error {
	var b strings.Builder
	labels := Labels(series)
	if len(series) > 1 {
		base := opts.Baseline
		if base == "" {
			base = series[0].Target
		}
		baseIdx := make([]int, len(series))
		for i, s := range series {
			baseIdx[i] = -1
			for j, t := range series {
				if t.Target == base && (t.Tool == s.Tool || baseIdx[i] < 0) {
					baseIdx[i] = j
				}
			}
		}
		var concs []int
		for _, s := range series {
			for _, st := range s.Steps {
				if !slices.Contains(concs, st.Concurrency) {
					concs = append(concs, st.Concurrency)
				}
			}
		}
		slices.Sort(concs)
		table := func(title string, get func(Step) Num, format func(float64) string) {
			fmt.Fprintf(&b, "**%s** (ratio to %s)\n\n| concurrency |", title, base)
			for _, l := range labels {
				fmt.Fprintf(&b, " %s |", escapeCell(l))
			}
			b.WriteString("\n|--:|")
			b.WriteString(strings.Repeat("--:|", len(series)))
			b.WriteString("\n")
			for _, c := range concs {
				fmt.Fprintf(&b, "| %d |", c)
				for i, s := range series {
					st, ok := stepAt(s, c)
					v := get(st)
					if !ok || !v.Known() || st.Failed != "" {
						b.WriteString(" n/a |")
						continue
					}
					cell := format(float64(v))
					if j := baseIdx[i]; j >= 0 && j != i {
						if bs, ok := stepAt(series[j], c); ok && bs.Failed == "" {
							if bv := get(bs); bv.Known() && bv != 0 {
								cell += fmt.Sprintf(" (%.2f×)", float64(v)/float64(bv))
							}
						}
					}
					fmt.Fprintf(&b, " %s |", cell)
				}
				b.WriteString("\n")
			}
			b.WriteString("\n")
		}
		table("Successful requests per second", func(s Step) Num { return s.RPS }, fmtCount)
		table("p99 latency, ms", func(s Step) Num { return s.Latency.P99 }, FormatMs)
	}
	if !opts.NoDetail {
		b.WriteString("| target | tool | concurrency | req/s | p50 ms | p90 ms | p99 ms | requests | errors | timeouts | failed |\n")
		b.WriteString("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n")
		for _, s := range series {
			for _, st := range s.Steps {
				if st.Failed != "" {
					fmt.Fprintf(&b, "| %s | %s | %d | failed: %s |%s\n",
						escapeCell(s.Target), escapeCell(s.Tool), st.Concurrency, escapeCell(st.Failed), strings.Repeat(" |", 7))
					continue
				}
				timeouts := "n/a"
				if st.Timeouts != nil {
					timeouts = strconv.FormatInt(*st.Timeouts, 10)
				}
				fmt.Fprintf(&b, "| %s | %s | %d | %s | %s | %s | %s | %d | %d | %s | %s |\n",
					escapeCell(s.Target), escapeCell(s.Tool), st.Concurrency,
					numOr(st.RPS, fmtCount), numOr(st.Latency.P50, FormatMs), numOr(st.Latency.P90, FormatMs),
					numOr(st.Latency.P99, FormatMs), st.Requests, st.Errors, timeouts, fmtPercent(st.FailRate()))
			}
		}
		b.WriteString("\n")
	}
	for i, s := range series {
		if s.Stopped != "" {
			fmt.Fprintf(&b, "- %s stopped early: %s\n", escapeCell(labels[i]), s.Stopped)
		}
	}
	if _, err := io.WriteString(w, b.String()); err != nil {
		return fmt.Errorf("result: write markdown: %w", err)
	}
	return nil
}

func stepAt(s Series, c int) (Step, bool) {
	for _, st := range s.Steps {
		if st.Concurrency == c {
			return st, true
		}
	}
	return Step{Latency: NoLatency(), RPS: Unknown, ToolRPS: Unknown}, false
}

func numOr(n Num, f func(float64) string) string {
	if !n.Known() {
		return "n/a"
	}
	return f(float64(n))
}

// FormatMs formats milliseconds with about three significant digits.
func FormatMs(ms float64) string {
	switch a := math.Abs(ms); {
	case a < 1:
		return strconv.FormatFloat(ms, 'f', 3, 64)
	case a < 10:
		return strconv.FormatFloat(ms, 'f', 2, 64)
	case a < 100:
		return strconv.FormatFloat(ms, 'f', 1, 64)
	default:
		return strconv.FormatFloat(ms, 'f', 0, 64)
	}
}

// fmtCount formats a rate as an integer with thousands separators.
func fmtCount(v float64) string {
	s := strconv.FormatInt(int64(math.Round(v)), 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var out []byte
	for i := range len(s) {
		if i > 0 && (len(s)-i)%3 == 0 {
			out = append(out, ',')
		}
		out = append(out, s[i])
	}
	if neg {
		return "-" + string(out)
	}
	return string(out)
}

func fmtPercent(f float64) string {
	if math.IsNaN(f) {
		return "n/a"
	}
	if f == 0 {
		return "0 %"
	}
	if f < 0.001 {
		return "<0.1 %"
	}
	return strconv.FormatFloat(f*100, 'f', 1, 64) + " %"
}

func escapeCell(s string) string {
	s = strings.ReplaceAll(s, "|", `\|`)
	return strings.ReplaceAll(s, "\n", " ")
}
