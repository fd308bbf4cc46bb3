package enclave_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/quenchnet/quench/enclave"
)

// Interop tests of the userspace network with real clients and servers
// (python3 on the host's loopback), through the host's NAT and published
// ports.

// needTool skips the test when name is not installed.
func needTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Skipf("%s is not installed: %v", name, err)
	}
	return p
}

// startPython runs a python3 script with args until the test ends and
// returns its first line of output (the script prints its port, or what it
// got) as a channel of lines.
func startPython(t *testing.T, script string, args ...string) <-chan string {
	t.Helper()
	py := needTool(t, "python3")
	cmd := exec.Command(py, append([]string{"-c", script}, args...)...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 16)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() && stderr.Len() > 0 {
			t.Logf("python3 stderr: %s", stderr.String())
		}
	})
	return lines
}

// nextLine returns the next line of a python script's output.
func nextLine(t *testing.T, lines <-chan string) string {
	t.Helper()
	select {
	case l, ok := <-lines:
		if !ok {
			t.Fatal("python3 exited early")
		}
		return l
	case <-time.After(20 * time.Second):
		t.Fatal("no output from python3")
	}
	return ""
}

// pyResetServer accepts one connection, sends "partial", waits until the
// client has it (it reads one byte from the client), and resets the
// connection (SO_LINGER 0).
const pyResetServer = `
import socket, struct, sys
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(1)
print(s.getsockname()[1], flush=True)
c, _ = s.accept()
c.sendall(b"partial")
c.recv(1)
c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
c.close()
print("reset", flush=True)
`

// TestUserspaceInteropPeerResetOut: a server on the host resets a
// connection the enclave dialled. The enclave's Read must fail with
// ECONNRESET, as a kernel socket's does, not end with io.EOF, which tells
// the app the server finished sending (a body delimited by the connection's
// end would be taken as complete).
func TestUserspaceInteropPeerResetOut(t *testing.T) {
	e, lines, addr := usPythonPeer(t, pyResetServer)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := e.Dial(ctx, "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	expectPeerReset(t, c, lines)
}

// pyResetClient connects to the address in argv[1], sends "partial", waits
// for one byte and resets the connection.
const pyResetClient = `
import socket, struct, sys
host, port = sys.argv[1].rsplit(":", 1)
c = socket.create_connection((host, int(port)))
c.sendall(b"partial")
c.recv(1)
c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
c.close()
print("reset", flush=True)
`

// TestUserspaceInteropPeerResetIn: a client of a published port resets its
// connection; the enclave's Read must fail with ECONNRESET, not io.EOF (a
// client that gave up is not a client that finished its request).
func TestUserspaceInteropPeerResetIn(t *testing.T) {
	needTool(t, "python3")
	sock := usSocket(t)
	h := usHost(t, sock, "127.0.0.1:0:9000")
	e := usEnclave(t, sock, nil)
	ln, err := e.Listen("tcp", ":9000")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	lines := startPython(t, pyResetClient, h.Published()[0].String())
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	var c net.Conn
	select {
	case c = <-accepted:
	case <-time.After(15 * time.Second):
	}
	if c == nil {
		t.Fatal("the enclave accepted nothing")
	}
	defer c.Close()
	expectPeerReset(t, c, lines)
}

// expectPeerReset reads "partial" from c, answers one byte, waits for the
// python3 peer to say it reset the connection, and checks that c's next
// Read fails with ECONNRESET, as a kernel socket's does, not io.EOF.
func expectPeerReset(t *testing.T, c net.Conn, lines <-chan string) {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(15 * time.Second))
	buf := make([]byte, len("partial"))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "partial" {
		t.Fatalf("read %q, %v; want %q", buf, err, "partial")
	}
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if got := nextLine(t, lines); got != "reset" {
		t.Fatalf("python3: %q", got)
	}
	n, err := c.Read(buf)
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("Read after the peer's reset = %d, %v; want ECONNRESET", n, err)
	}
}

// pyResetWitness accepts one connection, sends 64 KiB the client will not
// read, and reports what its next recv gets: "reset" for ECONNRESET, "eof"
// for the end of the stream.
const pyResetWitness = `
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(1)
print(s.getsockname()[1], flush=True)
c, _ = s.accept()
c.sendall(b"z" * 65536)
c.settimeout(15)
try:
    b = c.recv(10)
    print("eof" if not b else "data", flush=True)
except ConnectionResetError:
    print("reset", flush=True)
`

