package ssebroadcast

import (
	"math"
	"net/http"
	"syscall"
	"time"

	"go.uber.org/zap"
)

// mayTakeOver reports whether the stream of r is one the handler takes
// over after its headers: an HTTP/1 stream, with takeover on. HTTP/2 and
// HTTP/3 multiplex streams on a connection, which stays with the server.
func (h *Handler) mayTakeOver(r *http.Request) bool {
	return r.ProtoMajor == 1 && (h.Takeover == nil || *h.Takeover)
}

// takeOver takes the stream's connection from net/http, once the headers
// and first bytes are out, and hands the stream to the broadcaster's
// writers; from then on, the handler has returned and an idle client holds
// no goroutine. It returns false, and the handler keeps the stream, when
// the connection cannot be taken: the response is compressed (its bytes are
// not the stream's own), or the server does not let go of it.
func (h *Handler) takeOver(w http.ResponseWriter, r *http.Request, sub *subscriber) bool {
	if !h.mayTakeOver(r) || w.Header().Get("Content-Encoding") != "" {
		return false
	}
	conn, buffered, err := http.NewResponseController(w).Hijack()
	if err != nil {
		h.logger.Debug("stream stays with the server", zap.Error(err))
		return false
	}
	// What the client sent after its request means nothing to a stream;
	// dropping the reader lets its buffer go.
	_ = buffered

	b := h.app.broadcaster
	tc := &takenConn{
		sub:           sub,
		conn:          conn,
		broadcaster:   b,
		writers:       b.writers,
		writeTimeout:  h.streamWriteTimeout(),
		flushInterval: time.Duration(h.FlushInterval),
		keepAlive:     time.Duration(h.KeepAlive),
	}
	// Writes that must not block go to the socket itself, which only a
	// connection that is its own socket has: writing under TLS's record
	// layer would corrupt the stream.
	if sc, ok := conn.(syscall.Conn); ok {
		tc.raw, _ = sc.SyscallConn()
	}
	if h.server != nil && h.server.Logs != nil {
		// The server keeps access logs: the handler waits, parked, for
		// the stream to end, so that Caddy writes the stream's entry with
		// its real duration and the events it sent. The connection's
		// reading goroutine and buffers are let go all the same.
		tc.ended = make(chan struct{})
	}
	tc.onEnd = func(reason dropReason) {
		h.app.detach(sub)
		h.clients.Add(-1)
		if reason == dropSlow || reason == dropWriteTimeout || reason == dropKicked {
			h.logger.Info("disconnected client", zap.Stringer("reason", reason), zap.String("client", sub.id),
				zap.Strings("channels", sub.channels), zap.String("remote_addr", sub.remoteAddr))
		}
	}
	sub.setCutter(tc)
	// Writes that go unacknowledged count against the write bound too:
	// a peer that vanished takes none, and the small writes of an idle
	// stream never fill the send buffer to stall on it.
	if tc.writeTimeout > 0 {
		if err := limitUnacknowledged(conn, tc.writeTimeout); err != nil {
			h.logger.Debug("bounding unacknowledged writes", zap.Error(err))
		}
	}
	tc.hangup = b.hangups.watch(conn, sub)

	// The timers exist before the stream is handed over, unarmed, so that
	// whoever arms them finds them set.
	if tc.keepAlive > 0 {
		tc.keepAliveTimer = time.AfterFunc(unarmed, tc.keepAliveDue)
	}
	if tc.flushInterval > 0 {
		tc.holdTimer = time.AfterFunc(unarmed, tc.holdOver)
	}

	sub.mu.Lock()
	tc.lastWrite = sinceClockStart()
	sub.conn = tc
	// A drop since the first write needs a writer now. Otherwise the
	// first bytes were a write, as they are on a stream the handler
	// keeps: with a flush interval, what is published within it waits and
	// shares the next write; without, events queued since need a writer.
	schedule := sub.dropped != notDropped || (tc.flushInterval == 0 && len(sub.queue) > 0)
	hold := !schedule && tc.flushInterval > 0
	sub.scheduled = schedule || hold
	if hold {
		tc.holdLocked()
	}
	sub.mu.Unlock()
	if schedule {
		b.writers.scheduleOne(sub)
	}
	if tc.keepAliveTimer != nil {
		tc.keepAliveTimer.Reset(tc.keepAlive)
	}
	return true
}

// unarmed is the delay of a timer made before it is first armed.
const unarmed = time.Duration(math.MaxInt64)

// streamWriteTimeout is how long a write to a stream may stall, and, on a
// taken-over connection, how long what it wrote may go unacknowledged:
// write_timeout, or with it off the server's write_idle timeout, which
// Caddy's wrapper no longer applies to a stream (silenceIdleDeadlines),
// nor net/http once the connection is taken over. With both off, neither
// is bounded: the kernel's retransmissions (about fifteen minutes) end a
// vanished peer's stream.
func (h *Handler) streamWriteTimeout() time.Duration {
	if h.WriteTimeout > 0 {
		return time.Duration(h.WriteTimeout)
	}
	if h.server != nil && h.server.WriteIdleTimeout > 0 {
		return time.Duration(h.server.WriteIdleTimeout)
	}
	return 0
}
