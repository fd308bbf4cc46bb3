package result_test

import (
	"fmt"
	"os"

	"github.com/quenchnet/quench/scripts/load/result"
)

func ExampleWriteMarkdown() {
	step := func(c int, rps, p99 float64) result.Step {
		return result.Step{
			Concurrency: c, Seconds: 10, Requests: int64(rps * 10), OK: int64(rps * 10), Timeouts: result.Int64(0),
			RPS: result.Num(rps), ToolRPS: result.Unknown,
			Latency: result.Latency{Mean: result.Unknown, P50: result.Num(p99 / 4), P90: result.Num(p99 / 2), P99: result.Num(p99), Max: result.Unknown},
		}
	}
	series := []result.Series{
		{Target: "direct", Tool: "bombardier", Steps: []result.Step{step(10, 35800, 1.2), step(100, 44200, 9)}},
		{Target: "quench", Tool: "bombardier", Steps: []result.Step{step(10, 21480, 2.1), step(100, 30940, 14)}},
	}
	if err := result.WriteMarkdown(os.Stdout, series, result.MarkdownOptions{NoDetail: true}); err != nil {
		fmt.Println(err)
	}
	// Output:
	// **Successful requests per second** (ratio to direct)
	//
	// | concurrency | direct | quench |
	// |--:|--:|--:|
	// | 10 | 35,800 | 21,480 (0.60×) |
	// | 100 | 44,200 | 30,940 (0.70×) |
	//
	// **p99 latency, ms** (ratio to direct)
	//
	// | concurrency | direct | quench |
	// |--:|--:|--:|
	// | 10 | 1.20 | 2.10 (1.75×) |
	// | 100 | 9.00 | 14.0 (1.56×) |
}

func ExampleMedianSeries() {
	run := func(rps float64) result.Series {
		return result.Series{Target: "direct", Tool: "baton", Steps: []result.Step{{
			Concurrency: 100, Requests: 1, OK: 1, RPS: result.Num(rps), ToolRPS: result.Unknown, Latency: result.NoLatency(),
		}}}
	}
	merged := result.MedianSeries([]result.Series{run(41000), run(44000), run(39000)})
	fmt.Println(len(merged), merged[0].Steps[0].RPS, merged[0].Steps[0].Runs)
	// Output: 1 41000 3
}