// TestUserspaceInteropResetByEnclave: an enclave app that closes a
// connection with data it did not read resets it (as a kernel socket
// does); the server on the host must see that reset, not a graceful end.
func TestUserspaceInteropResetByEnclave(t *testing.T) {
	e, lines, addr := usPythonPeer(t, pyResetWitness)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := e.Dial(ctx, "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(15 * time.Second))
	if _, err := io.ReadFull(c, make([]byte, 1)); err != nil { // the rest stays unread
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if got := nextLine(t, lines); got != "reset" {
		t.Fatalf("the server's recv after the enclave's reset: %s; want reset", got)
	}
}

// TestUserspaceInteropListenBurst: 300 clients of a published port connect
// at once, each sending a request and half-closing, while the enclave app
// is behind with Accept (it starts accepting once the burst is in). Past
// the listen backlog the enclave's stack uses SYN cookies; it used to reset
// connections whose handshake ACK had overflowed the accept queue, and a
// third of the clients lost theirs. Every client must get its echo.
func TestUserspaceInteropListenBurst(t *testing.T) {
	sock := usSocket(t)
	h := usHost(t, sock, "127.0.0.1:0:9000")
	e := usEnclave(t, sock, nil)
	ln, err := e.Listen("tcp", ":9000")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()

	const clients = 300
	errs := make(chan error, clients)
	var wg sync.WaitGroup
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.DialTimeout("tcp", h.Published()[0].String(), 20*time.Second)
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(50 * time.Second))
			msg := fmt.Sprintf("request %d", i)
			if _, err := c.Write([]byte(msg)); err != nil {
				errs <- err
				return
			}
			if err := c.(*net.TCPConn).CloseWrite(); err != nil {
				errs <- err
				return
			}
			b, err := io.ReadAll(c)
			if err != nil || string(b) != msg {
				errs <- fmt.Errorf("client %d: read %q, %v; want %q", i, b, err, msg)
			}
		}()
	}
	time.Sleep(time.Second) // the app is behind
	var accepted atomic.Int64
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			go func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	wg.Wait()
	close(errs)
	if n := len(errs); n > 0 {
		t.Errorf("%d of %d clients failed (the app accepted %d), e.g. %v", n, clients, accepted.Load(), <-errs)
	}
	if got := accepted.Load(); got != clients {
		t.Errorf("the app accepted %d connections; want %d", got, clients)
	}
}

// pyBulkResetServer accepts connections; on each it reads the client's
// first bytes, sends 2 MB and resets it at once (SO_LINGER 0), so that the
// reset arrives right behind the data.
const pyBulkResetServer = `
import socket, struct
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(16)
print(s.getsockname()[1], flush=True)
while True:
    c, _ = s.accept()
    c.recv(10)
    c.sendall(b"x" * 2000000)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()
`

// TestUserspaceInteropPeerResetAfterData: a server on the host sends data
// and resets the connection right behind it. The enclave reads what the
// server got out before its reset (a reset discards the rest, on a direct
// connection too) and must then get ECONNRESET, not io.EOF: the host's
// relay checked for readable data with a MSG_PEEK that took the socket's
// pending ECONNRESET (Linux reports it once), and its next read saw a
// clean end of stream.
func TestUserspaceInteropPeerResetAfterData(t *testing.T) {
	e, _, addr := usPythonPeer(t, pyBulkResetServer)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for i := range 5 {
		c, err := e.Dial(ctx, "tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		_ = c.SetDeadline(time.Now().Add(15 * time.Second))
		if _, err := c.Write([]byte("go")); err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(c)
		c.Close()
		if !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("connection %d: read %d bytes, then %v; want ECONNRESET", i, len(b), err)
		}
	}
}

// TestUserspaceInteropCloseReadThenCloseWrite: an enclave conn that shut
// its reading side (CloseRead) while the server still sent, and then
// shuts its writing side after its last write (CloseWrite), must end with
// a FIN, as a kernel socket does: the server reads the response and then
// EOF. gVisor reset the connection instead (shutting down the second side
// with unread data counted as a full close), so the server got
// ECONNRESET, and a response still in the send buffer would have been
// lost.
func TestUserspaceInteropCloseReadThenCloseWrite(t *testing.T) {
	sock := usSocket(t)
	usHost(t, sock)
	e := usEnclave(t, sock, nil)
	ln, addr := hostListener(t)
	sent := make(chan struct{})
	got := make(chan error, 1)
	response := strings.Repeat("response ", 100000) // 900 KB
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- err
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(15 * time.Second))
		if _, err := c.Write(make([]byte, 100000)); err != nil { // never read
			got <- err
			return
		}
		close(sent)
		b, err := io.ReadAll(c)
		if err == nil && string(b) != response {
			err = fmt.Errorf("read %d bytes; want the %d of the response", len(b), len(response))
		}
		got <- err
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	c, err := e.Dial(ctx, "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(15 * time.Second))
	if err := c.(interface{ CloseRead() error }).CloseRead(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-sent:
	case err := <-got:
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond) // the server's bytes reach the enclave, unread
	if _, err := c.Write([]byte(response)); err != nil {
		t.Fatal(err)
	}
	if err := c.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if err := <-got; err != nil {
		t.Fatalf("the server's read after the enclave's CloseRead and CloseWrite: %v; want the response and EOF", err)
	}
}

// hostListener listens on the host's 127.0.0.1 until the test ends and
// returns the address the enclave dials it at.
func hostListener(t *testing.T) (net.Listener, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	return ln, fmt.Sprintf("192.168.127.254:%d", ln.Addr().(*net.TCPAddr).Port)
}

// usPythonPeer starts script, a python3 server on the host's loopback that
// prints its port first, and a host and a userspace enclave; it returns
// the enclave, the script's further lines and the server's address as the
// enclave reaches it (192.168.127.254, the host's loopback).
func usPythonPeer(t *testing.T, script string) (e *enclave.Enclave, lines <-chan string, addr string) {
	t.Helper()
	lines = startPython(t, script)
	port := nextLine(t, lines)
	sock := usSocket(t)
	usHost(t, sock)
	return usEnclave(t, sock, nil), lines, "192.168.127.254:" + port
}
