package enclave_test

import (
	"bytes"
	"crypto/tls"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/quenchnet/quench/enclave"
)

// TestServeDrainH2SlowReader: a response whose handler has returned but
// whose last bytes wait for the client's HTTP/2 flow-control window (a
// client that reads slowly) must still be delivered within DrainTimeout.
// The public server was closed once no handler had run for 250 ms, which
// cut such responses short.
func TestServeDrainH2SlowReader(t *testing.T) {
	returned := make(chan struct{})
	env := svStart(t, func(c *enclave.Config) {
		c.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", "12000")
			_, _ = w.Write(bytes.Repeat([]byte("a"), 9000))
			w.(http.Flusher).Flush()
			_, _ = w.Write(bytes.Repeat([]byte("b"), 3000)) // buffered past the handler
			close(returned)
		})
	})
	c, err := tls.Dial("tcp", strings.TrimPrefix(env.public, "https://"), &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(15 * time.Second))
	if _, err := c.Write([]byte(http2.ClientPreface)); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(c, c)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	_ = fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 10000})
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for _, f := range [][2]string{{":method", "GET"}, {":scheme", "https"}, {":authority", "enclave"}, {":path", "/big"}} {
		_ = enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: hb.Bytes(), EndHeaders: true, EndStream: true})
	<-returned
	closed := make(chan error, 1)
	go func() { closed <- env.enc.Close() }()
	// The client takes its time before opening its window again (a slow
	// consumer), well within DrainTimeout (5 s).
	var wmu sync.Mutex // the Framer's writes, from here and from the timer
	time.AfterFunc(time.Second, func() {
		wmu.Lock()
		defer wmu.Unlock()
		_ = fr.WriteWindowUpdate(1, 1<<20)
	})
	got := 0
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("response cut short in drain: %d of 12000 bytes, then %v", got, err)
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				wmu.Lock()
				_ = fr.WriteSettingsAck()
				wmu.Unlock()
			}
		case *http2.DataFrame:
			got += len(f.Data())
			if f.StreamEnded() {
				if got != 12000 {
					t.Fatalf("got %d bytes, want 12000", got)
				}
				if err := <-closed; err != nil {
					t.Errorf("Close: %v", err)
				}
				return
			}
		case *http2.RSTStreamFrame:
			t.Fatalf("stream reset in drain (%v) after %d of 12000 bytes", f.ErrCode, got)
		}
	}
}
