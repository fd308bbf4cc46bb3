// Command loadgen is a closed-loop HTTP/1.1 load generator for the proxy
// overload scenario: c keep-alive connections each send GET requests back
// to back for a fixed time, and latencies are kept apart by status (served
// 2xx, refused 503, other), which wrk cannot do. A request that gets no
// response within -timeout counts as a timeout; its connection is replaced.
//
// With -warmup, the connections are opened and loaded for that long before
// the measured -d begins, so that the figures are those of the steady state
// and not of c connections arriving at once (the server accepting them one by
// one while their first requests wait).
//
// It prints one line of key=value pairs (latencies in milliseconds).
package main

import (
	"bufio"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"slices"
	"strconv"
	"sync"
	"time"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:18081", "host:port to load")
	path := flag.String("path", "/", "request path")
	conns := flag.Int("c", 100, "connections (concurrent requests)")
	dur := flag.Duration("d", 5*time.Second, "duration of the run")
	timeout := flag.Duration("timeout", 2*time.Second, "a request with no response by then is a timeout")
	honor := flag.Bool("honor-retry-after", false, "after a 503, wait for its Retry-After before the next request")
	warmup := flag.Duration("warmup", 0, "load for this long before the measured -d begins (nothing recorded)")
	flag.Parse()

	req := []byte("GET " + *path + " HTTP/1.1\r\nHost: " + *addr + "\r\nUser-Agent: loadgen\r\n\r\n")
	results := make([]*stats, *conns)
	var wg sync.WaitGroup
	start := make(chan struct{})
	var from, end time.Time
	for i := range results {
		st := &stats{}
		results[i] = st
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			worker(*addr, req, from, end, *timeout, *honor, st)
		}()
	}
	time.Sleep(100 * time.Millisecond) // let the workers park
	from = time.Now().Add(*warmup)
	end = from.Add(*dur)
	close(start)
	wg.Wait()
	elapsed := time.Since(from).Seconds()

	var all stats
	for _, st := range results {
		all.ok = append(all.ok, st.ok...)
		all.refused = append(all.refused, st.refused...)
		all.other += st.other
		all.timeouts += st.timeouts
		all.errors += st.errors
	}
	slices.Sort(all.ok)
	slices.Sort(all.refused)
	fmt.Printf("c=%d secs=%.1f rps=%.0f ok=%d ok_rps=%.0f ok_p50=%.2f ok_p99=%.2f ok_max=%.2f "+
		"refused=%d refused_p50=%.2f refused_p99=%.2f refused_max=%.2f other=%d timeouts=%d errors=%d\n",
		*conns, elapsed, float64(len(all.ok)+len(all.refused)+all.other)/elapsed,
		len(all.ok), float64(len(all.ok))/elapsed, pct(all.ok, 50), pct(all.ok, 99), pct(all.ok, 100),
		len(all.refused), pct(all.refused, 50), pct(all.refused, 99), pct(all.refused, 100),
		all.other, all.timeouts, all.errors)
	if all.errors > 0 {
		os.Exit(1)
	}
}

type stats struct {
	ok, refused     []time.Duration
	other           int
	timeouts        int
	errors          int
	lastErrReported bool
}

func pct(d []time.Duration, p int) float64 {
	if len(d) == 0 {
		return 0
	}
	i := (len(d)*p+99)/100 - 1
	i = max(0, min(i, len(d)-1))
	return float64(d[i]) / float64(time.Millisecond)
}

var errClosed = errors.New("server closed the connection")

// worker loads addr until end, recording the requests sent from from on.
func worker(addr string, req []byte, from, end time.Time, timeout time.Duration, honor bool, st *stats) {
	st.ok = make([]time.Duration, 0, 4096)
	var c net.Conn
	var br *bufio.Reader
	defer func() {
		if c != nil {
			_ = c.Close()
		}
	}()
	for time.Now().Before(end) {
		if c == nil {
			var err error
			c, err = net.DialTimeout("tcp", addr, timeout)
			if err != nil {
				st.fail(err)
				time.Sleep(10 * time.Millisecond)
				continue
			}
			br = bufio.NewReaderSize(c, 4096)
		}
		t0 := time.Now()
		_ = c.SetDeadline(t0.Add(timeout))
		code, keep, retryAfter, err := roundTrip(c, br, req)
		d := time.Since(t0)
		rec := !t0.Before(from)
		var ne net.Error
		switch {
		case !rec:
			if code == 503 && honor && retryAfter > 0 {
				time.Sleep(min(retryAfter, time.Until(end)))
			}
		case errors.As(err, &ne) && ne.Timeout():
			st.timeouts++
		case err != nil:
			st.fail(err)
		case code >= 200 && code < 300:
			st.ok = append(st.ok, d)
		case code == 503:
			st.refused = append(st.refused, d)
			if honor && retryAfter > 0 {
				time.Sleep(min(retryAfter, time.Until(end)))
			}
		default:
			st.other++
		}
		if err != nil || !keep {
			_ = c.Close()
			c = nil
		}
	}
}

func (st *stats) fail(err error) {
	st.errors++
	if !st.lastErrReported {
		st.lastErrReported = true
		log.Print(err)
	}
}

// roundTrip sends req and reads one response, discarding its body. It
// understands Content-Length bodies only, which is what the hello app and
// the proxies' refusals send.
func roundTrip(c net.Conn, br *bufio.Reader, req []byte) (code int, keep bool, retryAfter time.Duration, err error) {
	if _, err := c.Write(req); err != nil {
		return 0, false, 0, err
	}
	line, err := br.ReadSlice('\n')
	if err != nil {
		if err == io.EOF {
			err = errClosed
		}
		return 0, false, 0, err
	}
	if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.")) {
		return 0, false, 0, fmt.Errorf("bad status line %q", line)
	}
	code, err = strconv.Atoi(string(line[9:12]))
	if err != nil {
		return 0, false, 0, fmt.Errorf("bad status line %q", line)
	}
	length := 0
	keep = true
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			return 0, false, 0, err
		}
		if len(line) <= 2 {
			break
		}
		k, v, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			continue
		}
		v = bytes.TrimSpace(v)
		switch {
		case bytes.EqualFold(k, []byte("Content-Length")):
			length, err = strconv.Atoi(string(v))
			if err != nil {
				return 0, false, 0, fmt.Errorf("bad Content-Length %q", v)
			}
		case bytes.EqualFold(k, []byte("Retry-After")):
			if secs, err := strconv.Atoi(string(v)); err == nil {
				retryAfter = time.Duration(secs) * time.Second
			}
		case bytes.EqualFold(k, []byte("Connection")) && bytes.EqualFold(v, []byte("close")):
			keep = false
		case bytes.EqualFold(k, []byte("Transfer-Encoding")):
			return 0, false, 0, errors.New("chunked responses are not supported")
		}
	}
	if _, err := br.Discard(length); err != nil {
		return 0, false, 0, err
	}
	return code, keep, retryAfter, nil
}
