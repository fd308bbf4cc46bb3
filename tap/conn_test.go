package tap_test

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/quenchnet/quench/tap"
)

func TestNewConnConfig(t *testing.T) {
	tests := []struct {
		name    string
		cfg     tap.Config
		want    tap.Config
		wantErr bool
	}{
		{name: "defaults", want: tap.Config{MTU: 65520, MaxWrite: 32 << 10, ReadBufferSize: 256 << 10, StallTimeout: 30 * time.Second}},
		{name: "explicit", cfg: tap.Config{MTU: 1500, MaxWrite: 64, ReadBufferSize: 1516, StallTimeout: time.Second},
			want: tap.Config{MTU: 1500, MaxWrite: 64, ReadBufferSize: 1516, StallTimeout: time.Second}},
		{name: "largest MTU", cfg: tap.Config{MTU: 65521}, want: tap.Config{MTU: 65521, MaxWrite: 32 << 10, ReadBufferSize: 256 << 10, StallTimeout: 30 * time.Second}},
		{name: "no stall timeout", cfg: tap.Config{StallTimeout: -1}, want: tap.Config{MTU: 65520, MaxWrite: 32 << 10, ReadBufferSize: 256 << 10, StallTimeout: -1}},
		{name: "MTU too large", cfg: tap.Config{MTU: 65522}, wantErr: true},
		{name: "MTU too small", cfg: tap.Config{MTU: 67}, wantErr: true},
		{name: "negative MTU", cfg: tap.Config{MTU: -1}, wantErr: true},
		{name: "MaxWrite too small", cfg: tap.Config{MaxWrite: 63}, wantErr: true},
		{name: "read buffer below one frame", cfg: tap.Config{MTU: 1500, ReadBufferSize: 1515}, wantErr: true},
		{name: "read buffer below default MTU frame", cfg: tap.Config{ReadBufferSize: 32 << 10}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := tap.NewConn(&fakeConn{}, tt.cfg)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("NewConn(%+v) = nil error, want error", tt.cfg)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, c.Config()); diff != "" {
				t.Errorf("Config() (-want +got):\n%s", diff)
			}
		})
	}
	if _, err := tap.NewConn(nil, tap.Config{}); err == nil {
		t.Error("NewConn(nil) = nil error")
	}
}

// TestRoundTrip sends frames both ways at once over each transport, with
// the handshake, and checks each side receives exactly what the other sent.
func TestRoundTrip(t *testing.T) {
	sets := []struct {
		name   string
		cfg    tap.Config
		frames [][]byte
	}{
		{name: "real packets", frames: realFrames()},
		{name: "many small", frames: randomFrames(1, 2000, 1, 1514)},
		{name: "largest at default MTU", frames: sizedFrames(40, tap.DefaultMTU+tap.EthernetHeaderSize)},
		{name: "mixed sizes", frames: randomFrames(2, 300, 1, tap.DefaultMTU+tap.EthernetHeaderSize)},
		{name: "largest frame", cfg: tap.Config{MTU: 65521}, frames: sizedFrames(10, tap.MaxFrameSize)},
		{name: "tiny writes", cfg: tap.Config{MTU: 1500, MaxWrite: 64}, frames: randomFrames(3, 200, 1, 1514)},
		{name: "smallest read buffer", cfg: tap.Config{MTU: 1500, ReadBufferSize: 1516}, frames: randomFrames(4, 500, 1, 1514)},
	}
	for _, tr := range transports {
		for _, set := range sets {
			t.Run(tr.name+"/"+set.name, func(t *testing.T) {
				t.Parallel()
				a, b := tr.pair(t)
				client, server := newConn(t, a, set.cfg), newConn(t, b, set.cfg)
				back := randomFrames(99, len(set.frames), 1, 1514)

				errc := make(chan error, 2)
				go func() { // the enclave: handshake, then frames
					if err := client.ClientHandshake(); err != nil {
						errc <- err
						return
					}
					errc <- writeAll(client, set.frames)
				}()
				if err := server.ServerHandshake(); err != nil {
					t.Fatal(err)
				}
				go func() { errc <- writeAll(server, back) }()

				gotAtServer, err := readN(server, len(set.frames))
				if err != nil {
					t.Fatal(err)
				}
				gotAtClient, err := readN(client, len(back))
				if err != nil {
					t.Fatal(err)
				}
				for range 2 {
					if err := <-errc; err != nil {
						t.Fatal(err)
					}
				}
				if diff := diffFrames(set.frames, gotAtServer); diff != "" {
					t.Errorf("client to server (-want +got):\n%s", diff)
				}
				if diff := diffFrames(back, gotAtClient); diff != "" {
					t.Errorf("server to client (-want +got):\n%s", diff)
				}

				// A clean close between frames is io.EOF, every time.
				client.Close()
				for range 2 {
					if _, err := server.Next(); err != io.EOF {
						t.Fatalf("Next after peer closed = %v, want io.EOF", err)
					}
				}
				if got, want := server.Stats().FramesRead, uint64(len(set.frames)); got != want {
					t.Errorf("FramesRead = %d, want %d", got, want)
				}
			})
		}
	}
}

