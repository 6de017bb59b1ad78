package ssebroadcast

import (
	"crypto/rand"
	"slices"
	"sync"
	"time"
)

// Default bounds of a subscriber's queue. A client that falls this far behind
// is disconnected rather than allowed to hold memory or slow a publisher;
// it reconnects and resumes from the replay window.
const (
	DefaultMaxQueue      = 1024
	DefaultMaxQueueBytes = 4 << 20
)

// dropReason says why the broadcaster ended a subscription.
type dropReason int

const (
	notDropped       dropReason = iota
	dropSlow                    // its queue overflowed
	dropWriteTimeout            // a write to it did not finish in time
	dropShutdown                // the server or the config is stopping
	dropClientLeft              // the client closed its connection; not counted
	dropKicked                  // DELETE /sse/clients/{id}
	numDropReasons
)

func (r dropReason) String() string {
	switch r {
	case dropSlow:
		return "slow"
	case dropWriteTimeout:
		return "write_timeout"
	case dropShutdown:
		return "shutdown"
	case dropClientLeft:
		return "client_left"
	case dropKicked:
		return "kicked"
	}
	return "none"
}

// subscriber is one connected stream's place in a channel. Publishers append
// encoded events to its queue without blocking. Who writes them depends on
// the stream: a handler's goroutine, woken through wake, for streams that
// stay with net/http (HTTP/2, HTTP/3, compressed); a shared writer, handed
// the subscriber when its queue becomes non-empty, for HTTP/1 connections
// taken over after the headers (conn set). Either takes everything queued
// at once and writes it with a single system call where it fits.
type subscriber struct {
	// id names the client in the admin API and the greeting.
	id string
	// channels are the stream's channels, in the order the handler
	// resolved them, without duplicates.
	channels   []string
	remoteAddr string
	since      time.Time
	// memberships are the subscriber's places in its channels, set by
	// subscribe, one per channel.
	memberships []membership
	// nameByChannel sends an event whose publisher gave it no name with its
	// channel as its name.
	nameByChannel bool

	// replay holds the events the stream missed before it connected; the
	// stream writes them before anything queued.
	replay [][]byte

	maxEvents int
	maxBytes  int

	// wake has room for one signal: a publisher that finds it full knows
	// the writer has not yet taken what is queued, and the writer takes
	// everything when it wakes, so one pending signal is enough. A drop of
	// a stream the handler keeps signals it too, and the loop finds the
	// drop where it takes the queue (takeUnlessDropped): it then waits on
	// one channel of the broadcaster's, not two.
	wake chan struct{}

	mu          sync.Mutex
	queue       [][]byte
	queuedBytes int
	// sent counts the events taken for writing, keep-alives aside.
	sent    int
	dropped dropReason
	// cutter, when set, stops writes that a drop or a shutdown must not
	// wait for.
	cutter writeCutter

	// conn is the connection taken over from net/http, nil while the
	// stream is served by its handler.
	conn *takenConn
	// scheduled is set, for a taken-over connection, while one writer owns
	// the subscriber: from the moment it is handed to the writers until a
	// writer finds nothing left to write. It keeps writes to the connection
	// one at a time and in order.
	scheduled bool
	// headWritten is how much of queue[0] a writer has already taken.
	headWritten int
	// keepAliveDue is set, for a taken-over connection, when a keep-alive
	// comment waits to be written. It is kept apart from the queue, whose
	// bounds count events only: a client that keeps up is never judged
	// slow for a comment the server chose to send.
	keepAliveDue bool
}

// writeCutter stops the writes of a stream whose client holds them up.
// Its methods are called with the subscriber's lock held.
type writeCutter interface {
	// interrupt makes the write in flight, and every later one, fail.
	interrupt()
	// limitTo makes every write, the one in flight included, end by
	// deadline.
	limitTo(deadline time.Time)
}

// shutdownWriteLimit bounds how long a stream that a reload or a stop ends
// may take to write what was queued for it: whatever the timeouts (or none),
// no client that stopped reading holds a shutdown up for longer.
const shutdownWriteLimit = time.Second

// setCutter sets what a drop calls to stop the stream's writes.
func (s *subscriber) setCutter(cutter writeCutter) {
	s.mu.Lock()
	s.cutter = cutter
	s.mu.Unlock()
}

// membership is a subscriber's place in one of its channels.
type membership struct {
	ch    *channel
	index int // in ch.subscribers, guarded by ch.mu
}

// onChannel reports whether the subscriber receives channel name.
func (s *subscriber) onChannel(name string) bool {
	return slices.Contains(s.channels, name)
}

func newSubscriber(channels []string, maxEvents, maxBytes int) *subscriber {
	return &subscriber{
		id:        rand.Text(),
		since:     time.Now(),
		channels:  channels,
		maxEvents: maxEvents,
		maxBytes:  maxBytes,
		wake:      make(chan struct{}, 1),
	}
}

// enqueueOutcome says what enqueue did with an event.
type enqueueOutcome int

