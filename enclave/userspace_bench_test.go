package enclave_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync/atomic"
	"testing"
	"time"
)

// usBenchChunk is the bytes written per op of BenchmarkUserspaceBulk.
const usBenchChunk = 128 << 10

// usSink accepts one connection on ln, discards everything it sends and
// reports the byte count.
func usSink(ln net.Listener) <-chan int64 {
	ch := make(chan int64, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			ch <- -1
			return
		}
		defer c.Close()
		n, _ := io.CopyBuffer(io.Discard, c, make([]byte, 256<<10))
		ch <- n
	}()
	return ch
}

// usStream writes b.N chunks to c, closes it and checks the sink got them.
func usStream(b *testing.B, c net.Conn, got <-chan int64) {
	buf := make([]byte, usBenchChunk)
	b.SetBytes(usBenchChunk)
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := usCPUTime()
	for range b.N {
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	_ = c.Close()
	n := <-got
	b.StopTimer()
	// CPU of the whole process (sender, host, enclave, receiver) per MiB.
	b.ReportMetric(float64(usCPUTime()-cpu0)/float64(int64(b.N)*usBenchChunk>>20)/1e3, "cpu-µs/MiB")
	if n != int64(b.N)*usBenchChunk {
		b.Fatalf("sink got %d bytes, want %d", n, int64(b.N)*usBenchChunk)
	}
}

// BenchmarkUserspaceBulk measures one TCP stream through the frame tunnel
// (unix socket) between an in-process quench-host and an enclave in
// userspace mode, both ways, next to the same stream on the kernel's
// loopback without the tunnel. The host and the enclave share the
// process, and its cores.
func BenchmarkUserspaceBulk(b *testing.B) {
	b.Run("direct", func(b *testing.B) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		defer ln.Close()
		got := usSink(ln)
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			b.Fatal(err)
		}
		usStream(b, c, got)
	})
	b.Run("enclave-to-host", func(b *testing.B) {
		sock := usSocket(b)
		usHost(b, sock)
		e := usEnclave(b, sock, nil)
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		defer ln.Close()
		got := usSink(ln)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c, err := e.Dial(ctx, "tcp", fmt.Sprintf("192.168.127.254:%d", ln.Addr().(*net.TCPAddr).Port))
		if err != nil {
			b.Fatal(err)
		}
		usStream(b, c, got)
	})
	b.Run("host-to-enclave", func(b *testing.B) {
		sock := usSocket(b)
		h := usHost(b, sock, "127.0.0.1:0:5001")
		e := usEnclave(b, sock, nil)
		ln, err := e.Listen("tcp", ":5001")
		if err != nil {
			b.Fatal(err)
		}
		defer ln.Close()
		got := usSink(ln)
		c, err := net.Dial("tcp", h.Published()[0].String())
		if err != nil {
			b.Fatal(err)
		}
		usStream(b, c, got)
	})
}

// BenchmarkUserspaceHTTP measures HTTP/1.1 keep-alive requests for a small
// body from c concurrent clients on the host, through a published port, to
// an http.Server on the enclave's userspace stack; "direct" is the same
// server on the kernel's loopback.
func BenchmarkUserspaceHTTP(b *testing.B) {
	for _, c := range []int{10, 100, 1000} {
		b.Run(fmt.Sprintf("direct/c=%d", c), func(b *testing.B) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			usServeHTTP(b, ln, http.HandlerFunc(hello))
			usLoad(b, "http://"+ln.Addr().String()+"/", c)
		})
		b.Run(fmt.Sprintf("userspace/c=%d", c), func(b *testing.B) {
			sock := usSocket(b)
			h := usHost(b, sock, "127.0.0.1:0:80")
			e := usEnclave(b, sock, nil)
			ln, err := e.Listen("tcp", ":80")
			if err != nil {
				b.Fatal(err)
			}
			usServeHTTP(b, ln, http.HandlerFunc(hello))
			usLoad(b, "http://"+h.Published()[0].String()+"/", c)
		})
	}
}

// usLoad runs b.N GETs of url from conc goroutines sharing one keep-alive
// transport, and reports requests per second.
func usLoad(b *testing.B, url string, conc int) {
	tr := &http.Transport{MaxIdleConns: conc, MaxIdleConnsPerHost: conc, MaxConnsPerHost: conc}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	get := func() error {
		resp, err := client.Get(url)
		if err != nil {
			return err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("status %s", resp.Status)
		}
		return nil
	}
	if err := get(); err != nil { // warm up: ARP, first connection
		b.Fatal(err)
	}
	var next atomic.Int64
	errs := make(chan error, conc)
	b.ReportAllocs()
	b.ResetTimer()
	start, cpu0 := time.Now(), usCPUTime()
	for range conc {
		go func() {
			for next.Add(1) <= int64(b.N) {
				if err := get(); err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for range conc {
		if err := <-errs; err != nil {
			b.Error(err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "req/s")
	// CPU of the whole process (client, host, enclave, server) per request.
	b.ReportMetric(float64(usCPUTime()-cpu0)/float64(b.N)/1e3, "cpu-µs/req")
}
