package chart_test

import (
	"log"

	"github.com/quenchnet/quench/scripts/load/chart"
	"github.com/quenchnet/quench/scripts/load/result"
)

// Render the result files of a benchmark run into one chart.
func ExampleWriteFile() {
	var series []result.Series
	for _, path := range []string{"direct.json", "quench.json"} {
		f, err := result.ReadJSONFile(path)
		if err != nil {
			log.Fatal(err)
		}
		series = append(series, f.Series...)
	}
	err := chart.WriteFile("docs/load.svg", result.MedianSeries(series), chart.Options{
		Title:       "quench vs direct, hello world",
		MaxFailRate: 0.05,
	})
	if err != nil {
		log.Fatal(err)
	}
}
