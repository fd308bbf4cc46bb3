package tap_test

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net/http"
	"testing"
	"testing/iotest"

	"github.com/quenchnet/quench/tap"
)

// fuzzMTU is small so that both length errors are easy to reach.
const fuzzMTU = 1500

// referenceDecode is the obvious decoder of the wire format: it returns the
// frames before the first error and that error.
func referenceDecode(b []byte, maxFrame int) ([][]byte, error) {
	var frames [][]byte
	for {
		if len(b) == 0 {
			return frames, io.EOF
		}
		if len(b) < 2 {
			return frames, io.ErrUnexpectedEOF
		}
		n := int(binary.LittleEndian.Uint16(b))
		switch {
		case n == 0:
			return frames, tap.ErrZeroLengthFrame
		case n > maxFrame:
			return frames, tap.ErrFrameTooLarge
		case len(b) < 2+n:
			return frames, io.ErrUnexpectedEOF
		}
		frames = append(frames, b[2:2+n])
		b = b[2+n:]
	}
}

// FuzzConnRead feeds arbitrary streams to Next, whole and in small reads,
// with the smallest read buffer, and checks the frames and the error
// against referenceDecode.
func FuzzConnRead(f *testing.F) {
	frames := realFrames()
	f.Add(encode(frames...))
	for _, fr := range frames {
		f.Add(encode(fr))
	}
	f.Add(append(encode(frames...), 0, 0))
	f.Add(append(encode(frames[0]), prefix(fuzzMTU+15)...))
	f.Add(append(encode(frames[1]), prefix(200)...))
	f.Add(encode(make([]byte, fuzzMTU+14), make([]byte, fuzzMTU+14)))
	f.Fuzz(func(t *testing.T, data []byte) {
		wantFrames, wantErr := referenceDecode(data, fuzzMTU+tap.EthernetHeaderSize)
		for _, chunked := range []bool{false, true} {
			var r io.Reader = bytes.NewReader(data)
			if chunked {
				r = iotest.HalfReader(r)
			}
			c, err := tap.NewConn(&fakeConn{r: r}, tap.Config{
				MTU:            fuzzMTU,
				ReadBufferSize: fuzzMTU + tap.EthernetHeaderSize + tap.LengthPrefixSize,
			})
			if err != nil {
				t.Fatal(err)
			}
			var got [][]byte
			for {
				fr, err := c.Next()
				if err != nil {
					if !errors.Is(err, wantErr) {
						t.Fatalf("chunked=%v: error %v, want %v", chunked, err, wantErr)
					}
					break
				}
				if len(fr) == 0 || len(fr) > fuzzMTU+tap.EthernetHeaderSize {
					t.Fatalf("frame of %d bytes escaped the length checks", len(fr))
				}
				got = append(got, bytes.Clone(fr))
				if len(got) > len(wantFrames) {
					t.Fatalf("chunked=%v: more frames than the stream holds", chunked)
				}
			}
			if diff := diffFrames(wantFrames, got); diff != "" {
				t.Fatalf("chunked=%v: %s", chunked, diff)
			}
		}
	})
}

// FuzzServerHandshake feeds arbitrary bytes to ServerHandshake: it never
// panics, every failure wraps ErrBadHandshake, and every success is a
// request net/http reads as POST /connect, with what follows it left for
// Next.
func FuzzServerHandshake(f *testing.F) {
	f.Add([]byte(goHandshake))
	f.Add(append([]byte(goHandshake), encode(realFrames()...)...))
	f.Add([]byte("POST /connect HTTP/1.1\nHost: x\n\n"))
	f.Add([]byte("GET /connect HTTP/1.1\r\n\r\n"))
	f.Add([]byte("POST /connect HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"))
	f.Add([]byte("\x00\x10garbage"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := tap.NewConn(&fakeConn{r: bytes.NewReader(data)}, tap.Config{MTU: fuzzMTU})
		if err != nil {
			t.Fatal(err)
		}
		if err := c.ServerHandshake(); err != nil {
			if !errors.Is(err, tap.ErrBadHandshake) {
				t.Fatalf("ServerHandshake = %v, want it to wrap ErrBadHandshake", err)
			}
			if _, err2 := c.Next(); err2 != err {
				t.Fatalf("Next after failed handshake = %v, want %v", err2, err)
			}
			return
		}
		rd := bytes.NewReader(data)
		br := bufio.NewReader(rd)
		req, err := http.ReadRequest(br)
		if err != nil {
			t.Fatalf("accepted a request net/http rejects: %v", err)
		}
		if req.Method != "POST" || req.URL.Path != "/connect" || req.ContentLength != 0 {
			t.Fatalf("accepted %s %s with Content-Length %d", req.Method, req.URL.Path, req.ContentLength)
		}
		headLen := len(data) - br.Buffered() - rd.Len()
		if headLen > tap.MaxHandshakeSize {
			t.Fatalf("accepted a %d-byte head", headLen)
		}
		// What follows the head decodes as frames, as referenceDecode says.
		wantFrames, wantErr := referenceDecode(data[headLen:], fuzzMTU+tap.EthernetHeaderSize)
		var got [][]byte
		for {
			fr, err := c.Next()
			if err != nil {
				if !errors.Is(err, wantErr) {
					t.Fatalf("Next = %v, want %v", err, wantErr)
				}
				break
			}
			got = append(got, bytes.Clone(fr))
		}
		if diff := diffFrames(wantFrames, got); diff != "" {
			t.Fatal(diff)
		}
	})
}
