package tap_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"github.com/quenchnet/quench/tap"
	"github.com/quenchnet/quench/tap/taptest"
)

// attach starts p.Run with the enclave end of a new unix socket pair and
// returns the host end and the channel Run's result arrives on.
func attach(t *testing.T, ctx context.Context, p *tap.Pump) (*tap.Conn, <-chan error) {
	t.Helper()
	a, b := unixPair(t)
	enclave, host := newConn(t, a, tap.Config{}), newConn(t, b, tap.Config{})
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx, enclave) }()
	// Device frames are dropped until the Conn is attached.
	waitFor(t, "Run to attach", p.Attached)
	return host, done
}

// exchange checks that frames flow both ways between dev and host.
func exchange(t *testing.T, dev *taptest.ChannelDevice, host *tap.Conn, frames [][]byte) {
	t.Helper()
	// Device to host.
	for _, f := range frames {
		dev.Outbound <- f
	}
	got, err := readN(host, len(frames))
	if err != nil {
		t.Fatalf("host reading: %v", err)
	}
	if diff := diffFrames(frames, got); diff != "" {
		t.Fatalf("device to host (-want +got):\n%s", diff)
	}
	// Host to device.
	if err := writeAll(host, frames); err != nil {
		t.Fatalf("host writing: %v", err)
	}
	got = got[:0]
	for range frames {
		select {
		case f := <-dev.Inbound:
			got = append(got, f)
		case <-time.After(10 * time.Second):
			t.Fatalf("device received %d frames, want %d", len(got), len(frames))
		}
	}
	if diff := diffFrames(frames, got); diff != "" {
		t.Fatalf("host to device (-want +got):\n%s", diff)
	}
}

func waitRun(t *testing.T, done <-chan error) error {
	t.Helper()
	select {
	case err := <-done:
		return err
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return")
		return nil
	}
}

// waitFor polls cond for up to 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestPumpReconnect pumps both ways, drops the stream, checks Run reports
// io.EOF and frames are dropped while detached, then attaches a second
// stream to the same device, and finally checks Close leaves no goroutine.
func TestPumpReconnect(t *testing.T) {
	dev := taptest.NewChannelDevice(0)
	p := tap.NewPump(dev, nil)
	frames := append(realFrames(), randomFrames(10, 500, 1, 9014)...)

	host, done := attach(t, t.Context(), p)
	exchange(t, dev, host, frames)

	// The host goes away: Run returns io.EOF and leaves the device open.
	host.Close()
	if err := waitRun(t, done); err != io.EOF {
		t.Fatalf("Run after host closed = %v, want io.EOF", err)
	}
	select {
	case <-dev.Closed():
		t.Fatal("Run closed the device")
	default:
	}

	// Cable unplugged: device frames are dropped and counted.
	before := p.Stats().Dropped
	dev.Outbound <- frames[0]
	waitFor(t, "the detached frame to be dropped", func() bool { return p.Stats().Dropped == before+1 })

	// Reconnect: the same device works with a new stream.
	host2, done2 := attach(t, t.Context(), p)
	exchange(t, dev, host2, frames[:50])

	// The pump counts a batch after the device's Write returns, which can
	// be after the device handed the frames on: wait for the count.
	want := uint64(len(frames) + 50)
	waitFor(t, "the stats to count every frame", func() bool {
		st := p.Stats()
		return st.ToConn >= want && st.ToDevice >= want
	})
	if st := p.Stats(); st.ToConn != want || st.ToDevice != want {
		t.Errorf("Stats = %+v, want ToConn = ToDevice = %d", st, want)
	}

	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if err := waitRun(t, done2); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Run after Close = %v, want net.ErrClosed", err)
	}
	select {
	case <-dev.Closed():
	default:
		t.Error("Close did not close the device")
	}
	checkNoPumpGoroutines(t)

	// Run after Close refuses and closes its Conn.
	a, b := unixPair(t)
	if err := p.Run(t.Context(), newConn(t, a, tap.Config{})); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Run after Close = %v, want net.ErrClosed", err)
	}
	if _, err := b.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("peer read after refused Run = %v, want io.EOF (Conn closed)", err)
	}
}

