package ssebroadcast

import (
	"errors"
	"net/http"
	"time"

	"go.uber.org/zap"
)

// keptStream is a stream that the server keeps rather than hands over: every
// stream over HTTP/2 and HTTP/3, and over HTTP/1 one that cannot be taken
// over. Its handler's goroutine waits in run for the stream's whole life.
//
// It waits under Caddy's middleware chain, about 6 KiB of frames, and the
// collector halves a parked goroutine's stack only while less than a
// quarter of it is in use: a stream parked a few hundred bytes deeper than
// the least a Caddy handler can be parked holds a 32 KiB stack instead of
// 16 KiB, for every connection. So what a stream needs while it waits lives
// here, on the heap, the work of starting a stream is done in
// Handler.open, which returns before the stream waits, and what the loop
// does on each wake-up is in methods of their own.
type keptStream struct {
	h   *Handler
	r   *http.Request
	sub *subscriber
	out streamWriter

	keepAliveTimer *time.Timer // nil without keep-alives
	holdTimer      *time.Timer // nil without flush_interval
	lastWrite      time.Time
	spare          [][]byte // the last batch's slice, reused for the next
	opening        [][]byte // the first frames, while they are yet to be written

	takenOver bool  // the connection went to the broadcaster's writers
	err       error // why the stream ended, if a write said
}

// newKeptStream makes the stream of sub, to be written to w, with its write
// watchdog (see watchdog.go).
func newKeptStream(h *Handler, w http.ResponseWriter, r *http.Request, sub *subscriber) *keptStream {
	// The server's idle timeouts (read_body_idle, write_idle, idle) let a
	// stream live as long as its writes make progress. Its hard timeouts
	// (read_body, write) bound the whole response, as the user asked, and
	// Caddy lets no handler loosen them: the README says to leave them
	// unset on servers that carry streams.
	watchdog := newWriteWatchdog(w, r, h.streamWriteTimeout())
	silenceIdleDeadlines(w)
	sub.setCutter(watchdog)
	return &keptStream{h: h, r: r, sub: sub,
		out: streamWriter{w: w, rc: http.NewResponseController(w), watchdog: watchdog}}
}

// start writes the headers and the first bytes, then hands the connection
// over when it can be taken. It reports whether the handler keeps the
// stream: not when the first write failed, nor when the connection was
// taken over, in which case it waits for the stream to end if Caddy keeps
// access logs, so that the entry has the stream's real duration.
func (ks *keptStream) start(w http.ResponseWriter, r *http.Request) bool {
	h, sub := ks.h, ks.sub
	// The first bytes go out at once, so that the client sees the stream
	// open: handlers that wrap the response, such as encode, hold the
	// headers back until the first write. What the client missed while
	// away follows in the same flush.
	frames := [][]byte{h.openingLine()}
	if h.Greeting {
		frames = append(frames, greeting(sub))
	}
	frames = append(frames, sub.replay...)
	sub.replay = nil
	if !h.mayTakeOver(r) {
		// ServeHTTP writes them and the headers, from the shallowest
		// place there is: the first write goes deepest of all.
		ks.opening = frames
		ks.startTimers()
		return true
	}
	if ks.err = ks.writeOpening(frames); ks.err != nil {
		return false
	}
	if h.takeOver(w, r, sub) {
		// The connection's own deadlines bound the stream from now on,
		// and the writers let go of its place when it ends.
		ks.takenOver = true
		ks.out.watchdog.close()
		if ended := sub.conn.ended; ended != nil {
			<-ended
		}
		return false
	}
	ks.startTimers()
	return true
}

// startTimers makes the timers of the stream's loop, and counts quiet
// from now.
func (ks *keptStream) startTimers() {
	if ks.h.KeepAlive > 0 {
		ks.keepAliveTimer = time.NewTimer(time.Duration(ks.h.KeepAlive))
	}
	if ks.h.FlushInterval > 0 {
		ks.holdTimer = time.NewTimer(unarmed)
	}
	ks.lastWrite = time.Now()
}

// writeOpening writes the stream's headers and first frames: its opening
// line, then the greeting and what the client missed, which count as sent.
func (ks *keptStream) writeOpening(frames [][]byte) error {
	ks.opening = nil
	ks.h.writeHeader(ks.out.w, ks.r)
	var err error
	if ks.r.ProtoMajor >= 2 {
		// HTTP/2 and HTTP/3 send the headers in a frame of their own,
		// which Go's HTTP/2 server writes before it takes the next: sent
		// apart, they cost the same, and they go by the path of writes
		// that goes deepest from a shallower place.
		err = ks.out.flushHeaders()
	}
	if err == nil {
		err = ks.out.write(frames)
	}
	if err != nil {
		return ks.h.writeFailed(ks.sub, ks.r, err, ks.out.watchdog)
	}
	ks.sub.mu.Lock()
	ks.sub.sent += len(frames) - 1 // the opening line is no event
	ks.sub.mu.Unlock()
	ks.lastWrite = time.Now()
	return nil
}

