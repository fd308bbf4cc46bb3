// Package epoll is the event loop under quench's epoll front ends (the
// ingress relay, internal/relay, and the reverse proxy's, proxy): an
// edge-triggered epoll instance whose goroutine waits in Go's own poller,
// on the epoll descriptor, so that no thread blocks in epoll_wait, and an
// inbox through which other goroutines hand it work.
package epoll

import (
	"fmt"
	"os"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Handler is what a Loop runs. Its methods run on the loop's goroutine.
type Handler[Op any] interface {
	// Batch is called before each batch of events and ops.
	Batch()
	// Event handles readiness events of a registered descriptor (EPOLLIN,
	// EPOLLOUT, EPOLLRDHUP, EPOLLHUP, EPOLLERR bits).
	Event(fd int32, events uint32)
	// Ops handles posted ops, in the order they were posted.
	Ops(ops []Op)
	// Stopped reports whether the loop must return.
	Stopped() bool
}

// Readiness splits an event's bits: readable (data, an EOF or an error to
// read), hup (the peer shut down or the socket failed: read to the end) and
// writable.
func Readiness(events uint32) (readable, hup, writable bool) {
	const gone = unix.EPOLLRDHUP | unix.EPOLLHUP | unix.EPOLLERR
	return events&(unix.EPOLLIN|gone) != 0, events&gone != 0, events&(unix.EPOLLOUT|unix.EPOLLHUP|unix.EPOLLERR) != 0
}

// Loop is one event loop. Create it with New, give it to one goroutine's
// Run, and reach it from others only through Post.
type Loop[Op any] struct {
	ep     int      // epoll instance
	efd    int      // eventfd: wakes the loop for its inbox
	file   *os.File // ep, registered with Go's poller
	rc     syscall.RawConn
	events []unix.EpollEvent
	efdBuf [8]byte
	err    error // why Run stopped early

	mu     sync.Mutex
	inbox  []Op
	spare  []Op
	waking bool // an eventfd write is pending
	dead   bool // Run has returned: posts are refused
}

// New creates a loop; name labels errors and the descriptor.
func New[Op any](name string) (*Loop[Op], error) {
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("%s: epoll_create1: %w", name, err)
	}
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		_ = unix.Close(ep)
		return nil, fmt.Errorf("%s: eventfd: %w", name, err)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLET, Fd: int32(efd)}
	if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, efd, &ev); err != nil {
		_ = unix.Close(ep)
		_ = unix.Close(efd)
		return nil, fmt.Errorf("%s: epoll_ctl: %w", name, err)
	}
	if err := unix.SetNonblock(ep, true); err != nil {
		_ = unix.Close(ep)
		_ = unix.Close(efd)
		return nil, fmt.Errorf("%s: epoll fd: %w", name, err)
	}
	// A non-blocking descriptor given to os.NewFile joins Go's poller, so
	// the loop goroutine parks there until the epoll instance is ready.
	f := os.NewFile(uintptr(ep), name+"-epoll")
	rc, err := f.SyscallConn()
	if err != nil {
		_ = f.Close()
		_ = unix.Close(efd)
		return nil, fmt.Errorf("%s: epoll fd: %w", name, err)
	}
	return &Loop[Op]{ep: ep, efd: efd, file: f, rc: rc, events: make([]unix.EpollEvent, 256)}, nil
}

// AddReader registers fd for edge-triggered reads and hang-ups only; a
// caller that finds fd full arms writes with WatchWrites. Unix stream
// sockets signal EPOLLOUT to their writer whenever the reader takes data
// (unix_write_space does not wait for the writer to have run out of room,
// as TCP does), so a loop that always watches writes is woken once per
// message it sends by the peer reading it, for nothing.
func (l *Loop[Op]) AddReader(fd int) error {
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLET, Fd: int32(fd)}
	if err := unix.EpollCtl(l.ep, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		return fmt.Errorf("epoll_ctl: %w", err)
	}
	return nil
}

// WatchWrites turns EPOLLOUT on or off for fd, registered with AddReader.
// Turned on, it reports an event at once if fd is writable by then, so a
// caller arming it after a short write misses no edge.
func (l *Loop[Op]) WatchWrites(fd int, on bool) error {
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLET, Fd: int32(fd)}
	if on {
		ev.Events |= unix.EPOLLOUT
	}
	if err := unix.EpollCtl(l.ep, unix.EPOLL_CTL_MOD, fd, &ev); err != nil {
		return fmt.Errorf("epoll_ctl: %w", err)
	}
	return nil
}

// Remove takes fd out of the set (closing fd does that too).
func (l *Loop[Op]) Remove(fd int) { _ = unix.EpollCtl(l.ep, unix.EPOLL_CTL_DEL, fd, nil) }

// Post hands o to the loop. It reports false, and the loop never sees o,
// once Run has returned.
func (l *Loop[Op]) Post(o Op) bool {
	l.mu.Lock()
	if l.dead {
		l.mu.Unlock()
		return false
	}
	l.inbox = append(l.inbox, o)
	wake := !l.waking
	l.waking = true
	l.mu.Unlock()
	if wake {
		one := [8]byte{1}
		_, _ = unix.Write(l.efd, one[:])
	}
	return true
}

// Run handles events and ops until h.Stopped reports true or epoll fails
// (then the error is returned). It then refuses later posts, closes the
// epoll instance and returns the ops posted but not handled, for the caller
// to clean up.
func (l *Loop[Op]) Run(h Handler[Op]) ([]Op, error) {
	poll := func(uintptr) bool { return l.poll(h) }
	for !h.Stopped() && l.err == nil {
		if err := l.rc.Read(poll); err != nil {
			l.err = err
		}
	}
	l.mu.Lock()
	l.dead = true
	left := l.inbox
	l.inbox = nil
	l.mu.Unlock()
	_ = l.file.Close()
	_ = unix.Close(l.efd)
	return left, l.err
}

// poll handles what is ready; it reports true when Run must stop waiting.
func (l *Loop[Op]) poll(h Handler[Op]) bool {
	for {
		n, err := epollWaitNow(l.ep, l.events)
		if err != nil {
			if err == unix.EINTR {
				continue
			}
			l.err = fmt.Errorf("epoll_wait: %w", err)
			return true
		}
		if n > 0 {
			h.Batch()
		}
		for i := range l.events[:n] {
			ev := &l.events[i]
			if ev.Fd == int32(l.efd) {
				l.drainInbox(h)
				continue
			}
			h.Event(ev.Fd, ev.Events)
		}
		if h.Stopped() {
			return true
		}
		if n < len(l.events) {
			// Events that come after this batch reach Go's poller as a
			// new edge on the epoll descriptor, so there is no need to
			// ask again (an epoll_wait per wake-up that finds nothing).
			return false
		}
	}
}

func (l *Loop[Op]) drainInbox(h Handler[Op]) {
	_, _ = unix.Read(l.efd, l.efdBuf[:])
	l.mu.Lock()
	ops := l.inbox
	l.inbox = l.spare[:0]
	l.waking = false
	l.mu.Unlock()
	h.Ops(ops)
	clear(ops)
	l.spare = ops[:0]
}

// epollWaitNow is epoll_wait with a zero timeout, which never blocks: a
// raw system call, for the reason given at relay's read.
func epollWaitNow(ep int, events []unix.EpollEvent) (int, error) {
	n, _, errno := unix.RawSyscall6(unix.SYS_EPOLL_PWAIT, uintptr(ep), uintptr(unsafe.Pointer(&events[0])), uintptr(len(events)), 0, 0, 0)
	if errno != 0 {
		return 0, errno
	}
	return int(n), nil
}
