package ssebroadcast

import (
	"fmt"
	"sync"
	"sync/atomic"
)

// broadcaster maps channels to their subscribers and fans published events
// out to them. One broadcaster serves the whole process: the sse app keeps it
// in a caddy.UsagePool so that a config reload finds the same one.
//
// Publishing has two halves: publish validates and encodes (the publisher's
// side) and fanOut queues the encoded bytes for this node's subscribers. A
// transport between nodes belongs between the two.
type broadcaster struct {
	mu       sync.RWMutex
	channels map[string]*channel

	published  atomic.Uint64
	deliveries atomic.Uint64
	slowDrops  atomic.Uint64
}

// channel is the set of subscribers of one channel name.
type channel struct {
	mu          sync.Mutex
	subscribers map[*subscriber]struct{}
}

// encodedEvent is a validated event with its wire form, encoded once and
// shared, read-only, by every subscriber that receives it.
type encodedEvent struct {
	channel string
	id      string
	frame   []byte
}

func newBroadcaster() *broadcaster {
	return &broadcaster{channels: make(map[string]*channel)}
}

// Destruct implements caddy.Destructor. The broadcaster holds no resources
// beyond memory; its subscribers are ended by the streams that own them.
func (b *broadcaster) Destruct() error { return nil }

// subscribe adds s to its channel.
func (b *broadcaster) subscribe(s *subscriber) {
	b.mu.Lock()
	defer b.mu.Unlock()
	ch := b.channels[s.channel]
	if ch == nil {
		ch = &channel{subscribers: make(map[*subscriber]struct{})}
		b.channels[s.channel] = ch
	}
	ch.mu.Lock()
	ch.subscribers[s] = struct{}{}
	ch.mu.Unlock()
}

// unsubscribe removes s from its channel, and the channel once it is empty.
func (b *broadcaster) unsubscribe(s *subscriber) {
	b.mu.Lock()
	defer b.mu.Unlock()
	ch := b.channels[s.channel]
	if ch == nil {
		return
	}
	ch.mu.Lock()
	delete(ch.subscribers, s)
	empty := len(ch.subscribers) == 0
	ch.mu.Unlock()
	if empty {
		// Removal happens under b.mu, and subscribe holds b.mu too, so no
		// subscriber can join a channel that is no longer in the map.
		delete(b.channels, s.channel)
	}
}

// publish validates every event, then encodes and fans out each in order.
// A batch is all or nothing: if any event is invalid, none is sent.
func (b *broadcaster) publish(events []Event) ([]Result, error) {
	if len(events) == 0 {
		return nil, errNoEvents
	}
	for i := range events {
		if err := events[i].validate(); err != nil {
			if len(events) > 1 {
				return nil, fmt.Errorf("event %d: %w", i, err)
			}
			return nil, err
		}
	}
	results := make([]Result, len(events))
	for i := range events {
		ev := &events[i]
		enc := encodedEvent{
			channel: ev.channelName(),
			id:      ev.ID,
			frame:   ev.encode(make([]byte, 0, ev.encodedSize())),
		}
		results[i] = Result{Channel: enc.channel, ID: enc.id, Clients: b.fanOut(&enc)}
	}
	return results, nil
}

// fanOut queues the event for every subscriber of its channel on this node
// and returns how many it was queued for. It never waits on a client.
func (b *broadcaster) fanOut(ev *encodedEvent) int {
	b.published.Add(1)
	b.mu.RLock()
	ch := b.channels[ev.channel]
	b.mu.RUnlock()
	if ch == nil {
		return 0
	}
	queued := 0
	ch.mu.Lock()
	for s := range ch.subscribers {
		switch s.enqueue(ev.frame) {
		case enqueued:
			queued++
		case overflowed:
			b.slowDrops.Add(1)
		}
	}
	ch.mu.Unlock()
	b.deliveries.Add(uint64(queued))
	return queued
}

// Stats is a snapshot of the broadcaster's counters, as GET /sse/stats
// reports them.
type Stats struct {
	// Clients is the number of connected clients over all channels.
	Clients int `json:"clients"`
	// Channels maps each channel with connected clients to its figures.
	Channels map[string]ChannelStats `json:"channels"`
	// EventsPublished counts events published since the process started.
	EventsPublished uint64 `json:"events_published"`
	// Deliveries counts events queued for a client, one per client reached.
	Deliveries uint64 `json:"deliveries"`
	// SlowClientsDropped counts clients disconnected because their queue
	// overflowed.
	SlowClientsDropped uint64 `json:"slow_clients_dropped"`
}

// ChannelStats holds one channel's figures.
type ChannelStats struct {
	Clients int `json:"clients"`
}

func (b *broadcaster) stats() Stats {
	st := Stats{
		Channels:           make(map[string]ChannelStats),
		EventsPublished:    b.published.Load(),
		Deliveries:         b.deliveries.Load(),
		SlowClientsDropped: b.slowDrops.Load(),
	}
	b.mu.RLock()
	defer b.mu.RUnlock()
	for name, ch := range b.channels {
		ch.mu.Lock()
		n := len(ch.subscribers)
		ch.mu.Unlock()
		st.Channels[name] = ChannelStats{Clients: n}
		st.Clients += n
	}
	return st
}