// writeAll writes frames in batches of IdealBatchSize.
func writeAll(c *tap.Conn, frames [][]byte) error {
	for len(frames) > 0 {
		k := min(len(frames), tap.IdealBatchSize)
		n, err := c.WriteFrames(frames[:k], 0)
		if err != nil {
			return err
		}
		if n != k {
			return fmt.Errorf("WriteFrames = %d, want %d", n, k)
		}
		frames = frames[k:]
	}
	return nil
}

// readN reads n frames with Next, copying each.
func readN(c *tap.Conn, n int) ([][]byte, error) {
	var got [][]byte
	for len(got) < n {
		f, err := c.Next()
		if err != nil {
			return got, fmt.Errorf("frame %d: %w", len(got), err)
		}
		got = append(got, bytes.Clone(f))
	}
	return got, nil
}

// TestCoalescing checks that frames are packed into as few writes as the
// MaxWrite bound allows, ceil(bytes/MaxWrite), that no write exceeds it,
// and that the bytes on the wire decode to the frames.
func TestCoalescing(t *testing.T) {
	tests := []struct {
		name     string
		maxWrite int
		frames   [][]byte
	}{
		{"one small frame", 0, sizedFrames(1, 60)},
		{"1000 ARP-sized", 0, sizedFrames(1000, 42)},
		{"128 MTU-1500 frames", 0, sizedFrames(128, 1514)},
		{"21 frames fill one write", 0, sizedFrames(21, 1558)},
		{"random sizes", 0, randomFrames(5, 500, 1, 9014)},
		{"64-byte writes", 64, randomFrames(6, 100, 1, 300)},
		{"frames exactly MaxWrite", 1000, sizedFrames(10, 998)},
		{"large frames", 0, sizedFrames(50, 65534)},
		{"1 MiB writes", 1 << 20, randomFrames(7, 200, 1, 65535)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var wire bytes.Buffer
			fc := &fakeConn{w: &wire}
			c := newConn(t, fc, tap.Config{MTU: 65521, MaxWrite: tt.maxWrite})
			maxWrite := c.Config().MaxWrite

			n, err := c.WriteFrames(tt.frames, 0)
			if err != nil || n != len(tt.frames) {
				t.Fatalf("WriteFrames = %d, %v; want %d, nil", n, err, len(tt.frames))
			}
			total := wireSize(tt.frames)
			writes := fc.writeSizes()
			if got, want := len(writes), (total+maxWrite-1)/maxWrite; got != want {
				t.Errorf("%d writes for %d bytes, want ceil(%d/%d) = %d", got, total, total, maxWrite, want)
			}
			sum := 0
			for i, w := range writes {
				sum += w
				if w > maxWrite {
					t.Errorf("write %d is %d bytes, over MaxWrite %d", i, w, maxWrite)
				}
			}
			if sum != total {
				t.Errorf("wrote %d bytes, want %d", sum, total)
			}
			if !bytes.Equal(wire.Bytes(), encode(tt.frames...)) {
				t.Error("bytes on the wire differ from the reference encoding")
			}
			if got := c.Stats().WriteCalls; got != uint64(len(writes)) {
				t.Errorf("Stats().WriteCalls = %d, want %d", got, len(writes))
			}
		})
	}
}

