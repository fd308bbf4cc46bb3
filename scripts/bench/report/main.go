package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/quenchnet/quench/scripts/load/result"
)

const usage = `Usage:
  report parse    -suite S -config C -name N [-c C] [-peak-c C] [-run R] [-cmd CMD] [-host T0,T1] [-encl T0,T1] [-wall SECS] [-hz HZ] < tool-output
  report fromload -suite S [-run R] [-cmd CMD] sweep.json ...
  report machine  [-phase start|end] [-mode full|quick]
  report invocation -suite S -cmd CMD
  report md       [-o BENCHMARKS.md] [-charts DIR] [-chart-prefix P] [-history GLOB] [-gobench FILE] [-quick] [-title T] run.jsonl ...

parse reads wrk --latency, iperf3 -J or loadgen output.
parse, fromload, machine and invocation print JSON lines (` + Format + `) on stdout.
`

func main() {
	if err := run(os.Args[1:], os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func run(args []string, stdin io.Reader, stdout io.Writer) error {
	if len(args) == 0 {
		return errors.New(usage)
	}
	fs := flag.NewFlagSet("report "+args[0], flag.ContinueOnError)
	suite := fs.String("suite", "", "suite name")
	switch args[0] {
	case "parse":
		var rec Record
		fs.StringVar(&rec.Config, "config", "", "configuration measured")
		fs.StringVar(&rec.Name, "name", "", "measurement name (http, ingress, ...)")
		fs.IntVar(&rec.C, "c", 0, "concurrency")
		fs.IntVar(&rec.PeakC, "peak-c", 0, "overload records: the concurrency where req/s peaked")
		fs.IntVar(&rec.Run, "run", 1, "run number")
		fs.StringVar(&rec.Tool, "tool", "", "tool (default: detected)")
		fs.StringVar(&rec.Command, "cmd", "", "the command that produced the output")
		host := fs.String("host", "", "host process CPU ticks before,after")
		encl := fs.String("encl", "", "enclave-side process CPU ticks before,after")
		wall := fs.Float64("wall", 0, "wall seconds of the run")
		hz := fs.Float64("hz", 100, "clock ticks per second")
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		rec.Suite = *suite
		text, err := io.ReadAll(io.LimitReader(stdin, 16<<20))
		if err != nil {
			return fmt.Errorf("report: read: %w", err)
		}
		ParseOutput(&rec, string(text))
		for _, t := range []struct {
			s   string
			dst **float64
		}{{*host, &rec.HostCPU}, {*encl, &rec.EnclCPU}} {
			if t.s == "" {
				continue
			}
			a, b, err := parseTicks(t.s)
			if err != nil {
				return fmt.Errorf("report: ticks %q: %w", t.s, err)
			}
			*t.dst = cpuCores(a, b, *hz, *wall)
		}
		return emit(stdout, rec)
	case "fromload":
		run := fs.Int("run", 1, "run number")
		cmd := fs.String("cmd", "", "the sweep command")
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		for _, p := range fs.Args() {
			recs, err := FromLoad(p, *suite, *run, *cmd)
			if err != nil {
				return err
			}
			for _, r := range recs {
				if err := emit(stdout, r); err != nil {
					return err
				}
			}
		}
		return nil
	case "machine":
		phase := fs.String("phase", "start", "start or end")
		mode := fs.String("mode", "", "full or quick")
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		m := ReadMachine()
		m.Phase, m.Mode = *phase, *mode
		return emit(stdout, Record{Suite: "run", Name: "machine", Machine: &m})
	case "invocation":
		cmd := fs.String("cmd", "", "the suite's command line")
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		return emit(stdout, Record{Suite: *suite, Name: "invocation", Command: *cmd})
	case "md":
		var o Options
		fs.StringVar(&o.Path, "o", "BENCHMARKS.md", "output Markdown file (- for stdout)")
		charts := fs.String("charts", "", "directory for SVG charts (empty: none)")
		prefix := fs.String("chart-prefix", "", "prefix of chart file names")
		history := fs.String("history", "", "glob of hand-written history files to link")
		fs.StringVar(&o.GoBench, "gobench", "", "go test -bench output to summarise and link")
		fs.BoolVar(&o.Quick, "quick", false, "mark the report as a quick run")
		fs.StringVar(&o.Title, "title", "", "top heading")
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		recs, err := ReadFiles(fs.Args())
		if err != nil {
			return err
		}
		if *suite != "" {
			var keep []Record
			for _, r := range recs {
				if r.Suite == *suite || r.Machine != nil {
					keep = append(keep, r)
				}
			}
			recs = keep
		}
		d := Merge(recs)
		o.Raw = fs.Args()
		if *history != "" {
			o.History, _ = filepath.Glob(*history)
		}
		if o.GoBench != "" {
			b, err := os.ReadFile(o.GoBench)
			if err != nil {
				return fmt.Errorf("report: %w", err)
			}
			o.GoBenchText = string(b)
		}
		if *charts != "" {
			o.Charts = map[string][]string{}
			for _, s := range d.Suites {
				ps, err := WriteCharts(d, s, *charts, *prefix)
				if err != nil {
					return err
				}
				o.Charts[s] = ps
			}
		}
		if o.Path == "-" {
			o.Path = ""
			return WriteMarkdown(stdout, d, o)
		}
		f, err := os.Create(o.Path)
		if err != nil {
			return fmt.Errorf("report: %w", err)
		}
		if err := WriteMarkdown(f, d, o); err != nil {
			f.Close()
			return err
		}
		if err := f.Close(); err != nil {
			return fmt.Errorf("report: %w", err)
		}
		fmt.Fprintf(stdout, "wrote %s\n", o.Path)
		return nil
	}
	return fmt.Errorf("report: unknown command %q\n%s", args[0], usage)
}

func emit(w io.Writer, r Record) error {
	b, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("report: %w", err)
	}
	b = append(b, '\n')
	if _, err := w.Write(b); err != nil {
		return fmt.Errorf("report: %w", err)
	}
	return nil
}

// FromLoad converts a scripts/load result file into sweep records, one
// per series and step.
func FromLoad(path, suite string, run int, cmd string) ([]Record, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("report: %w", err)
	}
	var f result.File
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("report: %s: %w", path, err)
	}
	var out []Record
	for _, s := range f.Series {
		for _, st := range s.Steps {
			cfg := s.Target
			if s.Tool != "bombardier" {
				cfg += " (" + s.Tool + ")"
			}
			r := Record{Suite: suite, Config: cfg, Name: "sweep", C: st.Concurrency, Run: run, Tool: s.Tool,
				Command: cmd, Requests: st.Requests, Errors: st.Errors - st.HTTPErrors, Timeouts: st.TimeoutCount(), Non2xx: st.HTTPErrors}
			if st.Failed != "" {
				r.Error = st.Failed
			}
			fnum := func(n result.Num) *float64 {
				if !n.Known() {
					return nil
				}
				return ptr(float64(n))
			}
			r.RPS, r.ToolRPS = fnum(st.RPS), fnum(st.ToolRPS)
			r.P50Ms, r.P90Ms, r.P99Ms = fnum(st.Latency.P50), fnum(st.Latency.P90), fnum(st.Latency.P99)
			out = append(out, r)
		}
	}
	return out, nil
}

// ReadMachine describes this machine now.
func ReadMachine() Machine {
	m := Machine{Time: time.Now().UTC().Format(time.RFC3339), NProc: runtime.NumCPU()}
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
		f.Close()
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for l := range strings.SplitSeq(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "MemTotal:"); ok {
				kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
				m.MemGiB = kb / (1 << 20)
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		f := strings.Fields(string(b))
		for i := 0; i < 3 && i < len(f); i++ {
			m.Load[i], _ = strconv.ParseFloat(f[i], 64)
		}
	}
	if out, err := exec.Command("go", "env", "GOVERSION").Output(); err == nil {
		m.GoVersion = strings.TrimSpace(string(out))
	} else {
		m.GoVersion = runtime.Version()
	}
	return m
}
