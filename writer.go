package ssebroadcast

import (
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"sync"
	"syscall"
	"time"
)

// writeLimit bounds what a writer takes from one subscriber in one go: one
// system call's worth, so that a long backlog does not hold a writer while
// other clients wait.
const writeLimit = 64 << 10

// writerBatch is how many subscribers a writer takes from the ready list at
// a time: enough to make the list's lock rare, few enough to spread a
// fan-out over the writers.
const writerBatch = 64

// writerPool writes to the connections taken over from net/http. A
// subscriber whose queue becomes non-empty joins the ready list; writer
// goroutines take subscribers off it, write each one's whole queue with one
// non-blocking system call, and exit when the list is empty. An idle
// connection therefore costs no goroutine, and a client whose events pile up
// while the writers are busy gets them all in one write.
//
// There is one writer fewer than CPUs (at least one): the system call is
// nearly all a delivery costs, and writers on every CPU would starve the
// publishers, so that each event went out alone, one system call per
// client. With a CPU left to publish, events published during a pass over
// the clients share the next one (measured in BENCHMARKS.md: 8.3 → 3.5 µs
// of CPU per delivery at the maximum rate on two cores).
//
// A write the client's socket cannot take at once moves to a goroutine of
// its own, which waits for the client within the write timeout: a slow
// client never holds a writer that others wait on.
type writerPool struct {
	mu      sync.Mutex
	ready   []*subscriber
	head    int // ready[head:] wait for a writer
	running int
	max     int

	socketWriters sync.Pool // of *socketWriter, kept between bursts
}

func newWriterPool() *writerPool {
	p := &writerPool{max: max(1, runtime.GOMAXPROCS(0)-1)}
	p.socketWriters.New = func() any { return newSocketWriter() }
	return p
}

// schedule hands subscribers that have something to write, and that no
// writer owns, to the writers.
func (p *writerPool) schedule(subs []*subscriber) {
	p.mu.Lock()
	p.ready = append(p.ready, subs...)
	p.startWritersLocked()
}

// scheduleOne hands one subscriber to the writers.
func (p *writerPool) scheduleOne(s *subscriber) {
	p.mu.Lock()
	p.ready = append(p.ready, s)
	p.startWritersLocked()
}

// startWritersLocked starts as many writers as the ready list can keep
// busy, up to the limit, and unlocks p.
func (p *writerPool) startWritersLocked() {
	waiting := len(p.ready) - p.head
	start := min(p.max-p.running, (waiting+writerBatch-1)/writerBatch)
	start = max(start, 0)
	p.running += start
	p.mu.Unlock()
	for range start {
		go p.run()
	}
}

// next returns the next batch of subscribers to write, or false once there
// is none, when the writer exits.
func (p *writerPool) next(batch []*subscriber) ([]*subscriber, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	waiting := len(p.ready) - p.head
	if waiting == 0 {
		p.running--
		// Let go of a list grown by a large fan-out.
		if cap(p.ready) > 4*writerBatch {
			p.ready = nil
		} else {
			p.ready = p.ready[:0]
		}
		p.head = 0
		return batch, false
	}
	n := min(waiting, writerBatch)
	batch = append(batch[:0], p.ready[p.head:p.head+n]...)
	clear(p.ready[p.head : p.head+n])
	p.head += n
	if p.head == len(p.ready) {
		p.ready = p.ready[:0]
		p.head = 0
	}
	return batch, true
}

func (p *writerPool) run() {
	w := p.socketWriters.Get().(*socketWriter)
	defer p.socketWriters.Put(w)
	batch := make([]*subscriber, 0, writerBatch)
	for {
		var ok bool
		batch, ok = p.next(batch)
		if !ok {
			return
		}
		for _, s := range batch {
			s.conn.writeQueued(w)
		}
		clear(batch)
	}
}