// TestPumpStops checks each way Run ends and what it reports.
func TestPumpStops(t *testing.T) {
	tests := []struct {
		name string
		// stop ends the Run; host is the peer of the Run's Conn.
		stop func(t *testing.T, cancel context.CancelFunc, dev *taptest.ChannelDevice, host *tap.Conn)
		want error
	}{
		{"host closes", func(_ *testing.T, _ context.CancelFunc, _ *taptest.ChannelDevice, host *tap.Conn) {
			host.Close()
		}, io.EOF},
		{"context cancelled", func(_ *testing.T, cancel context.CancelFunc, _ *taptest.ChannelDevice, _ *tap.Conn) {
			cancel()
		}, context.Canceled},
		{"zero-length frame from host", func(t *testing.T, _ context.CancelFunc, _ *taptest.ChannelDevice, host *tap.Conn) {
			if _, err := host.NetConn().Write(prefix(0)); err != nil {
				t.Fatal(err)
			}
		}, tap.ErrZeroLengthFrame},
		{"oversized frame from host", func(t *testing.T, _ context.CancelFunc, _ *taptest.ChannelDevice, host *tap.Conn) {
			if _, err := host.NetConn().Write(prefix(65535)); err != nil {
				t.Fatal(err)
			}
		}, tap.ErrFrameTooLarge},
		{"host dies inside a frame", func(t *testing.T, _ context.CancelFunc, _ *taptest.ChannelDevice, host *tap.Conn) {
			if _, err := host.NetConn().Write(append(prefix(100), "short"...)); err != nil {
				t.Fatal(err)
			}
			host.Close()
		}, io.ErrUnexpectedEOF},
		{"device closed", func(_ *testing.T, _ context.CancelFunc, dev *taptest.ChannelDevice, _ *tap.Conn) {
			dev.Close()
		}, os.ErrClosed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dev := taptest.NewChannelDevice(0)
			p := tap.NewPump(dev, nil)
			defer p.Close()
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			host, done := attach(t, ctx, p)
			exchange(t, dev, host, realFrames())
			tt.stop(t, cancel, dev, host)
			err := waitRun(t, done)
			if !errors.Is(err, tt.want) {
				t.Fatalf("Run = %v, want %v", err, tt.want)
			}
			// Run closed its Conn: the host sees the end.
			if tt.want != io.EOF && tt.want != io.ErrUnexpectedEOF {
				if _, err := host.Next(); err == nil {
					t.Error("host Next succeeded after Run returned; want the Conn closed")
				}
			}
			if err := p.Close(); err != nil {
				t.Fatal(err)
			}
			checkNoPumpGoroutines(t)
		})
	}
}

// TestPumpDeviceFailureIsFinal checks that once the device has failed,
// later Runs report it at once.
func TestPumpDeviceFailureIsFinal(t *testing.T) {
	dev := taptest.NewChannelDevice(0)
	p := tap.NewPump(dev, nil)
	defer p.Close()
	_, done := attach(t, t.Context(), p)
	if err := p.DeviceErr(); err != nil {
		t.Fatalf("DeviceErr = %v with a working device", err)
	}
	dev.Close()
	if err := waitRun(t, done); !errors.Is(err, os.ErrClosed) {
		t.Fatalf("Run = %v, want os.ErrClosed", err)
	}
	if err := p.DeviceErr(); !errors.Is(err, os.ErrClosed) {
		t.Fatalf("DeviceErr = %v, want os.ErrClosed", err)
	}
	a, _ := unixPair(t)
	if err := p.Run(t.Context(), newConn(t, a, tap.Config{})); !errors.Is(err, os.ErrClosed) {
		t.Fatalf("second Run = %v, want os.ErrClosed", err)
	}
}

// TestPumpOneRunAtATime checks that a concurrent Run is refused.
func TestPumpOneRunAtATime(t *testing.T) {
	dev := taptest.NewChannelDevice(0)
	p := tap.NewPump(dev, nil)
	defer p.Close()
	host, done := attach(t, t.Context(), p)
	exchange(t, dev, host, realFrames()) // the first Run is attached

	a, b := unixPair(t)
	if err := p.Run(t.Context(), newConn(t, a, tap.Config{})); err == nil {
		t.Fatal("concurrent Run = nil, want an error")
	}
	if _, err := b.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("peer of refused Run reads %v, want io.EOF", err)
	}
	exchange(t, dev, host, realFrames()) // the first Run is unharmed
	host.Close()
	if err := waitRun(t, done); err != io.EOF {
		t.Errorf("Run = %v, want io.EOF", err)
	}
}

// flakyDevice refuses to write frames that start with 0xee.
type flakyDevice struct{ *taptest.ChannelDevice }

func (d flakyDevice) Write(bufs [][]byte, offset int) (int, error) {
	for _, b := range bufs {
		if b[offset] == 0xee {
			return 0, fmt.Errorf("flaky: %w", errors.ErrUnsupported)
		}
	}
	return d.ChannelDevice.Write(bufs, offset)
}

// TestPumpDeviceWriteError checks that a frame the device refuses is
// counted and dropped without ending the Run.
func TestPumpDeviceWriteError(t *testing.T) {
	dev := taptest.NewChannelDevice(0)
	p := tap.NewPump(flakyDevice{dev}, nil)
	defer p.Close()
	host, done := attach(t, t.Context(), p)
	if _, err := host.WriteFrames([][]byte{bytes.Repeat([]byte{0xee}, 60)}, 0); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the device write error", func() bool { return p.Stats().DeviceWriteErrors == 1 })
	exchange(t, dev, host, realFrames())
	host.Close()
	if err := waitRun(t, done); err != io.EOF {
		t.Errorf("Run = %v, want io.EOF", err)
	}
}

// TestPumpCloseWithoutRun checks Close on a Pump that never ran.
func TestPumpCloseWithoutRun(t *testing.T) {
	dev := taptest.NewChannelDevice(0)
	p := tap.NewPump(dev, nil)
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatalf("second Close = %v", err)
	}
	select {
	case <-dev.Closed():
	default:
		t.Error("Close did not close the device")
	}
}
