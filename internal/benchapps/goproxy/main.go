// Command goproxy runs one of the Go reverse proxies compared in the proxy
// benchmarks:
//
//   - quench: package proxy with its defaults (flags below override them),
//     serving clients with Proxy.Serve (SIGTERM: Proxy.Shutdown, 5 s);
//   - quench-handler: the same Proxy as an http.Handler behind
//     proxy.NewServer (net/http's server);
//   - stock: httputil.NewSingleHostReverseProxy with http.DefaultTransport
//     (2 idle connections per host);
//   - nitriding: the same with nitriding-daemon's tuning: MaxIdleConns and
//     MaxIdleConnsPerHost 1000 and a sync.Pool of 32 KiB buffers.
package main

import (
	"context"
	"flag"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/signal"
	"runtime/pprof"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/quenchnet/quench/proxy"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:18081", "address to listen on")
	upstream := flag.String("upstream", "http://127.0.0.1:18080", "upstream URL")
	mode := flag.String("mode", "quench", "quench, quench-handler, stock or nitriding")
	maxInFlight := flag.Int("max-inflight", 0, "quench: Config.MaxInFlight (0: default, -1: none)")
	queue := flag.Int("queue", 0, "quench: Config.QueueSize")
	queueTimeout := flag.Duration("queue-timeout", 0, "quench: Config.QueueTimeout (0: default)")
	maxConns := flag.Int("max-conns", 0, "quench: Config.MaxConns (0: default)")
	bufSize := flag.Int("buffer", 0, "quench: Config.BufferSize (0: default)")
	eventLoops := flag.Int("event-loops", 0, "quench: Config.EventLoops (0: GOMAXPROCS, -1: a goroutine per connection)")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile of the whole run to this file (stopped by SIGTERM/SIGINT)")
	local := flag.String("local", "", "quench modes: serve requests whose path starts with this prefix with a local hello handler (Config.Intercept) instead of forwarding them")
	flag.Parse()

	if *cpuProfile != "" {
		stop := startProfile(*cpuProfile)
		defer stop()
	}

	target, err := url.Parse(*upstream)
	if err != nil {
		log.Fatal(err)
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, os.Interrupt)
	cfg := proxy.Config{MaxInFlight: *maxInFlight, QueueSize: *queue, QueueTimeout: *queueTimeout, MaxConns: *maxConns, BufferSize: *bufSize, EventLoops: *eventLoops}
	if *local != "" {
		hello := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			_, _ = w.Write([]byte("Hello, world!"))
		})
		cfg.Intercept = func(r *http.Request) http.Handler {
			if strings.HasPrefix(r.URL.Path, *local) {
				return hello
			}
			return nil
		}
	}
	var srv *http.Server
	switch *mode {
	case "quench":
		p, err := proxy.New(target, cfg)
		if err != nil {
			log.Fatal(err)
		}
		done := make(chan struct{})
		go func() {
			defer close(done)
			<-sig
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := p.Shutdown(ctx); err != nil {
				log.Print(err)
			}
			_ = p.Close()
		}()
		log.Print(p.Serve(ln))
		<-done
		return
	case "quench-handler":
		p, err := proxy.New(target, cfg)
		if err != nil {
			log.Fatal(err)
		}
		defer p.Close()
		srv = proxy.NewServer(p, proxy.ServerConfig{})
	case "stock":
		srv = &http.Server{Handler: httputil.NewSingleHostReverseProxy(target), ReadHeaderTimeout: 10 * time.Second}
	case "nitriding":
		rp := httputil.NewSingleHostReverseProxy(target)
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.MaxIdleConns = 1000
		t.MaxIdleConnsPerHost = 1000
		rp.Transport = t
		rp.BufferPool = newBufPool()
		srv = &http.Server{Handler: rp, ReadHeaderTimeout: 10 * time.Second}
	default:
		log.Fatalf("unknown mode %q", *mode)
	}
	go func() { <-sig; _ = srv.Close() }()
	if err := srv.Serve(ln); err != http.ErrServerClosed {
		log.Print(err)
	}
}

func startProfile(path string) func() {
	f, err := os.Create(path)
	if err != nil {
		log.Fatal(err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		log.Fatal(err)
	}
	return func() { pprof.StopCPUProfile(); _ = f.Close() }
}

// bufPool is nitriding-daemon's httputil.BufferPool: 32 KiB buffers in a
// sync.Pool.
type bufPool struct{ sync.Pool }

func newBufPool() *bufPool {
	return &bufPool{Pool: sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}}
}

func (p *bufPool) Get() []byte  { return *p.Pool.Get().(*[]byte) }
func (p *bufPool) Put(b []byte) { p.Pool.Put(&b) }
