// Package sweep runs HTTP load sweeps: every target is loaded by every
// tool at increasing concurrency, each step for a bounded time, and a
// series stops early once failed requests (errors plus timeouts) exceed a
// threshold or its tool fails.
//
// Steps are interleaved: at each concurrency level every series runs
// (Repeat times, merged by median) before the next level starts, so the
// targets are measured side by side under the same conditions.
//
// Load is only ever sent to loopback addresses unless Config.AllowRemote is
// set ([CheckTarget]). Every run is bounded: the number of steps, series and
// repetitions is fixed up front, each tool process is killed at a hard
// deadline, and [Sweep.Bound] gives the worst-case total time.
//
// [RaiseNoFile] raises the open-file limit that the tool processes inherit.
package sweep
