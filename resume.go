package ssebroadcast

import (
	"encoding/json"
	"fmt"
	"slices"
	"time"
)

// What a stream is sent when it connects, before live events: the events
// its client missed since its Last-Event-ID, in id order over all the
// stream's channels; a reset event first where the history kept cannot
// prove that those are all; or, for a client with no id, a backlog.

// resumeRequest is what a connecting stream asks to be sent first.
type resumeRequest struct {
	// lastEventID is the id the client last saw, when given is set.
	lastEventID string
	given       bool
	// backlog is how many of the newest kept events a client without an
	// id receives; resetEvent names the reset event, "" for none.
	backlog    int
	resetEvent string
}

// earliestID asks, as a Last-Event-ID, for everything still kept.
const earliestID = "earliest"

// Why a stream cannot be sent every event after its client's id.
const (
	// resetUnknownID: the id is not one this broadcaster can place.
	resetUnknownID = "unknown_id"
	// resetRestart: the id is from before the server's last start, and
	// replay windows live in memory. Not while a durable transport
	// numbers events (Sink.Durable): its history outlives the process.
	resetRestart = "restart"
	// resetExpired: a channel let events after the id go, by count,
	// bytes, age or the total, or kept none with replay off.
	resetExpired = "expired"
)

// keptEvent is a window entry on its way to a connecting stream.
type keptEvent struct {
	windowEntry
	ch *channel
}

// subscribe adds s to each of its channels, and sets what it is sent
// first. Under orderMu, no event is numbered meanwhile: the events taken
// from the windows and the live ones that follow meet with no gap and no
// duplicate, and all of them in id order.
func (b *broadcaster) subscribe(s *subscriber, req *resumeRequest) error {
	limits := b.limits.Load()
	for _, name := range s.channels {
		if err := limits.checkChannel(name); err != nil {
			return err
		}
	}
	b.orderMu.Lock()
	defer b.orderMu.Unlock()
	if err := b.checkRoomFor(s.channels, limits); err != nil {
		return err
	}
	kept, lost := b.join(s, limits)
	b.setReplay(s, kept, lost, req)
	b.clientsMu.Lock()
	b.clients[s.id] = s
	b.clientsMu.Unlock()
	return nil
}

// join adds s to each of its channels, and returns what their windows keep
// that the limits let it be sent, in id order, and how many events each
// let go. orderMu is held.
//
// It is apart from subscribe, and setReplay too, because a stream's
// handler starts here, parked later in a shallower place: the frames on
// this path decide how large a stack it keeps (see keptStream).
func (b *broadcaster) join(s *subscriber, limits *broadcastLimits) (kept []keptEvent, lost []uint64) {
	now := time.Now()
	lost = make([]uint64, len(s.channels))
	s.memberships = make([]membership, len(s.channels))
	for i, name := range s.channels {
		// The room was checked above, under orderMu, which every
		// creation of a channel by a stream holds.
		ch, _ := b.lockChannel(name, true, 0)
		// With replay off, none is kept, and every event the window still
		// holds counts as let go.
		entries, channelLost := ch.window.kept(*limits, now)
		lost[i] = channelLost
		for _, e := range entries {
			kept = append(kept, keptEvent{e, ch})
		}
		s.memberships[i] = membership{ch: ch, index: len(ch.subscribers)}
		ch.subscribers = append(ch.subscribers, member{s: s, slot: i})
		ch.mu.Unlock()
	}
	// Each window is in id order; together they are put in it.
	slices.SortFunc(kept, func(a, b keptEvent) int {
		switch {
		case a.seq < b.seq:
			return -1
		case a.seq > b.seq:
			return 1
		}
		return 0
	})
	return kept, lost
}

// setReplay sets what s is sent first, of what its channels kept: what
// req asks for, after a reset event when they cannot give all of it.
func (b *broadcaster) setReplay(s *subscriber, kept []keptEvent, lost []uint64, req *resumeRequest) {
	first, reset := b.startOf(kept, lost, s.channels, *req)
	if reset != nil && req.resetEvent != "" {
		s.replay = append(s.replay, reset.encode(req.resetEvent))
	}
	for _, e := range first {
		frame := e.frame
		if e.unnamed && s.nameByChannel {
			frame = withEventName(frame, e.ch.namePrefix)
		}
		s.replay = append(s.replay, frame)
	}
	b.replayed.Add(uint64(len(first)))
}

// checkRoomFor refuses a stream whose channels would make more new
// channels than max_channels leaves room for. orderMu is held.
func (b *broadcaster) checkRoomFor(channels []string, limits *broadcastLimits) error {
	if limits.maxChannels <= 0 {
		return nil
	}
	b.mu.RLock()
	defer b.mu.RUnlock()
	fresh := 0
	for _, name := range channels {
		if b.channels[name] == nil {
			fresh++
		}
	}
	if fresh > 0 && len(b.channels)+fresh > limits.maxChannels {
		return fmt.Errorf("%w: %d channels exist, the sse app's max_channels", errTooManyChannels, len(b.channels))
	}
	return nil
}

// startOf chooses, of the kept events of a stream's channels (in id order)
// and the newest event each channel has let go, what the stream is sent
// first, and the reset to send before it when that cannot be every event
// the client missed.
func (b *broadcaster) startOf(kept []keptEvent, lost []uint64, channels []string, req resumeRequest) ([]keptEvent, *resetNotice) {
	switch {
	case !req.given:
		return kept[len(kept)-min(len(kept), req.backlog):], nil
	case req.lastEventID == earliestID:
		return kept, nil
	}
	seq, placed := b.place(req.lastEventID, kept)
	switch {
	case !placed:
		return kept, &resetNotice{Reason: resetUnknownID, Channels: channels}
	case seq < b.bootSeq:
		return kept, &resetNotice{Reason: resetRestart, Channels: channels}
	}
	// The first kept event after the client's (never equal: found
	// events place the id at their own number, and lie before it).
	from, _ := slices.BinarySearchFunc(kept, seq, func(e keptEvent, seq uint64) int {
		if e.seq <= seq {
			return -1
		}
		return 1
	})
	var reset *resetNotice
	for i, channelLost := range lost {
		if seq < channelLost {
			if reset == nil {
				reset = &resetNotice{Reason: resetExpired}
			}
			reset.Channels = append(reset.Channels, channels[i])
		}
	}
	return kept[from:], reset
}

// place returns the sequence number of the event a client last saw: the
// newest kept event with that id, or the number an assigned id stands for,
// if the broadcaster has assigned it yet.
func (b *broadcaster) place(id string, kept []keptEvent) (uint64, bool) {
	for i := len(kept) - 1; i >= 0; i-- {
		if kept[i].id == id {
			return kept[i].seq, true
		}
	}
	seq, ok := parseSeq(id)
	if !ok || seq > b.lastSeq.Load() {
		return 0, false
	}
	return seq, true
}

// resetNotice is the data of the reset event: why the stream cannot be
// sent everything the client missed, and on which of its channels.
type resetNotice struct {
	Reason   string   `json:"reason"`
	Channels []string `json:"channels"`
}

// encode returns the reset event's frame: named, without an id, so that a
// browser's lastEventId stays where it was.
func (n *resetNotice) encode(name string) []byte {
	data, _ := json.Marshal(n) // strings always marshal
	ev := Event{Type: name, Data: string(data)}
	return ev.encode(make([]byte, 0, ev.encodedSize()))
}