// takenConn is an HTTP/1 connection taken over from net/http once its
// response headers were sent: what remains of the response is the event
// stream, written by the pool's writers, and it ends when the connection
// closes.
type takenConn struct {
	sub         *subscriber
	conn        net.Conn
	broadcaster *broadcaster
	writers     *writerPool
	// raw is the socket, for writes that must not block; nil when the
	// connection cannot be written that way (TLS), and every write is made
	// by a goroutine of its own.
	raw syscall.RawConn

	writeTimeout time.Duration
	// deadline is the last one a blocking write set, and limit a
	// shutdown's bound on every write (zero: none); guarded by sub.mu.
	deadline, limit time.Time
	// flushInterval, when set, is the least time between two writes;
	// holdTimer ends each wait.
	flushInterval time.Duration
	holdTimer     *time.Timer
	// holding is set while the hold owns the subscriber, until holdOver
	// or a drop ends it; guarded by sub.mu.
	holding   bool
	keepAlive time.Duration
	// keepAliveTimer sends a comment once the stream has been quiet for
	// keepAlive; nil when keep-alives are off.
	keepAliveTimer *time.Timer
	// lastWrite is when a write last completed, in nanoseconds since
	// clockStart; guarded by sub.mu.
	lastWrite int64

	// hangup is the connection's registration with the hang-up watcher.
	hangup hangupRegistration

	// onEnd is called once, by the writer that closes the connection, with
	// the reason the stream ended; then ended, if set, is closed.
	onEnd func(dropReason)
	ended chan struct{}
}

// clockStart anchors takenConn.lastWrite on the monotonic clock.
var clockStart = time.Now()

func sinceClockStart() int64 { return int64(time.Since(clockStart)) }

// writeQueued is a pool writer's turn with the connection: it writes what is
// queued with one non-blocking system call, then either gives the
// subscriber back to the ready list (more is queued), lets go of it (the
// queue is empty), or hands it to a goroutine of its own (the socket is
// full).
func (tc *takenConn) writeQueued(w *socketWriter) {
	if tc.raw == nil {
		go tc.writeBlocking(nil)
		return
	}
	s := tc.sub
	s.mu.Lock()
	w.buf = s.takeLocked(w.buf[:0], writeLimit)
	if len(w.buf) == 0 {
		tc.releaseLocked()
		return
	}
	s.mu.Unlock()

	n, err := w.write(tc.raw, w.buf)
	if reason := s.dropReason(); errors.Is(err, os.ErrDeadlineExceeded) && (reason == notDropped || reason == dropShutdown) {
		// A deadline this stream did not set: a handler that wrapped
		// this one (timeouts) puts its own back as it unwinds, after the
		// takeover. writeBlocking sets the stream's own.
		go tc.writeBlocking(append([]byte(nil), w.buf[n:]...))
		return
	}
	if err != nil {
		tc.fail(err)
		return
	}
	if n < len(w.buf) {
		// The socket is full: wait for the client on a goroutine of its
		// own, with a copy of what is left, since the buffer is the
		// writer's.
		go tc.writeBlocking(append([]byte(nil), w.buf[n:]...))
		return
	}
	s.mu.Lock()
	tc.lastWrite = sinceClockStart()
	switch {
	case s.dropped != notDropped || len(s.queue) > 0:
		// Others wait for a writer too: take the rest in turn.
		s.mu.Unlock()
		tc.writers.scheduleOne(s)
	case tc.flushInterval > 0:
		// Keep the subscriber for the interval: what is published
		// meanwhile waits, and shares the next write.
		tc.holdLocked()
		s.mu.Unlock()
	default:
		s.scheduled = false
		s.mu.Unlock()
	}
}

// holdLocked keeps the subscriber, without a writer, for the flush
// interval. Called with the subscriber's lock held.
func (tc *takenConn) holdLocked() {
	tc.holding = true
	tc.holdTimer.Reset(tc.flushInterval)
}

// cancelHoldLocked ends a hold early, for a drop, and reports whether there
// was one: the subscriber is then the caller's to hand to a writer. Called
// with the subscriber's lock held.
func (tc *takenConn) cancelHoldLocked() bool {
	if !tc.holding {
		return false
	}
	tc.holding = false
	// A holdOver already under way finds no hold, and leaves the
	// subscriber alone.
	tc.holdTimer.Stop()
	return true
}