// TestLargeFrameSplit checks that frames larger than MaxWrite are split
// across writes of at most MaxWrite bytes and arrive whole.
func TestLargeFrameSplit(t *testing.T) {
	tests := []struct {
		name       string
		size       int
		maxWrite   int
		wantWrites []int
	}{
		{"65535 in 32 KiB writes", 65535, 32 << 10, []int{32768, 32768, 1}},
		{"65534 in 32 KiB writes", 65534, 32 << 10, []int{32768, 32768}},
		{"MaxWrite-2 fits one write", 32766, 32 << 10, []int{32768}},
		{"MaxWrite-1 spills one byte", 32767, 32 << 10, []int{32768, 1}},
		{"65535 in 64-byte writes", 65535, 64, append(repeat(64, 1024), 1)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, b := unixPair(t)
			w := &fakeConn{w: a}
			wc := newConn(t, w, tap.Config{MTU: 65521, MaxWrite: tt.maxWrite})
			rc := newConn(t, b, tap.Config{MTU: 65521})
			frame := sizedFrames(1, tt.size)[0]
			errc := make(chan error, 1)
			go func() {
				_, err := wc.WriteFrames([][]byte{frame}, 0)
				errc <- err
			}()
			got, err := rc.Next()
			if err != nil {
				t.Fatal(err)
			}
			if err := <-errc; err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, frame) {
				t.Errorf("received frame differs (len %d, want %d)", len(got), len(frame))
			}
			if diff := cmp.Diff(tt.wantWrites, w.writeSizes()); diff != "" {
				t.Errorf("write sizes (-want +got):\n%s", diff)
			}
		})
	}
}

func repeat(v, n int) []int {
	s := make([]int, n)
	for i := range s {
		s[i] = v
	}
	return s
}

// TestAppendFrameParts checks that a frame given in parts is sent as one
// frame, and that LockWrite/AppendFrame/Flush batch like WriteFrames.
func TestAppendFrameParts(t *testing.T) {
	var wire bytes.Buffer
	fc := &fakeConn{w: &wire}
	c := newConn(t, fc, tap.Config{})
	hdr, payload := []byte("ethernet-head!"), []byte("payload")
	c.LockWrite()
	for _, parts := range [][][]byte{{hdr, payload}, {nil, hdr, nil, payload}, {payload}} {
		if err := c.AppendFrame(parts...); err != nil {
			t.Fatal(err)
		}
	}
	if got := len(fc.writeSizes()); got != 0 {
		t.Errorf("%d writes before Flush, want 0", got)
	}
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	c.UnlockWrite()
	whole := append(bytes.Clone(hdr), payload...)
	if want := encode(whole, whole, payload); !bytes.Equal(wire.Bytes(), want) {
		t.Errorf("wire = %q, want %q", wire.Bytes(), want)
	}
	if got := len(fc.writeSizes()); got != 1 {
		t.Errorf("%d writes, want 1", got)
	}
}

