package testutil

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// H2Frame is the first frame of interest H2First reads for stream 1.
type H2Frame struct {
	Kind      string            // "HEADERS", "DATA", "RST_STREAM" or "GOAWAY"
	Fields    map[string]string // HEADERS: the decoded fields, pseudo-fields included
	Data      []byte            // DATA
	EndStream bool              // HEADERS or DATA ended the stream
	ErrCode   string            // RST_STREAM, GOAWAY
}

// H2First sends one request on stream 1 of a new TLS connection to addr
// (ALPN h2, the certificate not verified): a HEADERS frame with fields in
// order (pseudo-fields included), ending the stream when data is nil,
// else followed by one DATA frame with data that does. It returns the
// first HEADERS, DATA, RST_STREAM or GOAWAY frame that comes back (SETTINGS
// are acknowledged), or the error that ended the reading within timeout.
// Raw frames show what net/http's client hides: a trailers-only response
// is one HEADERS frame ending the stream, not HEADERS and an empty DATA.
func H2First(tb testing.TB, addr string, fields [][2]string, data []byte, timeout time.Duration) (H2Frame, error) {
	tb.Helper()
	c, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}})
	if err != nil {
		tb.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	if _, err := c.Write([]byte(http2.ClientPreface)); err != nil {
		tb.Fatal(err)
	}
	fr := http2.NewFramer(c, c)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	_ = fr.WriteSettings()
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for _, f := range fields {
		_ = enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: hb.Bytes(), EndHeaders: true, EndStream: data == nil})
	if data != nil {
		_ = fr.WriteData(1, true, data)
	}
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			return H2Frame{}, err
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				_ = fr.WriteSettingsAck()
			}
		case *http2.MetaHeadersFrame:
			m := make(map[string]string, len(f.Fields))
			for _, hf := range f.Fields {
				m[hf.Name] = hf.Value
			}
			return H2Frame{Kind: "HEADERS", Fields: m, EndStream: f.StreamEnded()}, nil
		case *http2.DataFrame:
			return H2Frame{Kind: "DATA", Data: append([]byte(nil), f.Data()...), EndStream: f.StreamEnded()}, nil
		case *http2.RSTStreamFrame:
			return H2Frame{Kind: "RST_STREAM", ErrCode: f.ErrCode.String()}, nil
		case *http2.GoAwayFrame:
			return H2Frame{Kind: "GOAWAY", ErrCode: f.ErrCode.String()}, nil
		}
	}
}

// String describes f for test messages.
func (f H2Frame) String() string {
	switch f.Kind {
	case "HEADERS":
		return fmt.Sprintf("HEADERS %v (END_STREAM %v)", f.Fields, f.EndStream)
	case "DATA":
		return fmt.Sprintf("DATA %q (END_STREAM %v)", f.Data, f.EndStream)
	}
	return f.Kind + " " + f.ErrCode
}

// EchoLines answers each line of r's body with prefix and the line, flushed
// at once, as a bidirectional stream does (the client may send a line only
// after the answer to the one before). It writes the header first, flushed,
// and sets the announced trailer Grpc-Status to 0 at the end.
func EchoLines(w http.ResponseWriter, r *http.Request, prefix string) {
	w.Header().Set("Content-Type", "application/grpc")
	w.Header().Set("Trailer", "Grpc-Status")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	_ = rc.Flush()
	br := bufio.NewReader(r.Body)
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			break
		}
		_, _ = io.WriteString(w, prefix+line)
		_ = rc.Flush()
	}
	w.Header().Set("Grpc-Status", "0")
}
