package taptest

import (
	"fmt"
	"io"
	"os"
	"sync"

	"github.com/quenchnet/quench/tap"
)

// ChannelDevice is a tap.Device backed by channels, for tests.
//
// Seen from the network stack behind the device (as in wireguard-go's
// tuntest.ChannelTUN): frames the test sends on Outbound leave through the
// device, that is, Read returns them; frames written to the device with
// Write arrive on Inbound, as copies.
type ChannelDevice struct {
	// Outbound carries frames to be returned by Read. Tests send on it.
	Outbound chan []byte
	// Inbound receives a copy of each frame passed to Write. Tests
	// receive from it; Write blocks while it is full.
	Inbound chan []byte

	name  string
	mtu   int
	batch int

	closed    chan struct{}
	closeOnce sync.Once
}

var _ tap.Device = (*ChannelDevice)(nil)

// ChannelCapacity is the buffer size of ChannelDevice's channels.
const ChannelCapacity = 1024

// NewChannelDevice returns a ChannelDevice with the given MTU (0 means
// tap.DefaultMTU) and batch size tap.IdealBatchSize. Its channels hold
// ChannelCapacity frames each.
func NewChannelDevice(mtu int) *ChannelDevice {
	if mtu == 0 {
		mtu = tap.DefaultMTU
	}
	return &ChannelDevice{
		Outbound: make(chan []byte, ChannelCapacity),
		Inbound:  make(chan []byte, ChannelCapacity),
		name:     "chan0",
		mtu:      mtu,
		batch:    tap.IdealBatchSize,
		closed:   make(chan struct{}),
	}
}

// Read blocks for one frame from Outbound, then takes every further frame
// already queued, up to len(bufs) and BatchSize. A frame longer than its
// buffer is an error wrapping io.ErrShortBuffer. After Close it returns an
// error wrapping os.ErrClosed.
func (d *ChannelDevice) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	if len(bufs) == 0 {
		return 0, nil
	}
	limit := min(len(bufs), len(sizes), d.batch)
	var f []byte
	select {
	case <-d.closed:
		return 0, fmt.Errorf("taptest: read %s: %w", d.name, os.ErrClosed)
	case f = <-d.Outbound:
	}
	n := 0
	for {
		if len(f) > len(bufs[n])-offset {
			return n, fmt.Errorf("taptest: %d-byte frame for a %d-byte buffer: %w", len(f), len(bufs[n])-offset, io.ErrShortBuffer)
		}
		sizes[n] = copy(bufs[n][offset:], f)
		n++
		if n == limit {
			return n, nil
		}
		select {
		case f = <-d.Outbound:
		default:
			return n, nil
		}
	}
}

// Write sends a copy of each bufs[i][offset:] on Inbound. After Close it
// returns an error wrapping os.ErrClosed.
func (d *ChannelDevice) Write(bufs [][]byte, offset int) (int, error) {
	for i, b := range bufs {
		f := append([]byte(nil), b[offset:]...)
		select {
		case <-d.closed:
			return i, fmt.Errorf("taptest: write %s: %w", d.name, os.ErrClosed)
		default:
		}
		select {
		case <-d.closed:
			return i, fmt.Errorf("taptest: write %s: %w", d.name, os.ErrClosed)
		case d.Inbound <- f:
		}
	}
	return len(bufs), nil
}

// BatchSize returns tap.IdealBatchSize.
func (d *ChannelDevice) BatchSize() int { return d.batch }

// MTU returns the MTU given to NewChannelDevice.
func (d *ChannelDevice) MTU() int { return d.mtu }

// Name returns "chan0".
func (d *ChannelDevice) Name() string { return d.name }

// Close unblocks pending and later Reads and Writes. It may be called more
// than once.
func (d *ChannelDevice) Close() error {
	d.closeOnce.Do(func() { close(d.closed) })
	return nil
}

// Closed returns a channel that is closed when Close is called.
func (d *ChannelDevice) Closed() <-chan struct{} { return d.closed }
