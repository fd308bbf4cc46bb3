package egressfw

import (
	"sync"

	"github.com/quenchnet/quench/tap"
)

// Wrap returns dev with f between it and whoever pumps its frames (a
// tap.Pump): Read returns only the frames f passes out, and hands f's
// replies (resets, ICMP errors, NXDOMAIN answers) back to dev; Write
// delivers the host's frames once f has seen them, less the DNS answers
// it drops. Closing the result closes dev.
func Wrap(dev tap.Device, f *Filter) tap.Device {
	return &device{Device: dev, f: f}
}

type device struct {
	tap.Device
	f *Filter

	// wmu serialises writes to Device: the pump's (Write) and the
	// filter's replies, sent from Read (Device allows one writer).
	wmu  sync.Mutex
	kept [][]byte // guarded by wmu: Write's frames that pass
	one  [][]byte // guarded by wmu: a reply
}

// Read reads frames from the device and keeps those the filter passes,
// moved to the front of bufs in order. It reads again when the filter
// refuses a whole batch, so that it returns at least one frame or an error.
func (d *device) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	for {
		n, err := d.Device.Read(bufs, sizes, offset)
		k := 0
		for i := range n {
			frame := bufs[i][offset : offset+sizes[i]]
			pass, reply := d.f.Outbound(frame)
			if reply != nil {
				d.inject(reply)
			}
			if !pass {
				continue
			}
			if k != i {
				copy(bufs[k][offset:], frame)
				sizes[k] = sizes[i]
			}
			k++
		}
		if k > 0 || err != nil {
			return k, err
		}
	}
}

// inject hands a reply to the enclave's kernel; if the device refuses it,
// the enclave's program waits for its own timeout, as if the reply were
// lost.
func (d *device) inject(frame []byte) {
	d.wmu.Lock()
	defer d.wmu.Unlock()
	if d.one == nil {
		d.one = make([][]byte, 1)
	}
	d.one[0] = frame
	_, _ = d.Device.Write(d.one, 0)
	d.one[0] = nil
}

// Write shows each frame to the filter and writes those it lets in.
func (d *device) Write(bufs [][]byte, offset int) (int, error) {
	d.wmu.Lock()
	defer d.wmu.Unlock()
	kept := d.kept[:0]
	for _, b := range bufs {
		if d.f.Inbound(b[offset:]) {
			kept = append(kept, b)
		}
	}
	d.kept = kept
	if len(kept) == 0 {
		return len(bufs), nil
	}
	_, err := d.Device.Write(kept, offset)
	clear(kept)
	if err != nil {
		return 0, err
	}
	return len(bufs), nil
}