// run writes the subscriber's events as they come, and keep-alives, until
// the client leaves or the broadcaster drops the subscriber. Its error says
// why a write failed; the response is already under way, so it is only
// logged.
func (ks *keptStream) run() error {
	var keepAlive, held <-chan time.Time
	if ks.keepAliveTimer != nil {
		keepAlive = ks.keepAliveTimer.C
	}
	clientGone := ks.r.Context().Done()
	for {
		select {
		case <-clientGone:
			// Marked before the stream lets go of its place, so that a
			// shutdown under way does not count it.
			ks.h.app.broadcaster.drop(ks.sub, dropClientLeft)
			return nil
		case <-ks.sub.wake:
			// An event, or the broadcaster dropping the stream, which
			// flush finds where it takes the queue.
			if held != nil {
				if ks.sub.dropReason() != notDropped {
					return ks.dropped()
				}
				continue // the held flush takes this event too
			}
			if held = ks.hold(); held != nil {
				continue
			}
			if ended, err := ks.flush(); ended {
				return err
			}
		case <-held:
			held = nil
			if ended, err := ks.flush(); ended {
				return err
			}
		case <-keepAlive:
			if err := ks.keepAliveDue(); err != nil {
				return err
			}
		}
	}
}

// hold arms the hold timer and returns its channel when the last write was
// less than FlushInterval ago: events that arrive sooner wait for the held
// flush and share its write, so that under a high publish rate a client
// costs one system call per interval rather than one per event, and an
// event that follows a quiet spell goes at once.
func (ks *keptStream) hold() <-chan time.Time {
	if ks.holdTimer == nil {
		return nil
	}
	wait := time.Duration(ks.h.FlushInterval) - time.Since(ks.lastWrite)
	if wait <= 0 {
		return nil
	}
	ks.holdTimer.Reset(wait)
	return ks.holdTimer.C
}

// flush writes all that is queued, or ends the stream if the broadcaster
// dropped it: it reports whether the stream ended, and why.
func (ks *keptStream) flush() (ended bool, err error) {
	var dropped bool
	if ks.spare, dropped = ks.sub.takeUnlessDropped(ks.spare); dropped {
		return true, ks.dropped()
	}
	if err := ks.out.write(ks.spare); err != nil {
		return true, ks.h.writeFailed(ks.sub, ks.r, err, ks.out.watchdog)
	}
	ks.lastWrite = time.Now()
	return false, nil
}

// keepAliveDue writes a keep-alive after KeepAlive without a write. The
// timer is not moved on by every write, which would cost a timer reset per
// event: when it fires, it is set again for what is left of the interval
// since the last write.
func (ks *keptStream) keepAliveDue() error {
	interval := time.Duration(ks.h.KeepAlive)
	if quiet := time.Since(ks.lastWrite); quiet < interval {
		ks.keepAliveTimer.Reset(interval - quiet)
		return nil
	}
	if err := ks.out.write(keepAliveFrames); err != nil {
		return ks.h.writeFailed(ks.sub, ks.r, err, ks.out.watchdog)
	}
	ks.lastWrite = time.Now()
	ks.keepAliveTimer.Reset(interval)
	return nil
}

// dropped ends a stream that the broadcaster dropped: at once when the
// server cut its client, after what was queued when a shutdown ended it.
func (ks *keptStream) dropped() error {
	if reason := ks.sub.dropReason(); reason != dropShutdown {
		if reason != dropClientLeft {
			ks.h.logDisconnect(ks.sub, ks.r, reason)
		}
		ks.out.watchdog.abort()
		return errDisconnect
	}
	return ks.h.endForShutdown(ks.r, ks.sub, &ks.out)
}

// finish lets the stream go: its timers, its watchdog and, unless the
// broadcaster's writers have its connection, its place among the clients.
// It runs when the stream ends, however it ends, before Caddy writes the
// request's access log entry.
func (ks *keptStream) finish() {
	if ks.keepAliveTimer != nil {
		ks.keepAliveTimer.Stop()
	}
	if ks.holdTimer != nil {
		ks.holdTimer.Stop()
	}
	if !ks.takenOver {
		ks.sub.setCutter(nil)
	}
	ks.out.watchdog.close()
	noteEventsSent(ks.r, ks.sub)
	if !ks.takenOver {
		ks.h.app.detach(ks.sub)
		ks.h.clients.Add(-1)
	}
	if ks.err != nil && !errors.Is(ks.err, errDisconnect) {
		ks.h.logger.Debug("stream ended", zap.Strings("channels", ks.sub.channels), zap.Error(ks.err))
	}
}
