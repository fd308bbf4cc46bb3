package enclave_test

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/quenchnet/quench/tap"
	"github.com/quenchnet/quench/tap/taptest"
)

var (
	usEnclaveMAC = net.HardwareAddr{0x5a, 0x94, 0xef, 0xe4, 0x0c, 0xee}
	usGatewayMAC = net.HardwareAddr{0x5a, 0x94, 0xef, 0xe4, 0x0c, 0xdd}
	usEnclaveIP  = netip.MustParseAddr("192.168.127.2")
	usGatewayIP  = netip.MustParseAddr("192.168.127.1")
)

// prefixed returns frames, each preceded by its 2-byte little-endian
// length, as on the tunnel.
func prefixed(frames ...[]byte) []byte {
	var b []byte
	for _, f := range frames {
		b = binary.LittleEndian.AppendUint16(b, uint16(len(f)))
		b = append(b, f...)
	}
	return b
}

// garbage returns about size bytes of length-prefixed frames of random
// length up to maxLen with random contents; most are addressed to the
// enclave's MAC as IPv4 so that they reach its stack, and some of those
// are aimed at its IP address.
func garbage(rng *rand.Rand, size, maxLen int) []byte {
	out := make([]byte, 0, size+maxLen+2)
	for len(out) < size {
		f := make([]byte, 14+rng.IntN(maxLen-14+1))
		for i := range f {
			f[i] = byte(rng.Uint32())
		}
		if rng.IntN(4) != 0 {
			copy(f, usEnclaveMAC)
			copy(f[6:], usGatewayMAC)
			f[12], f[13] = 0x08, 0x00
			if len(f) >= 34 && rng.IntN(2) == 0 {
				f[14] = 0x45
				ip := usEnclaveIP.As4()
				copy(f[30:34], ip[:])
			}
		}
		out = binary.LittleEndian.AppendUint16(out, uint16(len(f)))
		out = append(out, f...)
	}
	return out
}

// TestUserspaceBadHost runs the enclave against a hostile host: each stream
// it accepts gets one kind of bad input and is then closed. The enclave
// must not crash, must keep its memory bounded, must reconnect after each,
// and must work once a real host takes the socket over.
func TestUserspaceBadHost(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 7))
	syn := taptest.TCPv4Frame(usEnclaveMAC, usGatewayMAC, taptest.TCPSegment{
		Src: netip.AddrPortFrom(usGatewayIP, 40000), Dst: netip.AddrPortFrom(usEnclaveIP, 80), Seq: 1, Flags: taptest.TCPFlagSYN,
	})
	otherMAC := net.HardwareAddr{0x02, 0, 0, 0, 0, 0x99}
	scenarios := []struct {
		name string
		data []byte
	}{
		{"truncated frame", append(binary.LittleEndian.AppendUint16(nil, 1000), make([]byte, 10)...)},
		{"zero length", []byte{0, 0}},
		{"length over the MTU", append([]byte{0xff, 0xff}, make([]byte, 100)...)},
		{"runt frames", prefixed([]byte{1}, make([]byte, 13), make([]byte, 14))},
		{"frames for other MACs", prefixed(
			taptest.EthernetFrame(otherMAC, usGatewayMAC, taptest.EtherTypeIPv4, syn[14:]),
			taptest.EthernetFrame(otherMAC, usGatewayMAC, taptest.EtherTypeIPv4, syn[14:]),
			taptest.ARPRequest(usGatewayMAC, usGatewayIP, netip.MustParseAddr("192.168.127.9")),
		)},
		{"SYN flood", func() []byte {
			var b []byte
			for i := range 2000 {
				s := taptest.TCPv4Frame(usEnclaveMAC, usGatewayMAC, taptest.TCPSegment{
					Src: netip.AddrPortFrom(usGatewayIP, uint16(10000+i)), Dst: netip.AddrPortFrom(usEnclaveIP, 80),
					Seq: uint32(i), Flags: taptest.TCPFlagSYN,
				})
				b = append(b, prefixed(s)...)
			}
			return b
		}()},
		{"small garbage flood", garbage(rng, 8<<20, 1514)},
		{"large garbage flood", garbage(rng, 8<<20, 65534)},
	}

	sock := usSocket(t)
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	var (
		wg     sync.WaitGroup
		served = make(chan string, len(scenarios))
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			if i >= len(scenarios) {
				_ = c.Close() // the test is done with bad hosts
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				tc, err := tap.NewConn(c, tap.Config{})
				if err != nil {
					return
				}
				if err := tc.ServerHandshake(); err != nil {
					return
				}
				drained := make(chan struct{})
				go func() { // swallow whatever the enclave sends
					defer close(drained)
					_, _ = io.Copy(io.Discard, c)
				}()
				_, _ = c.Write(scenarios[i].data)
				if uc, ok := c.(*net.UnixConn); ok {
					_ = uc.CloseWrite()
				}
				// Wait for the enclave to give up on this stream.
				select {
				case <-drained:
				case <-time.After(10 * time.Second):
				}
				served <- scenarios[i].name
			}()
		}
	}()
	stopFake := func() {
		_ = ln.Close()
		wg.Wait()
	}
	defer stopFake()

	// Pump buffers and the stack exist from Start on: measure after it.
	e := usStartEnclave(t, sock, nil)
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	goroutinesBefore := runtime.NumGoroutine()

	timeout := time.After(60 * time.Second)
	for range scenarios {
		select {
		case name := <-served:
			t.Logf("served %q; enclave status %+v", name, e.Status())
		case <-timeout:
			t.Fatalf("the enclave stopped reconnecting to the bad host; status %+v", e.Status())
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for e.Status().Reconnects < uint64(len(scenarios)) {
		if time.Now().After(deadline) {
			t.Fatalf("status %+v; want %d reconnects", e.Status(), len(scenarios))
		}
		time.Sleep(10 * time.Millisecond)
	}

	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	const bound = 64 << 20
	growth := int64(after.HeapInuse) - int64(before.HeapInuse)
	t.Logf("heap in use: %d MiB before, %d MiB after %d MiB of bad input", before.HeapInuse>>20, after.HeapInuse>>20, 16)
	if growth > bound {
		t.Errorf("heap grew by %d MiB (bound %d MiB)", growth>>20, bound>>20)
	}
	if g := runtime.NumGoroutine(); g > goroutinesBefore+20 {
		t.Errorf("goroutines: %d before the bad input, %d after", goroutinesBefore, g)
	}

	// A real host takes over the socket; the enclave works again.
	stopFake()
	usHost(t, sock)
	port := usHostHTTP(t, "recovered")
	c := e.HTTPClient()
	defer c.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for {
		rctx, rcancel := context.WithTimeout(ctx, 2*time.Second)
		got, err := usGet(rctx, c, fmt.Sprintf("http://192.168.127.254:%d/", port))
		rcancel()
		if err == nil && got == "recovered" {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("no request through the real host after the bad ones: %v (status %+v)", err, e.Status())
		}
		time.Sleep(20 * time.Millisecond)
	}
}
