//go:build linux

package rawio

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func unixPair(t *testing.T) (*net.UnixConn, *net.UnixConn) {
	t.Helper()
	ln, err := net.Listen("unix", filepath.Join(t.TempDir(), "s"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ch := make(chan net.Conn, 1)
	go func() { c, _ := ln.Accept(); ch <- c }()
	a, err := net.Dial("unix", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b := <-ch
	if b == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { _ = a.Close(); _ = b.Close() })
	return a.(*net.UnixConn), b.(*net.UnixConn)
}

func TestOf(t *testing.T) {
	a, _ := unixPair(t)
	if Of(a) == nil {
		t.Error("Of(*net.UnixConn) = nil")
	}
	type wrapped struct{ *net.UnixConn }
	if Of(wrapped{a}) != nil || Of(struct{ net.Conn }{a}) != nil {
		t.Error("Of accepted a wrapper, which may buffer")
	}
	p, q := net.Pipe()
	defer p.Close()
	defer q.Close()
	if Of(p) != nil {
		t.Error("Of(net.Pipe) != nil")
	}
}

func TestReadWriteRaw(t *testing.T) {
	a, b := unixPair(t)
	ra, rb := Of(a), Of(b)
	// More than the socket buffers hold: WriteRaw must wait for the reader.
	data := bytes.Repeat([]byte("0123456789abcdef"), 1<<18) // 4 MiB
	errc := make(chan error, 1)
	go func() {
		n, err := WriteRaw(ra, data)
		if err == nil && n != len(data) {
			err = io.ErrShortWrite
		}
		_ = a.CloseWrite()
		errc <- err
	}()
	var got []byte
	buf := make([]byte, 64<<10)
	for {
		n, err := ReadRaw(rb, buf)
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			break // end of stream
		}
		got = append(got, buf[:n]...)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("read %d bytes, want the %d written", len(got), len(data))
	}
}

func TestRawErrors(t *testing.T) {
	a, b := unixPair(t)
	rb := Of(b)
	// Nothing to read: the raw call says EAGAIN, ReadRaw waits until the
	// deadline.
	var eagain error
	_ = rb.Control(func(fd uintptr) { _, eagain = Read(int(fd), make([]byte, 8)) })
	if eagain != unix.EAGAIN {
		t.Fatalf("Read on an empty non-blocking socket: %v, want EAGAIN", eagain)
	}
	_ = b.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if _, err := ReadRaw(rb, make([]byte, 8)); !errors.Is(Cause("read", err), os.ErrDeadlineExceeded) {
		t.Fatalf("ReadRaw past the deadline: %v, want a deadline error", err)
	}
	_ = b.SetReadDeadline(time.Time{})
	// Closed underneath: net.ErrClosed.
	done := make(chan error, 1)
	go func() { _, err := ReadRaw(rb, make([]byte, 8)); done <- err }()
	time.Sleep(20 * time.Millisecond)
	_ = b.Close()
	if err := <-done; !errors.Is(Cause("read", err), net.ErrClosed) {
		t.Fatalf("ReadRaw on a closed connection: %v, want net.ErrClosed", err)
	}
	// The peer is gone: writing fails with the errno, named after the op.
	_ = a.SetWriteDeadline(time.Now().Add(time.Second))
	_, err := WriteRaw(Of(a), bytes.Repeat([]byte("x"), 1<<20))
	var se *os.SyscallError
	if err = Cause("write", err); !errors.As(err, &se) || se.Syscall != "write" {
		t.Fatalf("WriteRaw to a closed peer: %v, want an *os.SyscallError for write", err)
	}
}