// TestWriteInvalidFrame checks that an invalid outbound frame is refused
// without writing anything of it, and that the Conn stays usable.
func TestWriteInvalidFrame(t *testing.T) {
	good := []byte("a good frame")
	tests := []struct {
		name   string
		frames [][]byte
		want   error
		wantN  int
	}{
		{"zero length", [][]byte{{}}, tap.ErrZeroLengthFrame, 0},
		{"nil", [][]byte{nil}, tap.ErrZeroLengthFrame, 0},
		{"over 65535", [][]byte{make([]byte, tap.MaxFrameSize+1)}, tap.ErrFrameTooLarge, 0},
		{"after good frames", [][]byte{good, good, {}, good}, tap.ErrZeroLengthFrame, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var wire bytes.Buffer
			c := newConn(t, &fakeConn{w: &wire}, tap.Config{})
			n, err := c.WriteFrames(tt.frames, 0)
			if !errors.Is(err, tt.want) || n != tt.wantN {
				t.Fatalf("WriteFrames = %d, %v; want %d, %v", n, err, tt.wantN, tt.want)
			}
			// The frames before the bad one are flushed, nothing else.
			want := encode(tt.frames[:tt.wantN]...)
			if !bytes.Equal(wire.Bytes(), want) {
				t.Fatalf("wire = %q, want %q", wire.Bytes(), want)
			}
			if _, err := c.WriteFrames([][]byte{good}, 0); err != nil {
				t.Fatalf("WriteFrames after invalid frame: %v", err)
			}
			if want := append(want, encode(good)...); !bytes.Equal(wire.Bytes(), want) {
				t.Fatalf("wire = %q, want %q", wire.Bytes(), want)
			}
		})
	}
}

// TestWriteErrorSticky checks that a failed write is reported again by
// later writes.
func TestWriteErrorSticky(t *testing.T) {
	a, b := net.Pipe()
	b.Close()
	c := newConn(t, a, tap.Config{})
	_, err1 := c.WriteFrames([][]byte{[]byte("x")}, 0)
	if !errors.Is(err1, io.ErrClosedPipe) {
		t.Fatalf("WriteFrames to closed pipe = %v, want io.ErrClosedPipe", err1)
	}
	_, err2 := c.WriteFrames([][]byte{[]byte("y")}, 0)
	if err2 != err1 {
		t.Errorf("second WriteFrames = %v, want the first error %v", err2, err1)
	}
	c.LockWrite()
	if err := c.AppendFrame([]byte("z")); err != err1 {
		t.Errorf("AppendFrame = %v, want %v", err, err1)
	}
	if err := c.Flush(); err != err1 {
		t.Errorf("Flush = %v, want %v", err, err1)
	}
	c.UnlockWrite()
}

