package netstack

import (
	"context"
	"fmt"
	"io"
	"testing"
)

// benchChunk is the bytes written per benchmark op.
const benchChunk = 128 << 10

// bulk streams b.N chunks from one stack to the other over TCP.
func bulk(b *testing.B, from, to *Net, toAddr string) {
	ln, err := to.Listen("tcp", toAddr)
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	type res struct {
		n   int64
		err error
	}
	done := make(chan res, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- res{0, err}
			return
		}
		defer c.Close()
		n, err := io.CopyBuffer(io.Discard, c, make([]byte, 256<<10))
		done <- res{n, err}
	}()
	c, err := from.Dial(context.Background(), "tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, benchChunk)
	b.SetBytes(benchChunk)
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := cpuTime()
	for range b.N {
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	_ = c.Close()
	r := <-done
	b.StopTimer()
	// CPU per byte, both stacks together: what the link costs when cores
	// are scarce, whatever the throughput of the moment.
	b.ReportMetric(float64(cpuTime()-cpu0)/float64(int64(b.N)*benchChunk>>20)/1e3, "cpu-µs/MiB")
	if r.err != nil {
		b.Fatal(r.err)
	}
	if r.n != int64(b.N)*benchChunk {
		b.Fatalf("received %d bytes, want %d", r.n, int64(b.N)*benchChunk)
	}
}

// BenchmarkBulk measures one TCP stream between two of these stacks joined
// by the frame tunnel (tap.Pump + tap.Conn on a unix socket), by MTU and
// software GSO.
func BenchmarkBulk(b *testing.B) {
	for _, mtu := range []int{1500, 65520} {
		for _, gso := range []bool{false, true} {
			b.Run(fmt.Sprintf("mtu=%d/gso=%v", mtu, gso), func(b *testing.B) {
				p := newPair(b, wireStream, func(c *Config) { c.MTU = mtu; c.noSoftwareGSO = !gso })
				bulk(b, p.a, p.b, "192.168.127.2:5001")
				b.ReportMetric(float64(p.a.Stats().DroppedOut), "drops")
			})
		}
	}
}

// BenchmarkDeviceWrite measures delivering one frame (an ARP request for
// the stack's address, which it answers) through Device.Write; the
// replies are read back, so it covers both directions of the link.
func BenchmarkDeviceWrite(b *testing.B) {
	n, err := New(Config{})
	if err != nil {
		b.Fatal(err)
	}
	defer n.Close()
	frame := arpRequest(hostMA, gwIP, selfIP)
	frames := [][]byte{frame}
	d := n.Device()
	bufs := [][]byte{make([]byte, d.MTU()+14)}
	sizes := make([]int, 1)
	b.ReportAllocs()
	b.SetBytes(int64(len(frame)))
	b.ResetTimer()
	for range b.N {
		if _, err := d.Write(frames, 0); err != nil {
			b.Fatal(err)
		}
		if _, err := d.Read(bufs, sizes, 0); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDeviceUDP measures a 1400-byte UDP datagram written by the
// application and read off the device: the outbound per-packet cost.
func BenchmarkDeviceUDP(b *testing.B) {
	n, err := New(Config{})
	if err != nil {
		b.Fatal(err)
	}
	defer n.Close()
	d := n.Device()
	// Teach the stack the gateway's MAC so no ARP is involved.
	if _, err := d.Write([][]byte{arpRequest(hostMA, gwIP, selfIP)}, 0); err != nil {
		b.Fatal(err)
	}
	bufs := [][]byte{make([]byte, d.MTU()+14)}
	sizes := make([]int, 1)
	if _, err := d.Read(bufs, sizes, 0); err != nil { // the ARP reply
		b.Fatal(err)
	}
	c, err := n.Dial(context.Background(), "udp", "192.168.127.1:9")
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	msg := make([]byte, 1400)
	b.ReportAllocs()
	b.SetBytes(int64(len(msg)))
	b.ResetTimer()
	for range b.N {
		if _, err := c.Write(msg); err != nil {
			b.Fatal(err)
		}
		if _, err := d.Read(bufs, sizes, 0); err != nil {
			b.Fatal(err)
		}
	}
}
