// Package endpoint turns the address URLs of quench's command lines
// (vsock://CID:PORT, unix:///path, tcp://host:port) into listeners and
// dialers, including the VSOCK stand-in used on machines without VSOCK.
//
// The stand-in, like Firecracker's hybrid vsock, maps every VSOCK address to
// a unix socket in one directory: vsock://CID:PORT is the socket
// DIR/vsock-CID-PORT.sock. A listener on vsock://:PORT binds the socket of
// its own CID (Options.LocalCID). Nothing else in quench knows the difference.
package endpoint

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/mdlayher/vsock"
)

// EnvVSockDir names the environment variable that turns the VSOCK stand-in
// on: every vsock:// address becomes a unix socket in that directory.
const EnvVSockDir = "QUENCH_VSOCK_DIR"

// ParentCID is the CID of the parent EC2 instance as seen from an enclave.
const ParentCID = 3

// Options tune Listen and Dial.
type Options struct {
	// VSockDir turns on the VSOCK stand-in when not empty.
	VSockDir string
	// LocalCID is this side's CID for the stand-in's listeners when the URL
	// names none.
	LocalCID uint32
}

// Addr is a parsed endpoint URL.
type Addr struct {
	Scheme string // "vsock", "unix" or "tcp"
	CID    uint32 // vsock only; AnyCID when the URL names none
	Port   uint32 // vsock only
	Path   string // unix only
	Host   string // tcp only: host:port
}

// AnyCID marks a vsock URL without a CID (vsock://:PORT).
const AnyCID = ^uint32(0)

func (a Addr) String() string {
	switch a.Scheme {
	case "vsock":
		if a.CID == AnyCID {
			return fmt.Sprintf("vsock://:%d", a.Port)
		}
		return fmt.Sprintf("vsock://%d:%d", a.CID, a.Port)
	case "unix":
		return "unix://" + a.Path
	default:
		return "tcp://" + a.Host
	}
}

// Parse parses vsock://CID:PORT, vsock://:PORT, unix:///path and
// tcp://host:port.
func Parse(s string) (Addr, error) {
	u, err := url.Parse(s)
	if err != nil {
		return Addr{}, fmt.Errorf("endpoint %q: %w", s, err)
	}
	switch u.Scheme {
	case "vsock":
		a := Addr{Scheme: "vsock", CID: AnyCID}
		host, portStr, err := net.SplitHostPort(u.Host)
		if err != nil {
			return Addr{}, fmt.Errorf("endpoint %q: want vsock://CID:PORT or vsock://:PORT", s)
		}
		if host != "" {
			cid, err := strconv.ParseUint(host, 10, 32)
			if err != nil {
				return Addr{}, fmt.Errorf("endpoint %q: CID %q is not a number", s, host)
			}
			a.CID = uint32(cid)
		}
		port, err := strconv.ParseUint(portStr, 10, 32)
		if err != nil {
			return Addr{}, fmt.Errorf("endpoint %q: port %q is not a number", s, portStr)
		}
		a.Port = uint32(port)
		if u.Path != "" && u.Path != "/" {
			return Addr{}, fmt.Errorf("endpoint %q: vsock URLs take no path", s)
		}
		return a, nil
	case "unix":
		p := u.Path
		if p == "" {
			p = u.Opaque
		}
		if u.Host != "" {
			// unix://relative/path: keep it usable.
			p = u.Host + p
		}
		if p == "" {
			return Addr{}, fmt.Errorf("endpoint %q: unix URL without a path", s)
		}
		return Addr{Scheme: "unix", Path: p}, nil
	case "tcp":
		if _, _, err := net.SplitHostPort(u.Host); err != nil {
			return Addr{}, fmt.Errorf("endpoint %q: want tcp://host:port", s)
		}
		return Addr{Scheme: "tcp", Host: u.Host}, nil
	case "":
		return Addr{}, fmt.Errorf("endpoint %q: missing scheme (vsock://, unix:// or tcp://)", s)
	default:
		return Addr{}, fmt.Errorf("endpoint %q: unknown scheme %q (want vsock, unix or tcp)", s, u.Scheme)
	}
}

// StandInPath returns the unix socket that stands in for vsock CID:PORT.
func StandInPath(dir string, cid, port uint32) string {
	return filepath.Join(dir, fmt.Sprintf("vsock-%d-%d.sock", cid, port))
}