// TestBadInput feeds malformed streams to the reader: each gives the right
// error, no panic, and the error again on the next call.
func TestBadInput(t *testing.T) {
	good := realFrames()
	mtu1500 := tap.Config{MTU: 1500}
	tests := []struct {
		name       string
		cfg        tap.Config
		handshake  bool // run ServerHandshake first
		in         string
		wantFrames int
		want       error
	}{
		{name: "empty stream", in: "", want: io.EOF},
		{name: "clean EOF after frames", in: string(encode(good...)), wantFrames: 3, want: io.EOF},
		{name: "zero length", in: string(prefix(0)), want: tap.ErrZeroLengthFrame},
		{name: "zero length after frames", in: string(encode(good...)) + string(prefix(0)) + "junk", wantFrames: 3, want: tap.ErrZeroLengthFrame},
		{name: "MTU+15 at MTU 1500", cfg: mtu1500, in: string(prefix(1515)) + strings.Repeat("x", 1515), want: tap.ErrFrameTooLarge},
		{name: "MTU+14 at MTU 1500 is fine", cfg: mtu1500, in: string(encode(make([]byte, 1514))), wantFrames: 1, want: io.EOF},
		{name: "65535 at default MTU", in: string(prefix(65535)), want: tap.ErrFrameTooLarge},
		{name: "too large before its body arrives", cfg: mtu1500, in: string(prefix(60000)), want: tap.ErrFrameTooLarge},
		{name: "truncated prefix", in: string(encode(good...)) + "\x05", wantFrames: 3, want: io.ErrUnexpectedEOF},
		{name: "truncated frame", in: string(prefix(100)) + strings.Repeat("x", 50), want: io.ErrUnexpectedEOF},
		{name: "prefix only", in: string(prefix(100)), want: io.ErrUnexpectedEOF},

		{name: "handshake then frames", handshake: true, in: goHandshake + string(encode(good...)), wantFrames: 3, want: io.EOF},
		{name: "handshake then zero length", handshake: true, in: goHandshake + string(prefix(0)), want: tap.ErrZeroLengthFrame},
		{name: "garbage handshake", handshake: true, in: "\x00\x01garbage\r\n\r\n", want: tap.ErrBadHandshake},
		{name: "frames instead of handshake", handshake: true, in: string(encode(good...)), want: tap.ErrBadHandshake},
		{name: "handshake too long", handshake: true, in: "POST /connect HTTP/1.1\r\nX-Pad: " + strings.Repeat("a", 5000) + "\r\n\r\n", want: tap.ErrBadHandshake},
		{name: "endless header line", handshake: true, in: "POST /connect HTTP/1.1\r\nX: " + strings.Repeat("a", 1<<20), want: tap.ErrBadHandshake},
		{name: "GET", handshake: true, in: "GET /connect HTTP/1.1\r\nHost: \r\n\r\n", want: tap.ErrBadHandshake},
		{name: "wrong path", handshake: true, in: "POST /services/forwarder/all HTTP/1.1\r\nHost: \r\n\r\n", want: tap.ErrBadHandshake},
		{name: "path prefix", handshake: true, in: "POST /connect/x HTTP/1.1\r\nHost: \r\n\r\n", want: tap.ErrBadHandshake},
		{name: "HTTP/2", handshake: true, in: "POST /connect HTTP/2.0\r\nHost: \r\n\r\n", want: tap.ErrBadHandshake},
		{name: "body", handshake: true, in: "POST /connect HTTP/1.1\r\nHost: \r\nContent-Length: 5\r\n\r\nhello", want: tap.ErrBadHandshake},
		{name: "chunked body", handshake: true, in: "POST /connect HTTP/1.1\r\nHost: \r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", want: tap.ErrBadHandshake},
		{name: "bad header", handshake: true, in: "POST /connect HTTP/1.1\r\nno colon here\r\n\r\n", want: tap.ErrBadHandshake},
		{name: "EOF inside handshake", handshake: true, in: "POST /connect HTTP/1.1\r\nHost:", want: io.ErrUnexpectedEOF},
		{name: "EOF before handshake", handshake: true, in: "", want: io.EOF},
	}
	for _, tt := range tests {
		for _, chunking := range []string{"whole", "bytewise"} {
			t.Run(tt.name+"/"+chunking, func(t *testing.T) {
				var r io.Reader = strings.NewReader(tt.in)
				if chunking == "bytewise" {
					r = iotest.OneByteReader(r)
				}
				c := newConn(t, &fakeConn{r: r}, tt.cfg)
				var err error
				if tt.handshake {
					err = c.ServerHandshake()
					if err != nil && !errors.Is(err, tap.ErrBadHandshake) {
						t.Errorf("ServerHandshake = %v, want it to wrap ErrBadHandshake", err)
					}
				}
				frames := 0
				for err == nil {
					if _, err = c.Next(); err == nil {
						frames++
					}
					if frames > 100 {
						t.Fatal("runaway decoder")
					}
				}
				if !errors.Is(err, tt.want) {
					t.Errorf("error = %v, want %v", err, tt.want)
				}
				if frames != tt.wantFrames {
					t.Errorf("decoded %d frames before the error, want %d", frames, tt.wantFrames)
				}
				if !c.Buffered() {
					t.Error("Buffered() = false after an error, want true (Next does not block)")
				}
				if _, err2 := c.Next(); err2 != err {
					t.Errorf("second Next = %v, want the same error %v", err2, err)
				}
			})
		}
	}
}

