package enclave

import (
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
	"testing"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/quenchnet/quench/policy"
)

func dnsQuery(t *testing.T, id uint16, name string) []byte {
	t.Helper()
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: id, RecursionDesired: true})
	if err := b.StartQuestions(); err != nil {
		t.Fatal(err)
	}
	if err := b.Question(dnsmessage.Question{Name: dnsmessage.MustNewName(name), Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET}); err != nil {
		t.Fatal(err)
	}
	q, err := b.Finish()
	if err != nil {
		t.Fatal(err)
	}
	return q
}

// TestPolicedDNSConnStream: over TCP (length-prefixed messages) a refused
// query is answered NXDOMAIN, with its ID and question, from the conn
// itself; an allowed one goes to the server unchanged; a write that is not
// a query is refused.
func TestPolicedDNSConnStream(t *testing.T) {
	p, err := policy.Parse([]string{"ok.example:443"})
	if err != nil {
		t.Fatal(err)
	}
	a, z := net.Pipe()
	defer a.Close()
	defer z.Close()
	c := &policedDNSConn{Conn: a, stream: true, p: p, log: slog.New(slog.DiscardHandler)}
	frame := func(m []byte) []byte { return append(binary.BigEndian.AppendUint16(nil, uint16(len(m))), m...) }

	if _, err := c.Write(frame(dnsQuery(t, 7, "leak.example."))); err != nil {
		t.Fatal(err)
	}
	var n [2]byte
	if _, err := io.ReadFull(c, n[:]); err != nil {
		t.Fatal(err)
	}
	ans := make([]byte, binary.BigEndian.Uint16(n[:]))
	if _, err := io.ReadFull(c, ans); err != nil {
		t.Fatal(err)
	}
	var m dnsmessage.Message
	if err := m.Unpack(ans); err != nil {
		t.Fatal(err)
	}
	if m.ID != 7 || !m.Response || m.RCode != dnsmessage.RCodeNameError || len(m.Questions) != 1 || m.Questions[0].Name.String() != "leak.example." {
		t.Errorf("answer to a refused query: %+v", m)
	}

	q := frame(dnsQuery(t, 8, "ok.example."))
	got := make(chan []byte, 1)
	go func() {
		b := make([]byte, len(q))
		_, _ = io.ReadFull(z, b)
		got <- b
	}()
	if _, err := c.Write(q); err != nil {
		t.Fatal(err)
	}
	if b := <-got; string(b) != string(q) {
		t.Error("an allowed query did not reach the server unchanged")
	}

	for _, bad := range [][]byte{{0}, {0, 5, 1, 2}, frame([]byte("not dns"))} {
		if _, err := c.Write(bad); !errors.Is(err, errDNSQuery) {
			t.Errorf("Write(%q) = %v, want errDNSQuery", bad, err)
		}
	}
}