const (
	enqueued    enqueueOutcome = iota
	toSchedule                 // queued for a taken-over connection no writer owns: hand it to one
	overflowed                 // the queue was full: the subscriber is dropped now
	alreadyGone                // the subscriber had been dropped before
)

// enqueue queues one encoded event, shared with every other subscriber and
// never modified.
func (s *subscriber) enqueue(frame []byte) enqueueOutcome {
	s.mu.Lock()
	if s.dropped != notDropped {
		s.mu.Unlock()
		return alreadyGone
	}
	// The byte bound is on the backlog: a client with nothing queued takes
	// any one event, so that a single large event does not drop clients
	// that keep up.
	if len(s.queue) >= s.maxEvents || (len(s.queue) > 0 && s.queuedBytes+len(frame) > s.maxBytes) {
		s.dropLocked(dropSlow)
		s.mu.Unlock()
		return overflowed
	}
	s.queue = append(s.queue, frame)
	s.queuedBytes += len(frame)
	if s.conn != nil {
		outcome := enqueued
		if !s.scheduled {
			s.scheduled = true
			outcome = toSchedule
		}
		s.mu.Unlock()
		return outcome
	}
	s.mu.Unlock()
	s.signal()
	return enqueued
}

// signal wakes the subscriber's stream, unless a wake-up is already due.
func (s *subscriber) signal() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// take swaps the queue for spare (emptied for reuse) and returns what was
// queued, so that the writer holds the lock only for the swap.
func (s *subscriber) take(spare [][]byte) [][]byte {
	clear(spare)
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.swapQueueLocked(spare)
}

// takeUnlessDropped is take for a stream's loop: once the broadcaster has
// dropped the subscriber it takes nothing, and says so.
func (s *subscriber) takeUnlessDropped(spare [][]byte) (frames [][]byte, dropped bool) {
	clear(spare)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.dropped != notDropped {
		return spare[:0], true
	}
	return s.swapQueueLocked(spare), false
}

// swapQueueLocked returns the queue, and makes spare the queue.
func (s *subscriber) swapQueueLocked(spare [][]byte) [][]byte {
	frames := s.queue
	s.queue = spare[:0]
	s.queuedBytes = 0
	s.sent += len(frames)
	return frames
}

// drop ends the subscription, and reports whether this call did: the first
// reason given is the one kept.
func (s *subscriber) drop(reason dropReason) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.dropLocked(reason)
}

func (s *subscriber) dropLocked(reason dropReason) bool {
	if s.dropped != notDropped {
		return false
	}
	s.dropped = reason
	if reason == dropShutdown {
		// A stream that ends for a shutdown writes what is queued first,
		// within its write timeout and the shutdown's own limit.
		if s.cutter != nil {
			s.cutter.limitTo(time.Now().Add(shutdownWriteLimit))
		}
	} else {
		// What a dropped client has queued is never written: release it,
		// and stop a write that waits on the client.
		s.queue = nil
		s.queuedBytes = 0
		s.headWritten = 0
		s.keepAliveDue = false
		if s.cutter != nil {
			s.cutter.interrupt()
		}
	}
	if s.conn == nil {
		// The stream's loop finds the drop where it takes the queue.
		s.signal()
	} else if !s.scheduled || s.conn.cancelHoldLocked() {
		// A writer closes the connection and ends the stream, at once
		// rather than after a flush interval that holds it; one that
		// owns the subscriber now finds the drop when it is done.
		s.scheduled = true
		s.conn.writers.scheduleOne(s)
	}
	return true
}

// takeLocked appends queued bytes to buf, up to limit bytes in all, and
// removes them from the queue: a frame that does not fit whole is taken in
// part, and the rest is taken next time.
func (s *subscriber) takeLocked(buf []byte, limit int) []byte {
	if s.keepAliveDue && s.headWritten == 0 && limit-len(buf) >= len(keepAliveComment) {
		// Between events, never inside one.
		buf = append(buf, keepAliveComment...)
		s.keepAliveDue = false
	}
	consumed := 0
	for _, frame := range s.queue {
		rest := frame[s.headWritten:]
		room := limit - len(buf)
		if room <= 0 {
			break
		}
		if len(rest) > room {
			buf = append(buf, rest[:room]...)
			s.headWritten += room
			break
		}
		buf = append(buf, rest...)
		s.headWritten = 0
		s.queuedBytes -= len(frame)
		consumed++
		s.sent++
	}
	if consumed > 0 {
		kept := copy(s.queue, s.queue[consumed:])
		clear(s.queue[kept:])
		s.queue = s.queue[:kept]
	}
	return buf
}

// dropReason returns why the subscriber was dropped, or notDropped.
func (s *subscriber) dropReason() dropReason {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.dropped
}

// validClientID reports whether id has the form of the ids newSubscriber
// gives: crypto/rand.Text's 26 characters of the base32 alphabet. Checking
// the form keeps any other text out of logs and lookups.
func validClientID(id string) bool {
	if len(id) != 26 {
		return false
	}
	for i := range len(id) {
		if c := id[i]; (c < 'A' || c > 'Z') && (c < '2' || c > '7') {
			return false
		}
	}
	return true
}
