// Command load runs HTTP load sweeps with bombardier and/or baton against
// one or more URLs and writes the results as JSON, CSV, Markdown and a
// chart; with -from-json it only renders existing result files.
//
// Run it from the tools module (the scripts directory):
//
//	go run ./load -target direct=http://127.0.0.1:8080/ -tool both
//	go run ./load -from-json a.json -from-json b.json -median -out docs -name bench
//
// Load goes only to loopback unless -allow-remote is given. See README.md.
package main
