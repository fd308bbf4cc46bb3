// Package dnswire holds the DNS message handling that quench-host's DNS
// server and the enclave's DNS proxy share: the framing of DNS over TCP
// (RFC 7766), and the EDNS payload size of queries sent over TCP.
//
// gvisor-tap-vsock's DNS server (which quench-host serves, and gvproxy is)
// truncates every answer to the size a query's EDNS record gives, over TCP
// too, where that size is meaningless (RFC 6891 §6.2.5 concerns UDP). glibc
// with "options edns0" asks for 1200 bytes: its UDP answer comes back
// truncated, it asks again over TCP with the same 1200, and gets the same
// truncated answer, which it then takes as it is (an answer of 100
// addresses gave 73; a TXT record over 1200 bytes, none). WidenEDNS raises
// that size in a query read from TCP before the server sees it.
package dnswire

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"

	"golang.org/x/net/dns/dnsmessage"
)

// MinMessage is a DNS header's size: shorter messages are not DNS.
const MinMessage = 12

// ReadMessage reads one DNS message after its length in 2 bytes.
func ReadMessage(r io.Reader) ([]byte, error) {
	var n [2]byte
	if _, err := io.ReadFull(r, n[:]); err != nil {
		return nil, err
	}
	size := int(binary.BigEndian.Uint16(n[:]))
	if size < MinMessage {
		return nil, fmt.Errorf("dnswire: DNS message of %d bytes", size)
	}
	msg := make([]byte, size)
	if _, err := io.ReadFull(r, msg); err != nil {
		return nil, err
	}
	return msg, nil
}

// WriteMessage writes msg after its length, in one write.
func WriteMessage(w io.Writer, msg []byte) error {
	if len(msg) > 65535 {
		return fmt.Errorf("dnswire: DNS message of %d bytes", len(msg))
	}
	b := make([]byte, 2+len(msg))
	binary.BigEndian.PutUint16(b, uint16(len(msg)))
	copy(b[2:], msg)
	_, err := w.Write(b)
	return err
}

// Reply returns an answer without records to the query with header h and
// questions qs, with rcode: what a resolver gets from the enclave for a
// name refused there (NXDOMAIN) or an exchange that failed (SERVFAIL).
func Reply(h dnsmessage.Header, qs []dnsmessage.Question, rcode dnsmessage.RCode) ([]byte, error) {
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{
		ID: h.ID, Response: true, OpCode: h.OpCode,
		RecursionDesired: h.RecursionDesired, RecursionAvailable: true,
		RCode: rcode,
	})
	if err := b.StartQuestions(); err != nil {
		return nil, err
	}
	for _, q := range qs {
		if err := b.Question(q); err != nil {
			return nil, err
		}
	}
	return b.Finish()
}

// IsAnswerTo reports whether msg is a DNS response with query's ID.
func IsAnswerTo(msg, query []byte) bool {
	return len(msg) >= MinMessage && len(query) >= 2 && msg[0] == query[0] && msg[1] == query[1] && msg[2]&0x80 != 0
}

// WidenEDNS returns the query msg with the UDP payload size of its EDNS
// record raised to 65535, for a server that would otherwise truncate its
// answer over TCP to that size; msg itself when it has no such record, is
// not a query or cannot be read (the server then gets it as it came). It
// walks the message rather than unpack it, and changes those 2 bytes only:
// unpacked whole, a query built of names compressed to 2 bytes (each 256
// unpacked) cost quench-host, for a hostile enclave's, 200 times its size
// in memory.
func WidenEDNS(msg []byte) []byte {
	if len(msg) < MinMessage || msg[2]&0x80 != 0 {
		return msg // not a query
	}
	var out []byte
	off := MinMessage
	for sec := range 4 { // questions, answers, authorities, additionals
		for range binary.BigEndian.Uint16(msg[4+2*sec:]) {
			if off = skipName(msg, off); off < 0 {
				return msg
			}
			if sec == 0 { // a question: its type and class
				if off += 4; off > len(msg) {
					return msg
				}
				continue
			}
			if off+10 > len(msg) { // type, class, TTL, data length
				return msg
			}
			if sec == 3 && dnsmessage.Type(binary.BigEndian.Uint16(msg[off:])) == dnsmessage.TypeOPT &&
				binary.BigEndian.Uint16(msg[off+2:]) != 65535 {
				if out == nil {
					out = append([]byte(nil), msg...)
				}
				binary.BigEndian.PutUint16(out[off+2:], 65535) // OPT's class: the UDP payload size
			}
			if off += 10 + int(binary.BigEndian.Uint16(msg[off+8:])); off > len(msg) {
				return msg
			}
		}
	}
	if out == nil {
		return msg
	}
	return out
}

// skipName returns the offset in msg after the name at off, or -1 if it
// cannot be read.
func skipName(msg []byte, off int) int {
	for off < len(msg) {
		switch c := int(msg[off]); c & 0xC0 {
		case 0x00: // a label, or the root
			if c == 0 {
				return off + 1
			}
			off += 1 + c
		case 0xC0: // a pointer: the name ends here
			if off+2 > len(msg) {
				return -1
			}
			return off + 2
		default: // extended label types (RFC 6891 §5)
			return -1
		}
	}
	return -1
}

// WidenConn wraps c, a DNS server's TCP connection, so that the queries
// read from it pass through WidenEDNS. Bytes that do not frame DNS
// messages are passed on as they come, for the server to refuse.
func WidenConn(c net.Conn) net.Conn { return &widenConn{Conn: c} }

type widenConn struct {
	net.Conn
	in  []byte // read from the connection, not yet a whole message
	out []byte // ready for Read
	raw bool   // the stream stopped framing DNS: the rest passes unchanged
}

func (c *widenConn) Read(b []byte) (int, error) {
	if c.raw && len(c.out) == 0 {
		return c.Conn.Read(b)
	}
	for len(c.out) == 0 {
		if len(c.in) >= 2 {
			size := int(binary.BigEndian.Uint16(c.in))
			if size < MinMessage {
				// Not DNS: the rest goes through unchanged.
				c.out, c.in, c.raw = c.in, nil, true
				break
			}
			if len(c.in) >= 2+size {
				msg := WidenEDNS(c.in[2 : 2+size])
				out := make([]byte, 2+len(msg))
				binary.BigEndian.PutUint16(out, uint16(len(msg)))
				copy(out[2:], msg)
				c.out, c.in = out, c.in[2+size:]
				break
			}
		}
		var buf [4096]byte
		n, err := c.Conn.Read(buf[:])
		c.in = append(c.in, buf[:n]...)
		if err != nil {
			if len(c.in) == 0 {
				return 0, err
			}
			// A message cut short: what came goes on, then the error.
			c.out, c.in = c.in, nil
			break
		}
	}
	n := copy(b, c.out)
	c.out = c.out[n:]
	return n, nil
}
