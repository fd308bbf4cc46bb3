// Package tool runs the HTTP load generators bombardier and baton as
// separate processes and parses what they print into [result.Step] values.
//
// [Bombardier] and [Baton] implement [Runner]. Each run is bounded: the
// process is killed at a hard deadline (the step duration plus the request
// timeout's worst case plus a grace period) and its output is capped.
//
// The parsers, [ParseBombardier] (bombardier v1.2.6 `-o json -p result -l`)
// and [ParseBaton] (baton's text report), never invent values: baton reports
// no latency percentiles in timed mode and cannot tell timeouts from other
// connection errors, so those stay unknown.
//
// [Locate] finds or builds the tool binaries from the tools module
// (github.com/quenchnet/quench/scripts), which pins their versions.
package tool