// CheckListen reports an endpoint that Listen would open where nobody
// dials it: with the VSOCK stand-in (o.VSockDir set, no o.LocalCID), a
// vsock://:PORT listener has no CID to name its socket after, while
// quench-host dials vsock://CID:PORT.
func (o Options) CheckListen(a Addr) error {
	if a.Scheme == "vsock" && a.CID == AnyCID && o.VSockDir != "" && o.LocalCID == 0 {
		return errors.New("with the VSOCK stand-in, name the enclave's CID: vsock://CID:PORT")
	}
	return nil
}

// Listen listens on the endpoint a.
func Listen(a Addr, o Options) (net.Listener, error) {
	switch a.Scheme {
	case "vsock":
		if o.VSockDir != "" {
			cid := a.CID
			if cid == AnyCID {
				cid = o.LocalCID
			}
			ln, err := listenUnix(StandInPath(o.VSockDir, cid, a.Port))
			return ln, standInErr(o.VSockDir, err)
		}
		if a.CID == AnyCID {
			return vsock.Listen(a.Port, nil)
		}
		return vsock.ListenContextID(a.CID, a.Port, nil)
	case "unix":
		return listenUnix(a.Path)
	case "tcp":
		return net.Listen("tcp", a.Host)
	}
	return nil, fmt.Errorf("endpoint: cannot listen on %v", a)
}

// standInErr names a missing VSOCK stand-in directory in err, which
// otherwise says only that a socket path does not exist.
func standInErr(dir string, err error) error {
	if err == nil || !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if _, serr := os.Stat(dir); errors.Is(serr, fs.ErrNotExist) {
		return fmt.Errorf("%w (the VSOCK stand-in directory %s does not exist: create it, and give both sides the same one)", err, dir)
	}
	return err
}

// listenUnix removes a stale socket file first so restarts work.
func listenUnix(path string) (net.Listener, error) {
	if err := RemoveStaleSocket(path); err != nil {
		return nil, err
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(true)
	return ln, nil
}

// RemoveStaleSocket removes the unix socket at path if nothing listens on it
// any more (a process that crashed leaves its socket behind), so that a new
// listener can bind there. A socket that still accepts connections is
// another process's: it is left alone and reported as in use, rather than
// taken over (a second daemon given the same path silently took the first
// one's clients). Anything else at path (a file of another kind, a symbolic
// link, a socket that refuses for another reason) is left for the bind to
// fail on.
func RemoveStaleSocket(path string) error {
	fi, err := os.Lstat(path)
	if err != nil || fi.Mode()&os.ModeSocket == 0 {
		return nil
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		_ = c.Close()
		return fmt.Errorf("listen unix %s: socket in use by a running process", path)
	}
	if errors.Is(err, syscall.ECONNREFUSED) {
		_ = os.Remove(path) // nobody listens: stale
	}
	return nil
}

// Dial connects to the endpoint a.
func Dial(ctx context.Context, a Addr, o Options) (net.Conn, error) {
	var d net.Dialer
	switch a.Scheme {
	case "vsock":
		if a.CID == AnyCID {
			return nil, errors.New("endpoint: cannot dial a vsock URL without a CID")
		}
		if o.VSockDir != "" {
			c, err := d.DialContext(ctx, "unix", StandInPath(o.VSockDir, a.CID, a.Port))
			return c, standInErr(o.VSockDir, err)
		}
		type result struct {
			c   net.Conn
			err error
		}
		ch := make(chan result, 1)
		go func() {
			c, err := vsock.Dial(a.CID, a.Port, nil)
			ch <- result{c, err}
		}()
		select {
		case r := <-ch:
			return r.c, r.err
		case <-ctx.Done():
			go func() {
				if r := <-ch; r.c != nil {
					_ = r.c.Close()
				}
			}()
			return nil, ctx.Err()
		}
	case "unix":
		return d.DialContext(ctx, "unix", a.Path)
	case "tcp":
		return d.DialContext(ctx, "tcp", a.Host)
	}
	return nil, fmt.Errorf("endpoint: cannot dial %v", a)
}

// VSockDirFromEnv returns flagValue, or the value of EnvVSockDir when the
// flag is empty.
func VSockDirFromEnv(flagValue string) string {
	if flagValue != "" {
		return flagValue
	}
	return strings.TrimSpace(os.Getenv(EnvVSockDir))
}
