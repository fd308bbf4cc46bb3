package dnswire

import (
	"bytes"
	"errors"
	"io"
	"net"
	"runtime"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/quenchnet/quench/internal/testutil"
)

func query(t testing.TB, edns int) []byte {
	t.Helper()
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: 7, RecursionDesired: true})
	b.EnableCompression()
	_ = b.StartQuestions()
	_ = b.Question(dnsmessage.Question{Name: dnsmessage.MustNewName("big.example."), Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET})
	if edns > 0 {
		_ = b.StartAdditionals()
		var h dnsmessage.ResourceHeader
		if err := h.SetEDNS0(edns, dnsmessage.RCodeSuccess, false); err != nil {
			t.Fatal(err)
		}
		if err := b.OPTResource(h, dnsmessage.OPTResource{}); err != nil {
			t.Fatal(err)
		}
	}
	msg, err := b.Finish()
	if err != nil {
		t.Fatal(err)
	}
	return msg
}

func ednsSize(t *testing.T, msg []byte) int {
	t.Helper()
	var m dnsmessage.Message
	if err := m.Unpack(msg); err != nil {
		t.Fatal(err)
	}
	for _, a := range m.Additionals {
		if a.Header.Type == dnsmessage.TypeOPT {
			return int(a.Header.Class)
		}
	}
	return -1
}

func TestWidenEDNS(t *testing.T) {
	q := query(t, 1200)
	w := WidenEDNS(q)
	if got := ednsSize(t, w); got != 65535 {
		t.Errorf("EDNS size %d after WidenEDNS, want 65535", got)
	}
	var m dnsmessage.Message
	if err := m.Unpack(w); err != nil || m.ID != 7 || len(m.Questions) != 1 || m.Questions[0].Name.String() != "big.example." {
		t.Errorf("widened query %+v (%v) lost its header or question", m, err)
	}
	plain := query(t, 0)
	if got := WidenEDNS(plain); !bytes.Equal(got, plain) {
		t.Error("a query without EDNS was changed")
	}
	junk := []byte("not a DNS message at all")
	if got := WidenEDNS(junk); !bytes.Equal(got, junk) {
		t.Error("junk was changed")
	}
	resp := append([]byte(nil), q...)
	resp[2] |= 0x80 // QR: a response
	if got := WidenEDNS(resp); !bytes.Equal(got, resp) {
		t.Error("a response was changed")
	}
}

// chunkConn is a net.Conn whose Read returns the stream n bytes at a time.
type chunkConn struct {
	net.Conn
	r *bytes.Reader
	n int
}

func (c *chunkConn) Read(b []byte) (int, error) { return c.r.Read(b[:min(len(b), c.n)]) }

func frame(msgs ...[]byte) []byte {
	var b bytes.Buffer
	for _, m := range msgs {
		_ = WriteMessage(&b, m)
	}
	return b.Bytes()
}

func TestWidenConn(t *testing.T) {
	q, plain := query(t, 1200), query(t, 0)
	in := frame(q, plain, q)
	for _, chunk := range []int{1, 3, 13, 4096} {
		c := WidenConn(&chunkConn{r: bytes.NewReader(in), n: chunk})
		for i, want := range []int{65535, -1, 65535} {
			msg, err := ReadMessage(c)
			if err != nil {
				t.Fatalf("chunks of %d, message %d: %v", chunk, i, err)
			}
			if got := ednsSize(t, msg); got != want {
				t.Errorf("chunks of %d, message %d: EDNS size %d, want %d", chunk, i, got, want)
			}
		}
		if _, err := ReadMessage(c); !errors.Is(err, io.EOF) {
			t.Errorf("chunks of %d: after the messages %v, want EOF", chunk, err)
		}
	}
	// A stream cut short mid-message arrives as it was, then the error.
	cut := frame(q)[:10]
	got, err := io.ReadAll(WidenConn(&chunkConn{r: bytes.NewReader(cut), n: 4}))
	if err != nil || !bytes.Equal(got, cut) {
		t.Errorf("cut stream: %x, %v; want %x", got, err, cut)
	}
	// Deadlines and the rest pass through to the connection.
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	wc := WidenConn(a)
	_ = wc.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
	if _, err := wc.Read(make([]byte, 1)); err == nil {
		t.Error("read past the deadline succeeded")
	}
}

// FuzzWidenConn: whatever bytes a client sends, the server reads the same
// stream except that each whole DNS message in it is WidenEDNS's.
func FuzzWidenConn(f *testing.F) {
	f.Add(frame(query(f, 1200), query(f, 0)), 7)
	f.Add([]byte{0, 3, 1, 2, 3, 4, 5}, 1)
	f.Add(frame(query(f, 512))[:20], 5)
	f.Fuzz(func(t *testing.T, in []byte, chunk int) {
		if chunk <= 0 || chunk > 1<<16 {
			chunk = 1
		}
		got, err := io.ReadAll(WidenConn(&chunkConn{r: bytes.NewReader(in), n: chunk}))
		if err != nil {
			t.Fatal(err)
		}
		// The expected stream, message by message.
		var want []byte
		rest := in
		for len(rest) >= 2 {
			size := int(rest[0])<<8 | int(rest[1])
			if size < MinMessage || len(rest) < 2+size {
				break
			}
			want = append(want, frame(WidenEDNS(rest[2:2+size]))...)
			rest = rest[2+size:]
		}
		want = append(want, rest...)
		if !bytes.Equal(got, want) {
			t.Fatalf("read %x, want %x", got, want)
		}
	})
}

// TestWidenEDNSCost: quench-host widens every query a client (a hostile
// enclave) sends its DNS over TCP; a query built to be costly must not
// make it allocate many times the query's size, nor take long. A query
// has one question and at most an EDNS record and a signature besides.
func TestWidenEDNSCost(t *testing.T) {
	for _, sec := range []int{0, 3} {
		msg := testutil.CostlyDNSQuery(sec)
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		start := time.Now()
		const runs = 10
		for range runs {
			WidenEDNS(msg)
		}
		took := time.Since(start) / runs
		runtime.ReadMemStats(&after)
		if n := (after.TotalAlloc - before.TotalAlloc) / runs; n > 4*uint64(len(msg)) {
			t.Errorf("section %d: WidenEDNS of a %d-byte query allocated %d bytes (%v); want at most 4 times its size", sec, len(msg), n, took)
		}
	}
	// A usual query is still widened.
	if got := ednsSize(t, WidenEDNS(query(t, 1200))); got != 65535 {
		t.Errorf("EDNS size %d after WidenEDNS, want 65535", got)
	}
}