// TestClientHandshakeMatchesGo checks that ClientHandshake writes exactly
// what gvforwarder's net/http client writes, in one write, and that
// http.ReadRequest (gvproxy's parser) reads it as POST /connect.
func TestClientHandshakeMatchesGo(t *testing.T) {
	req, err := http.NewRequest("POST", "/connect", nil)
	if err != nil {
		t.Fatal(err)
	}
	var fromGo bytes.Buffer
	if err := req.Write(&fromGo); err != nil {
		t.Fatal(err)
	}
	var ours bytes.Buffer
	fc := &fakeConn{w: &ours}
	c := newConn(t, fc, tap.Config{})
	if err := c.ClientHandshake(); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(fromGo.String(), ours.String()); diff != "" {
		t.Errorf("handshake (-net/http +ours):\n%s", diff)
	}
	if got := len(fc.writeSizes()); got != 1 {
		t.Errorf("handshake took %d writes, want 1", got)
	}
	parsed, err := http.ReadRequest(bufio.NewReader(&ours))
	if err != nil {
		t.Fatal(err)
	}
	type summary struct {
		Method, Path  string
		ContentLength int64
	}
	got := summary{parsed.Method, parsed.URL.Path, parsed.ContentLength}
	if diff := cmp.Diff(summary{"POST", "/connect", 0}, got); diff != "" {
		t.Errorf("parsed request (-want +got):\n%s", diff)
	}
}

// TestServerHandshakeAccepts checks requests the server must accept, with
// frames right behind them in the same write.
func TestServerHandshakeAccepts(t *testing.T) {
	req, err := http.NewRequest("POST", "/connect", nil)
	if err != nil {
		t.Fatal(err)
	}
	var fromGo bytes.Buffer
	if err := req.Write(&fromGo); err != nil {
		t.Fatal(err)
	}
	tests := []struct{ name, req string }{
		{"net/http client", fromGo.String()},
		{"with host and extra headers", "POST /connect HTTP/1.1\r\nHost: 2:1024\r\nUser-Agent: curl\r\nAccept: */*\r\n\r\n"},
		{"no headers", "POST /connect HTTP/1.1\r\n\r\n"},
		{"bare LF line ends", "POST /connect HTTP/1.1\nHost: \nContent-Length: 0\n\n"},
		{"query", "POST /connect?x=1 HTTP/1.1\r\nHost: \r\n\r\n"},
		{"HTTP/1.0", "POST /connect HTTP/1.0\r\n\r\n"},
		{"absolute form", "POST http://host/connect HTTP/1.1\r\nHost: host\r\n\r\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, b := unixPair(t)
			frames := realFrames()
			// Handshake and frames in one write: the frames must not be
			// lost in the handshake's read.
			if _, err := a.Write(append([]byte(tt.req), encode(frames...)...)); err != nil {
				t.Fatal(err)
			}
			c := newConn(t, b, tap.Config{})
			if err := c.ServerHandshake(); err != nil {
				t.Fatalf("ServerHandshake: %v", err)
			}
			got, err := readN(c, len(frames))
			if err != nil {
				t.Fatal(err)
			}
			if diff := diffFrames(frames, got); diff != "" {
				t.Errorf("frames behind the handshake (-want +got):\n%s", diff)
			}
		})
	}
}

