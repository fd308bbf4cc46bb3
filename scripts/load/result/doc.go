// Package result holds the results of HTTP load sweeps and reads and writes
// them as JSON, CSV and Markdown.
//
// A [File] is one run of the load tool: the machine, the settings and one
// [Series] per target and load tool. A Series holds one [Step] per
// concurrency level. Values a tool does not report (baton has no latency
// percentiles and cannot tell timeouts from other connection errors) are
// kept as unknown, never invented: a [Num] is NaN (JSON null, empty CSV
// cell) and [Step.Timeouts] is nil.
//
// The benchmark suite reads result files back with [ReadJSONFile], merges
// repetitions with [MedianSeries] and renders tables with [WriteMarkdown]
// and charts with package chart.
package result
