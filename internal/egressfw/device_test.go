package egressfw

import (
	"testing"
	"time"

	"github.com/quenchnet/quench/tap/taptest"
)

// The wrapped device returns only the frames the filter passes, in order,
// hands the filter's replies back to the enclave, and drops the host's DNS
// answers that lead into the enclave.
func TestWrap(t *testing.T) {
	f, _ := newFilter(t, 0, "10.0.0.0/8:443", "api.example.com:443")
	dev := taptest.NewChannelDevice(0)
	w := Wrap(dev, f)
	defer w.Close()

	allowed1 := out("192.168.127.2:40000", "10.1.2.3:443", 1, syn)
	refused := out("192.168.127.2:40001", "11.1.2.3:443", 1, syn)
	allowed2 := out("192.168.127.2:40002", "10.1.2.4:443", 1, syn)
	for _, fr := range [][]byte{allowed1, refused, allowed2} {
		dev.Outbound <- fr
	}
	bufs, sizes := bufsFor(w)
	n := readAll(t, w, bufs, sizes, 2)
	if n != 2 || string(bufs[0][:sizes[0]]) != string(allowed1) || string(bufs[1][:sizes[1]]) != string(allowed2) {
		t.Fatalf("Read returned %d frames, want the two allowed ones in order", n)
	}
	select {
	case r := <-dev.Inbound:
		checkReply(t, refused, r, protoTCP)
	case <-time.After(5 * time.Second):
		t.Fatal("no reset written back to the device")
	}

	// A batch the filter refuses whole: Read waits for the next frame
	// rather than return none.
	dev.Outbound <- out("192.168.127.2:40003", "11.1.2.3:443", 1, syn)
	dev.Outbound <- out("192.168.127.2:40000", "10.1.2.3:443", 2, ack)
	if n := readAll(t, w, bufs, sizes, 1); n != 1 {
		t.Fatalf("Read returned %d frames, want 1", n)
	}
	<-dev.Inbound // the reset

	// Host to enclave: a good answer and a bad one in one batch.
	good := answer(t, "api.example.com.", "203.0.113.10")
	bad := answer(t, "api.example.com.", "127.0.0.1")
	data := in("10.1.2.3:443", "192.168.127.2:40000", ack)
	if k, err := w.Write([][]byte{good, bad, data}, 0); err != nil || k != 3 {
		t.Fatalf("Write = %d, %v", k, err)
	}
	for _, want := range [][]byte{good, data} {
		select {
		case got := <-dev.Inbound:
			if string(got) != string(want) {
				t.Fatalf("device got %x, want %x", got, want)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("frame not written to the device")
		}
	}
	select {
	case got := <-dev.Inbound:
		t.Fatalf("unexpected frame written: %x", got)
	default:
	}
}

func bufsFor(d interface {
	BatchSize() int
	MTU() int
}) ([][]byte, []int) {
	bufs := make([][]byte, d.BatchSize())
	for i := range bufs {
		bufs[i] = make([]byte, d.MTU()+14)
	}
	return bufs, make([]int, len(bufs))
}

// readAll reads until want frames have come (the channel device may split
// what was queued across calls).
func readAll(t *testing.T, d interface {
	Read([][]byte, []int, int) (int, error)
}, bufs [][]byte, sizes []int, want int) int {
	t.Helper()
	got := 0
	for got < want {
		n, err := d.Read(bufs[got:], sizes[got:], 0)
		if err != nil {
			t.Fatal(err)
		}
		got += n
	}
	return got
}

// The pump reads (and the filter injects its replies) while it writes the
// host's frames: the device sees one writer at a time.
func TestWrapConcurrent(t *testing.T) {
	f, _ := newFilter(t, 0, "10.0.0.0/8:443")
	dev := taptest.NewChannelDevice(0)
	w := Wrap(dev, f)
	defer w.Close()
	const n = 500
	done := make(chan struct{})
	go func() { // the enclave's kernel: takes every frame written to the device
		for {
			select {
			case <-dev.Inbound:
			case <-done:
				return
			}
		}
	}()
	go func() {
		for i := range n {
			dev.Outbound <- out("192.168.127.2:40000", "11.1.2.3:443", uint32(i), syn) // refused: a reset is injected
			dev.Outbound <- out("192.168.127.2:40001", "10.1.2.3:443", uint32(i), syn)
		}
	}()
	writeErr := make(chan error, 1)
	go func() {
		frame := in("10.1.2.3:443", "192.168.127.2:40001", ack)
		for range n {
			if _, err := w.Write([][]byte{frame}, 0); err != nil {
				writeErr <- err
				return
			}
		}
		writeErr <- nil
	}()
	bufs, sizes := bufsFor(w)
	for got := 0; got < n; {
		k, err := w.Read(bufs, sizes, 0)
		if err != nil {
			t.Fatal(err)
		}
		got += k
	}
	if err := <-writeErr; err != nil {
		t.Fatal(err)
	}
	close(done)
}
