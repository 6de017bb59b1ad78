//go:build linux

package ssebroadcast

import (
	"math"
	"net"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// hangupWatcher tells when the clients of taken-over connections leave,
// without a goroutine per connection: one goroutine waits on an epoll
// instance of its own, where each connection's socket is registered for
// the peer's hang-up only (EPOLLRDHUP, with errors and full hang-ups always
// reported: a connection the kernel gave up on is one the peer left too).
// Go's own poller keeps the socket for reads and writes; an epoll
// registration ends by itself when the socket is closed.
type hangupWatcher struct {
	onHangup func(*subscriber, dropReason)

	mu sync.Mutex
	// epfd and wakefd are -1 until the first watch; close closes them.
	epfd, wakefd int
	// watched maps each registration's token to its connection. Tokens
	// are never reused, so an event for a connection that has just ended
	// finds nothing, even if its descriptor number went to a new one.
	watched   map[uint64]watchedConn
	lastToken uint64
	closed    bool
	done      chan struct{}
}

// wakeToken marks the event that tells the watcher to stop.
const wakeToken = 0

// watchedConn is a watched connection's subscriber and socket.
type watchedConn struct {
	s   *subscriber
	raw syscall.RawConn
}

func newHangupWatcher(onHangup func(*subscriber, dropReason)) *hangupWatcher {
	return &hangupWatcher{onHangup: onHangup, epfd: -1, wakefd: -1, watched: make(map[uint64]watchedConn)}
}

// watch calls onHangup once the client of conn closes it or the connection
// fails, with the reason it ended. Connections without a socket to poll get
// a reading goroutine.
func (w *hangupWatcher) watch(conn net.Conn, s *subscriber) hangupRegistration {
	raw := socketOf(conn)
	if raw == nil {
		return watchByReading(conn, s, w.onHangup)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed || w.startLocked() != nil {
		return watchByReading(conn, s, w.onHangup)
	}
	w.lastToken++
	token := w.lastToken
	var addErr error
	err := raw.Control(func(fd uintptr) {
		ev := unix.EpollEvent{Events: unix.EPOLLRDHUP | unix.EPOLLONESHOT}
		setToken(&ev, token)
		addErr = unix.EpollCtl(w.epfd, unix.EPOLL_CTL_ADD, int(fd), &ev)
	})
	if err == nil {
		err = addErr
	}
	if err != nil {
		return watchByReading(conn, s, w.onHangup)
	}
	w.watched[token] = watchedConn{s: s, raw: raw}
	return hangupRegistration{cancel: func() {
		// Closing the socket removes it from the epoll instance.
		w.mu.Lock()
		delete(w.watched, token)
		w.mu.Unlock()
	}}
}

// startLocked creates the epoll instance and its goroutine on first use.
func (w *hangupWatcher) startLocked() error {
	if w.epfd >= 0 {
		return nil
	}
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return err
	}
	wakefd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(epfd)
		return err
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN}
	setToken(&ev, wakeToken)
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, wakefd, &ev); err != nil {
		unix.Close(epfd)
		unix.Close(wakefd)
		return err
	}
	w.epfd, w.wakefd = epfd, wakefd
	w.done = make(chan struct{})
	go w.run(epfd, wakefd)
	return nil
}

func (w *hangupWatcher) run(epfd, wakefd int) {
	defer close(w.done)
	events := make([]unix.EpollEvent, 128)
	var hungUp []watchedConn
	for {
		n, err := unix.EpollWait(epfd, events, -1)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			// Nothing can be watched any more; streams still end on
			// their next failed write.
			return
		}
		w.mu.Lock()
		for _, ev := range events[:n] {
			token := tokenOf(&ev)
			if token == wakeToken {
				w.mu.Unlock()
				return
			}
			if c, ok := w.watched[token]; ok {
				delete(w.watched, token)
				hungUp = append(hungUp, c)
			}
		}
		w.mu.Unlock()
		for i, c := range hungUp {
			w.onHangup(c.s, socketHangupReason(c.raw))
			hungUp[i] = watchedConn{}
		}
		hungUp = hungUp[:0]
	}
}

// socketHangupReason says why a socket the watcher saw hang up ended, from
// its pending error: ETIMEDOUT (or an ICMP error heard meanwhile) where the
// kernel gave up on a peer that acknowledged nothing, none where the peer
// closed the connection, ECONNRESET where it reset it. Reading the error
// clears it; a write that took it first fails with it, and ends the stream
// for the same reason, unless the watcher's drop, with none left to read,
// comes first.
func socketHangupReason(raw syscall.RawConn) dropReason {
	var soErr int
	var err error
	if raw.Control(func(fd uintptr) {
		soErr, err = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ERROR)
	}) != nil || err != nil {
		return dropClientLeft // closed meanwhile: its stream has ended
	}
	return hangupReason(syscall.Errno(soErr))
}

// limitUnacknowledged makes the kernel give up on conn's TCP connection
// once data it sent has gone unacknowledged for d (TCP_USER_TIMEOUT,
// rounded up to a millisecond): a peer that vanished without a FIN or an
// RST then ends its stream within d of the first write it did not
// acknowledge, keep-alives included, where the kernel would otherwise
// retransmit for some fifteen minutes (tcp_retries2) while the writes,
// too small to fill the send buffer, never stall. The same bound ends a
// connection whose peer holds its receive window shut for d, and one whose
// TCP keep-alive probes go unanswered once d has passed since the peer was
// last heard. The abort wakes the hang-up watcher, and fails the next
// write, with ETIMEDOUT. Connections that are not TCP are left alone.
func limitUnacknowledged(conn net.Conn, d time.Duration) error {
	if _, ok := conn.LocalAddr().(*net.TCPAddr); !ok {
		return nil
	}
	raw := socketOf(conn)
	if raw == nil {
		return nil
	}
	ms := int(min((d+time.Millisecond-1)/time.Millisecond, math.MaxInt32))
	var setErr error
	if err := raw.Control(func(fd uintptr) {
		setErr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, ms)
	}); err != nil {
		return err
	}
	return setErr
}

// close stops the watcher's goroutine. Connections still open are no longer
// watched; the broadcaster closes it only once no config uses it.
func (w *hangupWatcher) close() {
	w.mu.Lock()
	w.closed = true
	started := w.epfd >= 0
	w.mu.Unlock()
	if !started {
		return
	}
	var one [8]byte
	one[0] = 1 // eventfd counters are host-endian; any non-zero value wakes
	_, _ = unix.Write(w.wakefd, one[:])
	<-w.done
	unix.Close(w.epfd)
	unix.Close(w.wakefd)
}

func setToken(ev *unix.EpollEvent, token uint64) {
	ev.Fd = int32(uint32(token))
	ev.Pad = int32(uint32(token >> 32))
}

func tokenOf(ev *unix.EpollEvent) uint64 {
	return uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
}
