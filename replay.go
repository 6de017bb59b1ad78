package ssebroadcast

import (
	"strconv"
	"time"
)

// Defaults of the replay window, the events a channel keeps for clients
// that reconnect with Last-Event-ID.
const (
	DefaultReplayEvents     = 1000
	DefaultReplayMaxBytes   = 4 << 20
	DefaultReplayTTL        = time.Hour
	DefaultReplayTotalBytes = 256 << 20
)

// entryOverhead approximates what a window entry costs beyond its frame, so
// that windows of many tiny events are bounded too.
const entryOverhead = 64

// broadcastLimits are the sse app's bounds, applied by the broadcaster and
// replaced whole on a reload: every channel's replay window (a zero events
// turns replay off), and what a publisher or a stream may ask for.
type broadcastLimits struct {
	events     int
	bytes      int
	ttl        time.Duration
	totalBytes int64 // over all channels

	maxChannelLength int // bytes of a channel name; 0: no limit
	maxEventSize     int // bytes of an event's id, name and data; 0: no limit
	maxChannels      int // channels at once; 0: no limit
}

// windowEntry is one published event kept for replay.
type windowEntry struct {
	seq       uint64
	id        string
	frame     []byte
	published time.Time
	// unnamed is set when the publisher gave the event no name: a stream
	// that names events by their channel sends it with one.
	unnamed bool
}

func (e *windowEntry) cost() int { return len(e.frame) + len(e.id) + entryOverhead }

// replayWindow is a channel's most recent events, oldest first. It is
// guarded by its channel's lock.
type replayWindow struct {
	entries []windowEntry // entries[start:] are live
	start   int
	bytes   int
	// lost is the sequence number of the newest event the window let go
	// (by count, bytes, age, the total, or with replay off): a client that
	// last saw an older one cannot be sent everything after it.
	lost uint64
}

func (w *replayWindow) len() int { return len(w.entries) - w.start }

// append adds an entry; the caller trims afterwards.
func (w *replayWindow) append(e windowEntry) {
	w.entries = append(w.entries, e)
	w.bytes += e.cost()
}

// dropOldest removes the oldest entry and returns its cost.
func (w *replayWindow) dropOldest() int {
	e := &w.entries[w.start]
	cost := e.cost()
	w.lost = max(w.lost, e.seq)
	*e = windowEntry{} // release the frame
	w.start++
	w.bytes -= cost
	if w.start == len(w.entries) {
		w.entries, w.start = w.entries[:0], 0
	} else if w.start > 64 && w.start > len(w.entries)/2 {
		// Move the live entries down so the slice does not grow forever.
		n := copy(w.entries, w.entries[w.start:])
		clear(w.entries[n:])
		w.entries, w.start = w.entries[:n], 0
	}
	return cost
}

// trim drops entries over the count and byte limits and those older than
// the TTL, and returns how many bytes it released.
func (w *replayWindow) trim(limits broadcastLimits, now time.Time) int {
	released := 0
	for w.len() > 0 {
		oldest := &w.entries[w.start]
		if w.len() > limits.events || w.bytes > limits.bytes ||
			(limits.ttl > 0 && now.Sub(oldest.published) > limits.ttl) {
			released += w.dropOldest()
			continue
		}
		break
	}
	return released
}

// kept returns the live entries that the limits keep at now, oldest first,
// and the sequence number of the newest event the window has let go or no
// longer keeps: the window meets new limits at its channel's next publish
// or the janitor's next pass, and until then holds entries the limits no
// longer keep, which no client may be served.
func (w *replayWindow) kept(limits broadcastLimits, now time.Time) (kept []windowEntry, lost uint64) {
	live := w.entries[w.start:]
	from, bytes := len(live), 0
	for from > 0 && len(live)-from < limits.events {
		e := &live[from-1]
		if bytes += e.cost(); bytes > limits.bytes || (limits.ttl > 0 && now.Sub(e.published) > limits.ttl) {
			break
		}
		from--
	}
	lost = w.lost
	if from > 0 {
		lost = max(lost, live[from-1].seq)
	}
	return live[from:], lost
}

// Assigned ids are the channel's sequence numbers: at least the publish
// time in microseconds since the Unix epoch, and always one more than the
// channel's last. Written as 16 decimal digits (enough until the year
// 2286), they sort as text in the order they were assigned, and a
// restarted Caddy, whose clock has moved on, continues above them.
const seqDigits = 16

// nextSeq returns the sequence number that follows last at time now.
func nextSeq(last uint64, now time.Time) uint64 {
	return max(last+1, uint64(now.UnixMicro()))
}

// appendSeq writes seq as an assigned id.
func appendSeq(buf []byte, seq uint64) []byte {
	var digits [20]byte
	s := strconv.AppendUint(digits[:0], seq, 10)
	for i := len(s); i < seqDigits; i++ {
		buf = append(buf, '0')
	}
	return append(buf, s...)
}

// parseSeq reads an id written by appendSeq.
func parseSeq(id string) (uint64, bool) {
	if len(id) != seqDigits {
		return 0, false
	}
	seq, err := strconv.ParseUint(id, 10, 64)
	return seq, err == nil
}