// TestClientHandshakeAgainstHTTPServer runs ClientHandshake against a
// net/http server with a hijacking /connect handler, the way gvproxy serves
// it (virtualnetwork/mux.go, tap/switch.go rxStream), and sends frames
// through it once the handler has taken the connection.
func TestClientHandshakeAgainstHTTPServer(t *testing.T) {
	frames := realFrames()
	hijacked := make(chan struct{})
	received := make(chan [][]byte, 1)
	mux := http.NewServeMux()
	mux.HandleFunc("/connect", func(w http.ResponseWriter, _ *http.Request) {
		conn, bufrw, err := w.(http.Hijacker).Hijack()
		if err != nil {
			t.Error(err)
			return
		}
		defer conn.Close()
		_ = bufrw.Flush()
		close(hijacked)
		r := bufio.NewReader(conn) // as gvproxy: a new reader on conn
		var got [][]byte
		size := make([]byte, 2)
		for range frames {
			if _, err := io.ReadFull(r, size); err != nil {
				t.Error(err)
				break
			}
			f := make([]byte, int(size[0])|int(size[1])<<8)
			if _, err := io.ReadFull(r, f); err != nil {
				t.Error(err)
				break
			}
			got = append(got, f)
		}
		received <- got
	})
	ln, err := net.Listen("unix", t.TempDir()+"/gvproxy.sock")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	t.Cleanup(func() {
		srv.Close()
		<-served
	})

	nc, err := net.Dial("unix", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c := newConn(t, nc, tap.Config{})
	defer c.Close()
	if err := c.ClientHandshake(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-hijacked:
	case <-time.After(10 * time.Second):
		t.Fatal("server did not route the handshake to /connect")
	}
	if _, err := c.WriteFrames(frames, 0); err != nil {
		t.Fatal(err)
	}
	if diff := diffFrames(frames, <-received); diff != "" {
		t.Errorf("frames at the server (-want +got):\n%s", diff)
	}
}

// TestReadFrames checks batching into caller buffers with an offset.
func TestReadFrames(t *testing.T) {
	frames := append(realFrames(), randomFrames(8, 10, 1, 1514)...)
	c := newConn(t, &fakeConn{r: bytes.NewReader(encode(frames...))}, tap.Config{MTU: 1500})
	const offset = 10
	bufs := make([][]byte, 4)
	for i := range bufs {
		bufs[i] = make([]byte, offset+1514)
	}
	sizes := make([]int, len(bufs))
	var got [][]byte
	for {
		n, err := c.ReadFrames(bufs, sizes, offset)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if n < 1 || n > len(bufs) {
			t.Fatalf("ReadFrames = %d", n)
		}
		for i := range n {
			got = append(got, bytes.Clone(bufs[i][offset:offset+sizes[i]]))
		}
	}
	if diff := diffFrames(frames, got); diff != "" {
		t.Errorf("frames (-want +got):\n%s", diff)
	}

	t.Run("short buffer", func(t *testing.T) {
		c := newConn(t, &fakeConn{r: bytes.NewReader(encode(make([]byte, 100), []byte("next")))}, tap.Config{})
		small := [][]byte{make([]byte, 50)}
		if _, err := c.ReadFrames(small, []int{0}, 0); !errors.Is(err, io.ErrShortBuffer) {
			t.Fatalf("ReadFrames into small buffer = %v, want io.ErrShortBuffer", err)
		}
		// Not sticky: the next frame reads fine.
		n, err := c.ReadFrames(small, []int{0}, 0)
		if err != nil || n != 1 {
			t.Fatalf("ReadFrames after short buffer = %d, %v", n, err)
		}
	})
}

// TestNextBatch checks that NextBatch returns every buffered frame after one
// read, and that the frames stay valid together.
func TestNextBatch(t *testing.T) {
	frames := randomFrames(9, 300, 1, 1514)
	fc := &fakeConn{r: bytes.NewReader(encode(frames...))}
	c := newConn(t, fc, tap.Config{MTU: 1500})
	batch := make([][]byte, tap.IdealBatchSize)
	var got [][]byte
	for {
		n, err := c.NextBatch(batch)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range batch[:n] {
			got = append(got, bytes.Clone(f))
		}
	}
	if diff := diffFrames(frames, got); diff != "" {
		t.Errorf("frames (-want +got):\n%s", diff)
	}
	// The whole stream fits the read buffer: one read for the data, one
	// for EOF.
	if got := c.Stats().ReadCalls; got != 2 {
		t.Errorf("ReadCalls = %d, want 2", got)
	}
}

// TestBuffered checks that Buffered reports complete frames only.
func TestBuffered(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	c := newConn(t, b, tap.Config{})
	go a.Write(encode([]byte("one"), []byte("two"))[:8]) // "two" is cut short
	if c.Buffered() {
		t.Error("Buffered() = true before any read")
	}
	if _, err := c.Next(); err != nil {
		t.Fatal(err)
	}
	if c.Buffered() {
		t.Error("Buffered() = true with only a partial frame buffered")
	}
}

// TestReadDeadline checks that a read timeout is returned but not sticky.
func TestReadDeadline(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	c := newConn(t, b, tap.Config{})
	b.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
	if _, err := c.Next(); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Next = %v, want os.ErrDeadlineExceeded", err)
	}
	b.SetReadDeadline(time.Time{})
	go a.Write(encode([]byte("after the timeout")))
	f, err := c.Next()
	if err != nil {
		t.Fatalf("Next after timeout: %v", err)
	}
	if string(f) != "after the timeout" {
		t.Errorf("Next = %q", f)
	}
}

