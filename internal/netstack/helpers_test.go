package netstack

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/quenchnet/quench/tap"
)

// wireKind says how a test pair's two stacks are connected.
type wireKind int

const (
	// wireDirect copies frames from one Device to the other in a
	// goroutine per direction: the stacks alone.
	wireDirect wireKind = iota
	// wireStream runs the frames through the tunnel: a tap.Pump and a
	// tap.Conn on each side of a unix socket, as enclave and host do.
	wireStream
)

// pair is two stacks on one link: a (192.168.127.1, the "gateway") and b
// (192.168.127.2).
type pair struct {
	a, b *Net
}

var (
	macA = net.HardwareAddr{0x5a, 0x94, 0xef, 0xe4, 0x0c, 0xdd}
	macB = net.HardwareAddr{0x5a, 0x94, 0xef, 0xe4, 0x0c, 0xee}

	addrA = netip.MustParseAddr("192.168.127.1")
	addrB = netip.MustParseAddr("192.168.127.2")
)

// newPair connects two stacks and closes both (and waits for the wiring)
// in tb.Cleanup. mod, if not nil, adjusts both Configs.
func newPair(tb testing.TB, kind wireKind, mod func(*Config)) *pair {
	tb.Helper()
	ca := Config{MAC: macA, Address: netip.PrefixFrom(addrA, 24), Gateway: addrB}
	cb := Config{MAC: macB, Address: netip.PrefixFrom(addrB, 24), Gateway: addrA}
	if mod != nil {
		mod(&ca)
		mod(&cb)
	}
	a, err := New(ca)
	if err != nil {
		tb.Fatal(err)
	}
	b, err := New(cb)
	if err != nil {
		_ = a.Close()
		tb.Fatal(err)
	}
	p := &pair{a: a, b: b}
	var stop func()
	switch kind {
	case wireDirect:
		stop = wireDevices(a.Device(), b.Device())
	case wireStream:
		stop = wireStreams(tb, a.Device(), b.Device())
	}
	tb.Cleanup(func() {
		_ = a.Close()
		_ = b.Close()
		stop()
	})
	return p
}

// wireDevices copies frames between two devices until they are closed.
func wireDevices(x, y tap.Device) (wait func()) {
	var wg sync.WaitGroup
	cp := func(from, to tap.Device) {
		defer wg.Done()
		size := from.MTU() + tap.EthernetHeaderSize
		bufs := make([][]byte, from.BatchSize())
		for i := range bufs {
			bufs[i] = make([]byte, size)
		}
		sizes := make([]int, len(bufs))
		frames := make([][]byte, len(bufs))
		for {
			n, err := from.Read(bufs, sizes, 0)
			if err != nil {
				return
			}
			for i := range n {
				frames[i] = bufs[i][:sizes[i]]
			}
			if _, err := to.Write(frames[:n], 0); err != nil && errors.Is(err, net.ErrClosed) {
				// Keep draining from until it is closed too.
				continue
			}
		}
	}
	wg.Add(2)
	go cp(x, y)
	go cp(y, x)
	return func() {
		_ = x.Close()
		_ = y.Close()
		wg.Wait()
	}
}

// wireStreams connects two devices through tap.Pumps over a unix socket.
func wireStreams(tb testing.TB, x, y tap.Device) (wait func()) {
	tb.Helper()
	path := filepath.Join(tb.TempDir(), "s")
	ln, err := net.Listen("unix", path)
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	cx, err := net.Dial("unix", path)
	if err != nil {
		tb.Fatal(err)
	}
	cy, err := ln.Accept()
	if err != nil {
		tb.Fatal(err)
	}
	tx, err := tap.NewConn(cx, tap.Config{MTU: x.MTU()})
	if err != nil {
		tb.Fatal(err)
	}
	ty, err := tap.NewConn(cy, tap.Config{MTU: y.MTU()})
	if err != nil {
		tb.Fatal(err)
	}
	px, py := tap.NewPump(x, nil), tap.NewPump(y, nil)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); _ = px.Run(ctx, tx) }()
	go func() { defer wg.Done(); _ = py.Run(ctx, ty) }()
	return func() {
		cancel()
		_ = px.Close()
		_ = py.Close()
		wg.Wait()
	}
}

// checkGoroutines fails tb if, after retries, more goroutines run than
// before (minus slack).
func checkGoroutines(tb testing.TB, before int) {
	tb.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		now := runtime.NumGoroutine()
		if now <= before {
			return
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			buf = buf[:runtime.Stack(buf, true)]
			tb.Fatalf("goroutines: %d before, %d after\n%s", before, now, buf)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