// holdOver ends a hold: what was queued meanwhile goes to a writer, and a
// subscriber with nothing queued writes its next event at once.
func (tc *takenConn) holdOver() {
	s := tc.sub
	s.mu.Lock()
	if !tc.holding {
		s.mu.Unlock()
		return // a drop ended the hold first
	}
	tc.holding = false
	if len(s.queue) == 0 && s.dropped == notDropped {
		s.scheduled = false
		s.mu.Unlock()
		return
	}
	s.mu.Unlock()
	tc.writers.scheduleOne(s)
}

// releaseLocked is called, with sub.mu held and nothing left to write, by
// the subscriber's owner: it ends a dropped stream, or lets the subscriber
// wait for its next event. It unlocks sub.mu.
func (tc *takenConn) releaseLocked() {
	s := tc.sub
	if s.dropped != notDropped {
		reason := s.dropped
		s.mu.Unlock()
		tc.end(reason)
		return
	}
	s.scheduled = false
	s.mu.Unlock()
}

// socketWriter is a pool writer's means to write: its buffer, and the
// non-blocking write into a socket, whose callback is made once per
// writer so that a write allocates nothing.
type socketWriter struct {
	buf []byte

	// call is writeNow as a func value; out, written and err are its
	// argument and results.
	call    func(fd uintptr) bool
	out     []byte
	written int
	err     error
}

func newSocketWriter() *socketWriter {
	w := &socketWriter{buf: make([]byte, 0, writeLimit)}
	w.call = w.writeNow
	return w
}

// write writes as much of b to raw as its socket takes now, without
// waiting.
func (w *socketWriter) write(raw syscall.RawConn, b []byte) (int, error) {
	w.out, w.written, w.err = b, 0, nil
	err := raw.Write(w.call)
	if err == nil {
		err = w.err
	}
	w.out = nil
	return w.written, err
}

func (w *socketWriter) writeNow(fd uintptr) bool {
	for w.written < len(w.out) {
		n, err := syscall.Write(int(fd), w.out[w.written:])
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			if err != syscall.EAGAIN {
				w.err = os.NewSyscallError("write", err)
			}
			break
		}
		w.written += n
	}
	return true // never wait here: waiting is writeBlocking's job
}

// writeBlocking owns the subscriber until its queue is empty, writing with
// blocking writes bounded by the write timeout: first pending, then what is
// queued meanwhile. A writer hands a connection over to it when the
// client's socket is full, or for every write when the connection has no
// socket to write to without blocking.
func (tc *takenConn) writeBlocking(pending []byte) {
	s := tc.sub
	for {
		if len(pending) > 0 {
			if err := tc.writeWithTimeout(pending); err != nil {
				tc.fail(err)
				return
			}
		}
		s.mu.Lock()
		tc.lastWrite = sinceClockStart()
		pending = s.takeLocked(pending[:0], writeLimit)
		if len(pending) == 0 {
			if s.dropped == notDropped && tc.flushInterval > 0 {
				tc.holdLocked()
				s.mu.Unlock()
				return
			}
			tc.releaseLocked()
			return
		}
		s.mu.Unlock()
	}
}

// writeWithTimeout writes b whole. Each deadlineStride bytes must go out
// within the write timeout: a client that reads steadily is not cut
// however long the backlog, one that stops taking bytes is.
func (tc *takenConn) writeWithTimeout(b []byte) error {
	for len(b) > 0 {
		piece := b[:min(len(b), deadlineStride)]
		if err := tc.setWriteDeadline(); err != nil {
			return err
		}
		if _, err := tc.conn.Write(piece); err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				return fmt.Errorf("writing events: %w: %w", errWriteTimeout, err)
			}
			return fmt.Errorf("writing events: %w", err)
		}
		b = b[len(piece):]
	}
	// The pool's non-blocking writes fail on an expired deadline.
	if err := tc.conn.SetWriteDeadline(time.Time{}); err != nil {
		return fmt.Errorf("clearing write deadline: %w", err)
	}
	return nil
}

