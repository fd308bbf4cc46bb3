package tap_test

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"testing"

	"github.com/quenchnet/quench/tap"
)

var benchSizes = []int{1514, 65534} // largest frames at MTU 1500 and at DefaultMTU

// BenchmarkWriteFrames measures encoding and coalescing a batch of
// IdealBatchSize frames into ≤ 32 KiB writes to a stream that discards.
func BenchmarkWriteFrames(b *testing.B) {
	for _, size := range benchSizes {
		b.Run(fmt.Sprint(size), func(b *testing.B) {
			c := newConn(b, &discardConn{}, tap.Config{})
			frames := sizedFrames(tap.IdealBatchSize, size)
			b.SetBytes(int64(size * len(frames)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := c.WriteFrames(frames, 0); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(c.Stats().WriteCalls)/float64(c.Stats().FramesWritten), "writes/frame")
		})
	}
}

// BenchmarkNext measures decoding frames from a stream that always has a
// full buffer to give.
func BenchmarkNext(b *testing.B) {
	for _, size := range benchSizes {
		b.Run(fmt.Sprint(size), func(b *testing.B) {
			conn := &fakeConn{r: &loopReader{data: encode(sizedFrames(7, size)...)}}
			c := newConn(b, conn, tap.Config{})
			b.SetBytes(int64(size))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := c.Next(); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(c.Stats().ReadCalls)/float64(c.Stats().FramesRead), "reads/frame")
		})
	}
}

// BenchmarkUnixThroughput sends frames one way over a unix socket, the
// VSOCK stand-in: "batched" is tap.Conn at both ends; "per-frame" is the
// gvforwarder/gvproxy way (one write per frame with a fresh slice, and a
// bufio reader with two ReadFulls and a new buffer per frame).
func BenchmarkUnixThroughput(b *testing.B) {
	for _, size := range benchSizes {
		for _, mode := range []string{"batched", "per-frame"} {
			b.Run(fmt.Sprintf("%s/%d", mode, size), func(b *testing.B) {
				a, z := unixPair(b)
				frames := sizedFrames(tap.IdealBatchSize, size)
				b.SetBytes(int64(size))
				b.ReportAllocs()
				n := b.N
				errc := make(chan error, 1)
				b.ResetTimer()
				if mode == "batched" {
					go func() { errc <- sendBatched(a, frames, n) }()
					receiveBatched(b, z, n)
				} else {
					go func() { errc <- sendPerFrame(a, frames, n) }()
					receivePerFrame(b, z, n)
				}
				b.StopTimer()
				if err := <-errc; err != nil {
					b.Fatal(err)
				}
				b.ReportMetric(float64(n)*float64(size)*8/b.Elapsed().Seconds()/1e9, "Gbit/s")
			})
		}
	}
}

func sendBatched(nc net.Conn, frames [][]byte, n int) error {
	c, err := tap.NewConn(nc, tap.Config{})
	if err != nil {
		return err
	}
	for n > 0 {
		k := min(n, len(frames))
		if _, err := c.WriteFrames(frames[:k], 0); err != nil {
			return err
		}
		n -= k
	}
	return nil
}

func receiveBatched(b *testing.B, nc net.Conn, n int) {
	c := newConn(b, nc, tap.Config{})
	batch := make([][]byte, tap.IdealBatchSize)
	for n > 0 {
		k, err := c.NextBatch(batch[:min(n, len(batch))])
		if err != nil {
			b.Fatal(err)
		}
		n -= k
	}
}

// sendPerFrame is gvforwarder's rx loop (cmd/vm/main_linux.go).
func sendPerFrame(conn net.Conn, frames [][]byte, n int) error {
	size := make([]byte, 2)
	for i := range n {
		frame := frames[i%len(frames)]
		binary.LittleEndian.PutUint16(size, uint16(len(frame)))
		if _, err := conn.Write(append(size, frame...)); err != nil {
			return err
		}
	}
	return nil
}

// receivePerFrame is gvproxy's rxStream loop (pkg/tap/switch.go).
func receivePerFrame(b *testing.B, conn net.Conn, n int) {
	reader := bufio.NewReader(conn)
	sizeBuf := make([]byte, 2)
	for range n {
		if _, err := io.ReadFull(reader, sizeBuf); err != nil {
			b.Fatal(err)
		}
		buf := make([]byte, binary.LittleEndian.Uint16(sizeBuf))
		if _, err := io.ReadFull(reader, buf); err != nil {
			b.Fatal(err)
		}
	}
}
