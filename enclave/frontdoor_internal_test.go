package enclave

import (
	"crypto/tls"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/quenchnet/quench/internal/testutil"
)

// TestFrontDoorRidesOutEMFILE: the public HTTPS listener's accept loop
// keeps going after accept fails for want of file descriptors; the next
// client's handshake completes and its connection is handed on.
func TestFrontDoorRidesOutEMFILE(t *testing.T) {
	cert, err := selfSigned("enclave.example", netip.Addr{}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fl := testutil.FailAccepts(ln, syscall.EMFILE, 3)
	f := newFrontDoor(&tls.Config{Certificates: []tls.Certificate{*cert}}, ln.Addr(), 5*time.Second)
	f.accept(fl)
	defer func() {
		_ = ln.Close()
		f.close()
	}()
	got := make(chan net.Conn, 1)
	go func() {
		if c, err := f.h1.Accept(); err == nil {
			got <- c
		}
	}()
	d := &net.Dialer{Timeout: 5 * time.Second}
	c, err := tls.DialWithDialer(d, "tcp", ln.Addr().String(), &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatalf("TLS dial after accept failures: %v", err)
	}
	defer c.Close()
	select {
	case sc := <-got:
		_ = sc.Close()
	case <-time.After(5 * time.Second):
		t.Fatal("the handshaken connection was not handed on")
	}
	if fl.Left() != 0 {
		t.Fatalf("%d accept failures never happened", fl.Left())
	}
}