// setWriteDeadline gives the next piece of a blocking write its deadline:
// the write timeout from now, no later than a shutdown's limit, or none. It
// is set under the subscriber's lock, which a drop's cutter holds too, so
// that it never overwrites an interrupt.
func (tc *takenConn) setWriteDeadline() error {
	s := tc.sub
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.dropped != notDropped && s.dropped != dropShutdown {
		return fmt.Errorf("writing events: %w", errDropped)
	}
	var deadline time.Time
	if tc.writeTimeout > 0 {
		deadline = time.Now().Add(tc.writeTimeout)
	}
	if !tc.limit.IsZero() && (deadline.IsZero() || tc.limit.Before(deadline)) {
		deadline = tc.limit
	}
	tc.deadline = deadline
	if err := tc.conn.SetWriteDeadline(deadline); err != nil {
		return fmt.Errorf("setting write deadline: %w", err)
	}
	return nil
}

// interrupt makes a write blocked on the client return: the stream was
// dropped. Called with the subscriber's lock held; net.Conn's deadlines
// may be set from any goroutine.
func (tc *takenConn) interrupt() {
	_ = tc.conn.SetWriteDeadline(time.Now())
}

// limitTo makes every write end by deadline: a shutdown ends the stream
// once what is queued is written, and no client that stopped reading may
// hold it up for longer. Called with the subscriber's lock held.
func (tc *takenConn) limitTo(deadline time.Time) {
	tc.limit = deadline
	// A blocking write in flight may have a later deadline, or none. A
	// deadline on the connection does not slow the writers' non-blocking
	// writes; once it passes, they hand the rest to a blocking write,
	// which fails at once.
	if tc.deadline.IsZero() || deadline.Before(tc.deadline) {
		_ = tc.conn.SetWriteDeadline(deadline)
	}
}

// fail ends the stream after a failed write: a client that did not take it
// in time (the write's deadline passed, or the kernel gave up on a peer
// that acknowledged nothing) is disconnected and counted; any other failure
// means the client left. A drop that came first (and interrupted the write)
// keeps its reason.
func (tc *takenConn) fail(err error) {
	reason := hangupReason(err)
	if errors.Is(err, errWriteTimeout) {
		reason = dropWriteTimeout
	}
	tc.broadcaster.drop(tc.sub, reason)
	ended := tc.sub.dropReason()
	if ended == dropShutdown && reason == dropClientLeft {
		// The client left before the shutdown could end its stream.
		ended = dropClientLeft
	}
	tc.end(ended)
}

// end closes the connection and lets the stream go, counting a stream that
// a shutdown ended. Only the subscriber's owner calls it, once.
func (tc *takenConn) end(reason dropReason) {
	if reason == dropShutdown {
		tc.broadcaster.disconnects[dropShutdown].Add(1)
	}
	if tc.keepAliveTimer != nil {
		tc.keepAliveTimer.Stop()
	}
	if tc.holdTimer != nil {
		tc.holdTimer.Stop()
	}
	tc.hangup.cancel()
	// The response has no length: closing the connection ends it.
	_ = tc.conn.Close()
	tc.onEnd(reason)
	if tc.ended != nil {
		close(tc.ended)
	}
}

// keepAliveDue runs when the stream may have been quiet for keepAlive: it
// queues a comment if it has, and otherwise waits for the rest of the
// interval since the last write.
func (tc *takenConn) keepAliveDue() {
	s := tc.sub
	s.mu.Lock()
	if s.dropped != notDropped {
		s.mu.Unlock()
		return
	}
	if s.scheduled || s.conn != tc {
		// A write is on its way, or the takeover is not through yet.
		s.mu.Unlock()
		tc.keepAliveTimer.Reset(tc.keepAlive)
		return
	}
	if quiet := time.Duration(sinceClockStart() - tc.lastWrite); quiet < tc.keepAlive {
		s.mu.Unlock()
		tc.keepAliveTimer.Reset(tc.keepAlive - quiet)
		return
	}
	s.keepAliveDue = true
	s.scheduled = true
	s.mu.Unlock()
	tc.writers.scheduleOne(s)
	tc.keepAliveTimer.Reset(tc.keepAlive)
}
