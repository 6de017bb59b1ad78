package ssebroadcast

import (
	"errors"
	"net/http"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// writeWatchdog bounds the writes of a stream that stays with net/http
// (HTTP/2, HTTP/3, a compressed response, takeover off): a write that makes
// no progress within the stream's write timeout, one in flight when the
// broadcaster drops the stream, and the last writes of a stream ended for a
// shutdown past their bound, are cut by setting the response's write
// deadline to now.
//
// Between writes no deadline is armed at all. On HTTP/2 a write deadline is
// a timer that resets the stream when it fires, whether a write is in
// flight or not, so a deadline left armed after a write cuts a stream that
// is merely quiet. The watchdog's own timer only looks: when it fires with
// no write in flight it does nothing and is left unarmed, and a write that
// finds it armed for an earlier deadline leaves it be, since the fire moves
// it on to the write's own. So a stream that writes often resets its timer
// about once per write timeout, not once per write: a timer reset and stop
// per write were 3 % of HTTP/3's CPU at the maximum rate. Either is still
// far cheaper than HTTP/2's SetWriteDeadline, a round trip to the
// connection's goroutine.
type writeWatchdog struct {
	// rc controls the server's own response writer, below Caddy's
	// wrappers: theirs keep state that only the handler's goroutine may
	// touch, and the watchdog fires on a goroutine of its own.
	rc      *http.ResponseController
	timeout time.Duration // <= 0: writes have no time limit of their own
	timer   *time.Timer
	// recut is set where a cut can be undone before the write it cuts
	// begins: over HTTP/1 and HTTP/3 a deadline set later by a wrapper
	// above the watchdog replaces it (Caddy's own write_idle wrapper is
	// silenced, see silenceIdleDeadlines; another module's may not be).
	// Over HTTP/2 a cut resets the stream, for good.
	recut bool

	mu       sync.Mutex
	writing  bool      // a write is in flight
	deadline time.Time // the write in flight's; zero: none
	// armed says that the timer will fire, at due or, when a fire is
	// under way, as soon as it has the lock.
	armed bool
	due   time.Time
	// limit is when the last writes of a stream ended for a shutdown must
	// be done; zero: no such limit.
	limit time.Time
	// cut says why writes are cut, once they are: every write from then
	// on fails at once.
	cut    error
	closed bool
}

// Why a watchdog cut a stream's writes.
var (
	errWriteTimeout = errors.New("write timed out")
	errDropped      = errors.New("stream dropped")
)

// cutRetry is how soon a cut is made again while the write it cut has not
// returned: a wrapper above the watchdog may have put its own deadline
// back before the write began.
const cutRetry = 20 * time.Millisecond

// newWriteWatchdog watches the writes to w.
func newWriteWatchdog(w http.ResponseWriter, r *http.Request, timeout time.Duration) *writeWatchdog {
	wd := &writeWatchdog{
		rc:      http.NewResponseController(serverResponseWriter(w)),
		timeout: timeout,
		recut:   r.ProtoMajor != 2,
	}
	wd.timer = time.AfterFunc(unarmed, wd.fire)
	return wd
}

// silenceIdleDeadlines makes Caddy's write_idle wrapper of w, if it has
// one, leave the write deadline alone: the watchdog bounds the stream's
// writes instead. The wrapper sets a deadline before and clears it after
// every write and every flush, which on HTTP/2 is four round trips to the
// connection's goroutine for each batch of events, and whose clearing puts
// back a ceiling that the watchdog would have to undo. Its controller is
// made to refuse deadlines, which the wrapper takes to mean that the
// response has none and stops working them out at all (2.3 % of HTTP/2's
// CPU at the maximum rate while it still did, for nothing). It must be
// called on the handler's goroutine, before the first write: the wrapper
// is the handler's alone.
func silenceIdleDeadlines(w http.ResponseWriter) {
	for {
		if idle, ok := w.(*caddyhttp.IdleTimeoutWriter); ok {
			idle.Ctrl = http.NewResponseController(noWriteDeadline{idle.ResponseWriterWrapper})
		}
		wrapper, ok := w.(interface{ Unwrap() http.ResponseWriter })
		if !ok {
			return
		}
		w = wrapper.Unwrap()
	}
}

// noWriteDeadline is a response writer whose write deadline nothing sets.
type noWriteDeadline struct{ http.ResponseWriter }

func (noWriteDeadline) SetWriteDeadline(time.Time) error { return errWatchdogBoundsWrites }

// errWatchdogBoundsWrites is what Caddy's write_idle wrapper is told, and
// logs at debug level once per stream, when it tries to set a deadline.
var errWatchdogBoundsWrites = errors.New("event stream: write_idle does not apply, the stream's write watchdog bounds its writes (write_timeout)")

// serverResponseWriter returns the response writer at the bottom of w's
// wrappers, the one net/http (or quic-go) made for the request.
func serverResponseWriter(w http.ResponseWriter) http.ResponseWriter {
	for {
		wrapper, ok := w.(interface{ Unwrap() http.ResponseWriter })
		if !ok {
			return w
		}
		w = wrapper.Unwrap()
	}
}

// begin starts a write, or refuses it once writes are cut.
func (wd *writeWatchdog) begin() error {
	wd.mu.Lock()
	defer wd.mu.Unlock()
	if wd.cut != nil {
		return wd.cut
	}
	wd.writing = true
	wd.armLocked()
	return nil
}

// progress notes that the write in flight moved on: its time limit starts
// again.
func (wd *writeWatchdog) progress() {
	wd.mu.Lock()
	wd.armLocked()
	wd.mu.Unlock()
}

// end ends a write, and returns why writes were cut, if they were: the
// write's own error then says only that the stream is broken. The timer
// stays as it is: if it fires before the next write, it finds none.
func (wd *writeWatchdog) end() error {
	wd.mu.Lock()
	defer wd.mu.Unlock()
	wd.writing = false
	wd.deadline = time.Time{}
	return wd.cut
}

// armLocked gives the write in flight its deadline: the write timeout from
// now, no later than the shutdown limit.
func (wd *writeWatchdog) armLocked() {
	var deadline time.Time
	if wd.timeout > 0 {
		deadline = time.Now().Add(wd.timeout)
	}
	if !wd.limit.IsZero() && (deadline.IsZero() || wd.limit.Before(deadline)) {
		deadline = wd.limit
	}
	wd.deadline = deadline
	if !deadline.IsZero() {
		wd.fireByLocked(deadline)
	}
}

// fireByLocked makes the timer fire no later than at.
func (wd *writeWatchdog) fireByLocked(at time.Time) {
	if wd.armed && !at.Before(wd.due) {
		return
	}
	wd.armed, wd.due = true, at
	wd.timer.Reset(time.Until(at))
}

// fire runs on the timer's goroutine when a write's deadline may have
// passed.
func (wd *writeWatchdog) fire() {
	wd.mu.Lock()
	defer wd.mu.Unlock()
	wd.armed = false
	if wd.closed || !wd.writing || wd.deadline.IsZero() {
		return // no write, or none with a time limit: the next arms it
	}
	if time.Now().Before(wd.deadline) {
		wd.fireByLocked(wd.deadline) // armed for a write before this one
		return
	}
	if wd.cut == nil {
		wd.cut = errWriteTimeout
	}
	wd.cutLocked()
}

// interrupt cuts writes at once, the one in flight included: the
// broadcaster dropped the stream. Safe from any goroutine.
func (wd *writeWatchdog) interrupt() {
	wd.mu.Lock()
	defer wd.mu.Unlock()
	if wd.cut == nil {
		wd.cut = errDropped
	}
	if wd.writing {
		wd.cutLocked()
	}
}

// limitTo makes every write, the one in flight included, end by deadline:
// the stream ends for a shutdown and writes what is queued first, but no
// client may hold the shutdown up for longer. Safe from any goroutine.
func (wd *writeWatchdog) limitTo(deadline time.Time) {
	wd.mu.Lock()
	defer wd.mu.Unlock()
	wd.limit = deadline
	if wd.writing {
		wd.armLocked()
	}
}

// cutLocked makes the write in flight fail: over HTTP/1 the connection's
// deadline passes, over HTTP/2 the stream is reset, over HTTP/3 the
// stream's deadline passes. It is made again shortly while the write has
// not returned.
func (wd *writeWatchdog) cutLocked() {
	now := time.Now()
	_ = wd.rc.SetWriteDeadline(now) // unsupported: nothing can cut the write
	wd.deadline = now
	if wd.recut {
		wd.fireByLocked(now.Add(cutRetry))
	}
}

// abort cuts writes for good, in flight or not, so that nothing net/http
// writes after the handler returns gets out: an HTTP/1 connection is then
// closed rather than kept for another request, and an HTTP/2 stream is
// reset. It must be called before the handler returns.
func (wd *writeWatchdog) abort() {
	wd.mu.Lock()
	defer wd.mu.Unlock()
	if wd.cut == nil {
		wd.cut = errDropped
	}
	if !wd.closed {
		_ = wd.rc.SetWriteDeadline(time.Now())
	}
}

// close stops the watchdog. It must be called before the handler returns:
// the server's response writer may not be used after that.
func (wd *writeWatchdog) close() {
	wd.mu.Lock()
	defer wd.mu.Unlock()
	wd.closed = true
	wd.timer.Stop()
}
