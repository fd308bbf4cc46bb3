// Command report is the benchmark suite's data path: the shell suites in
// scripts/bench pipe each tool run's output (wrk, iperf3, loadgen) through
// "report parse", which appends one JSON line in the common schema
// (quench-bench/v1, [Record]);
// "report fromload" turns a scripts/load sweep file into the same lines;
// "report machine" records the machine and its load; "report md" reads the
// lines of a run and writes BENCHMARKS.md: the machine, the commands,
// tables of medians with ratios to direct and to the peers, the proxy
// overload scenario (served and refused latencies at c_peak and 4 × c_peak),
// the issues' targets evaluated on this run's data, and SVG charts (gonum
// plot).
//
//	report parse -suite tunnel -config quench:65520 -name http -c 100 -run 1 < wrk.out >> run.jsonl
//	report fromload -suite proxy -run 1 sweep.json >> run.jsonl
//	report machine >> run.jsonl
//	report md -o BENCHMARKS.md -charts docs/bench run.jsonl
//
// It supersedes parse.py and report.py.
package main
