package host_test

import (
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/quenchnet/quench/host"
	"github.com/quenchnet/quench/internal/testutil"
)

// BenchmarkVSockProxy compares quench-host's vsock-proxy role with socat
// (UNIX-LISTEN,fork → TCP: what deployments use when they do not run AWS's
// vsock-proxy, which is Rust and cannot be built here), side by side in one
// run, on the VSOCK stand-in (unix sockets) to a TCP echo server:
//
//   - bulk: 1 MiB each way per op on one connection (SetBytes counts one way);
//   - connect: a new connection per op, one byte there and back, closed.
//
// go test -run NONE -bench VSockProxy -benchtime 3s ./host
func BenchmarkVSockProxy(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	testutil.Echo(b, ln)
	target := ln.Addr().String()

	proxies := map[string]func(b *testing.B) string{
		"quench": func(b *testing.B) string {
			h, err := host.New(host.Config{})
			if err != nil {
				b.Fatal(err)
			}
			if err := h.Start(b.Context()); err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { _ = h.Close() })
			path := filepath.Join(b.TempDir(), "vsock-3-8000.sock")
			pl, err := net.Listen("unix", path)
			if err != nil {
				b.Fatal(err)
			}
			go func() { _ = h.ServeVSockProxy(pl, host.VSockProxy{Port: 8000, Target: target}) }()
			return path
		},
		"socat": func(b *testing.B) string {
			if _, err := exec.LookPath("socat"); err != nil {
				b.Skip("socat not installed (apt-get install socat)")
			}
			path := filepath.Join(b.TempDir(), "vsock-3-8000.sock")
			cmd := exec.Command("socat", "UNIX-LISTEN:"+path+",fork", "TCP:"+target)
			cmd.Stderr = os.Stderr
			if err := cmd.Start(); err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
			for range 100 {
				if _, err := os.Stat(path); err == nil {
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
			return path
		},
	}
	for _, name := range []string{"quench", "socat"} {
		b.Run("bulk/"+name, func(b *testing.B) {
			path := proxies[name](b)
			c, err := net.Dial("unix", path)
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			buf := make([]byte, 1<<20)
			back := make([]byte, 1<<20)
			b.SetBytes(int64(len(buf)))
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				errc := make(chan error, 1)
				go func() { _, err := c.Write(buf); errc <- err }()
				if _, err := io.ReadFull(c, back); err != nil {
					b.Fatal(err)
				}
				if err := <-errc; err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run("connect/"+name, func(b *testing.B) {
			path := proxies[name](b)
			one := make([]byte, 1)
			for b.Loop() {
				c, err := net.Dial("unix", path)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := c.Write([]byte{'x'}); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(c, one); err != nil {
					b.Fatal(fmt.Errorf("echo: %w", err))
				}
				_ = c.Close()
			}
		})
	}
}
