// Package chart draws load sweep results with gonum.org/v1/plot: one image
// with two panels against concurrency on a log scale, successful requests
// per second on the left and p99 latency (log scale) on the right, every
// series (target × tool) in both, with a shared legend.
//
// Colours tell targets apart (a colour-blind-safe palette), line style and
// marker tell tools apart (bombardier solid with circles, baton dashed with
// triangles). Steps whose failed-request rate exceeded the sweep's
// threshold are marked with a red cross. Series without latency
// percentiles (baton) appear only in the left panel, and a note says so.
package chart