// TestStats checks the counters.
func TestStats(t *testing.T) {
	frames := realFrames()
	var wire bytes.Buffer
	w := newConn(t, &fakeConn{w: &wire}, tap.Config{})
	if _, err := w.WriteFrames(frames, 0); err != nil {
		t.Fatal(err)
	}
	r := newConn(t, &fakeConn{r: &wire}, tap.Config{})
	if _, err := readN(r, len(frames)); err != nil {
		t.Fatal(err)
	}
	n := uint64(wireSize(frames) - 2*len(frames))
	want := tap.Stats{FramesWritten: 3, BytesWritten: n, WriteCalls: 1}
	if diff := cmp.Diff(want, w.Stats()); diff != "" {
		t.Errorf("writer Stats (-want +got):\n%s", diff)
	}
	want = tap.Stats{FramesRead: 3, BytesRead: n, ReadCalls: 1}
	if diff := cmp.Diff(want, r.Stats()); diff != "" {
		t.Errorf("reader Stats (-want +got):\n%s", diff)
	}
}

// TestNoAllocs proves the steady state allocates nothing per frame.
func TestNoAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates")
	}
	frames := append(realFrames(), sizedFrames(4, 1514)...)
	big := sizedFrames(2, 65534)
	tests := []struct {
		name string
		fn   func(*tap.Conn) func()
	}{
		{"Next", func(c *tap.Conn) func() {
			return func() {
				if _, err := c.Next(); err != nil {
					t.Fatal(err)
				}
			}
		}},
		{"NextBatch", func(c *tap.Conn) func() {
			batch := make([][]byte, tap.IdealBatchSize)
			return func() {
				if _, err := c.NextBatch(batch); err != nil {
					t.Fatal(err)
				}
			}
		}},
		{"ReadFrames", func(c *tap.Conn) func() {
			bufs, sizes := make([][]byte, 8), make([]int, 8)
			for i := range bufs {
				bufs[i] = make([]byte, 65536)
			}
			return func() {
				if _, err := c.ReadFrames(bufs, sizes, 0); err != nil {
					t.Fatal(err)
				}
			}
		}},
		{"WriteFrames small", func(c *tap.Conn) func() {
			return func() {
				if _, err := c.WriteFrames(frames, 0); err != nil {
					t.Fatal(err)
				}
			}
		}},
		{"WriteFrames large", func(c *tap.Conn) func() {
			return func() {
				if _, err := c.WriteFrames(big, 0); err != nil {
					t.Fatal(err)
				}
			}
		}},
		{"AppendFrame parts", func(c *tap.Conn) func() {
			hdr, payload := frames[1][:14], frames[1][14:]
			return func() {
				c.LockWrite()
				defer c.UnlockWrite()
				if err := c.AppendFrame(hdr, payload); err != nil {
					t.Fatal(err)
				}
				if err := c.Flush(); err != nil {
					t.Fatal(err)
				}
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conn := &discardConn{fakeConn{r: &loopReader{data: encode(append(frames, big...)...)}}}
			c := newConn(t, conn, tap.Config{})
			fn := tt.fn(c)
			fn() // warm up
			if allocs := testing.AllocsPerRun(1000, fn); allocs != 0 {
				t.Errorf("%s: %v allocations per call, want 0", tt.name, allocs)
			}
		})
	}
}
