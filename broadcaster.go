package ssebroadcast

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// broadcaster maps channels to their subscribers and replay windows, and
// fans published events out to them. One broadcaster serves the whole
// process: the sse app keeps it in a caddy.UsagePool, so that a config
// reload finds the same channels, windows, id sequence and counters.
//
// Publishing has two halves: publish validates and encodes (the publisher's
// side) and fanOut numbers the encoded event, keeps it for replay and queues
// it for this node's subscribers. A transport between nodes belongs between
// the two.
//
// Events are numbered and fanned out one at a time, in one order over all
// channels (orderMu), and a stream joins its channels in that order too:
// a stream of several channels then receives their events in id order,
// with ids strictly increasing, however many publishers publish at once.
type broadcaster struct {
	// orderMu orders every numbering and fan-out, and every stream's
	// joining of its channels, over all channels.
	orderMu sync.Mutex

	mu       sync.RWMutex
	channels map[string]*channel
	// forgotten holds, for channels removed from the map, the newest
	// event each let go, so that a client resuming on a channel that was
	// idle for a while still learns that it missed events; forgottenFloor
	// stands for the channels pruned from it. Guarded by mu.
	forgotten      map[string]uint64
	forgottenFloor uint64
	// bootSeq is below every sequence number this process assigns: an id
	// under it is from before a restart. It is 0 while a durable
	// transport numbers events (Sink.Durable): their history outlives the
	// process. Guarded by orderMu once the broadcaster is shared.
	bootSeq uint64
	// durable counts the transports that number events from a durable
	// history; while it is above 0 the node numbers nothing of its own.
	// Guarded by orderMu.
	durable int

	// clientsMu guards clients, every connected subscriber by its id.
	clientsMu sync.RWMutex
	clients   map[string]*subscriber

	// lastSeq is the last sequence number handed out, over all channels:
	// one sequence keeps ids strictly increasing within every channel even
	// when an idle channel is removed and later made anew.
	lastSeq atomic.Uint64

	limits      atomic.Pointer[broadcastLimits]
	windowBytes atomic.Int64 // over all channels

	connected   atomic.Int64
	published   atomic.Uint64
	deliveries  atomic.Uint64
	replayed    atomic.Uint64
	rejected    atomic.Uint64
	disconnects [numDropReasons]atomic.Uint64

	// writers write to the connections taken over from net/http;
	// hangups tells when their clients leave.
	writers *writerPool
	hangups *hangupWatcher

	stopJanitor chan struct{}
	janitorDone chan struct{}
}

// channel is one channel's subscribers and replay window. Its lock orders
// everything that happens to the channel: publishes, and the moment a
// resuming subscriber switches from replay to live.
type channel struct {
	name string
	// namePrefix is the "event:" field that names an unnamed event after
	// the channel, for streams that ask for it.
	namePrefix []byte

	mu sync.Mutex
	// subscribers is a slice, walked in memory order on every publish;
	// each subscriber knows its index, so leaving is O(1).
	subscribers []member
	window      replayWindow
	// removed is set, under both the broadcaster's and the channel's lock,
	// when the channel leaves the map; whoever holds a stale pointer to it
	// looks it up again.
	removed bool
	// toSchedule collects, during one fan-out, the taken-over connections
	// that need a writer, so that they are handed over in one go.
	toSchedule []*subscriber
}

// member is a subscriber in a channel's list, with the slot of the
// channel among its memberships.
type member struct {
	s    *subscriber
	slot int
}

func newBroadcaster(limits broadcastLimits) *broadcaster {
	b := &broadcaster{
		channels:    make(map[string]*channel),
		forgotten:   make(map[string]uint64),
		bootSeq:     uint64(time.Now().UnixMicro()),
		clients:     make(map[string]*subscriber),
		writers:     newWriterPool(),
		stopJanitor: make(chan struct{}),
		janitorDone: make(chan struct{}),
	}
	b.hangups = newHangupWatcher(func(s *subscriber, reason dropReason) { b.drop(s, reason) })
	b.limits.Store(&limits)
	go b.runJanitor()
	return b
}

// Destruct implements caddy.Destructor: the last config using the
// broadcaster is gone.
func (b *broadcaster) Destruct() error {
	close(b.stopJanitor)
	<-b.janitorDone
	b.hangups.close()
	return nil
}

// setLimits applies new replay limits in place and returns the limits they
// replace. Windows meet them at their channel's next publish or the
// janitor's next pass, not at once: a config that fails to start puts the
// previous limits back, and must not have destroyed windows meanwhile.
func (b *broadcaster) setLimits(limits *broadcastLimits) (previous *broadcastLimits) {
	return b.limits.Swap(limits)
}

// restoreLimits puts back previous if limits are still the ones in force.
func (b *broadcaster) restoreLimits(limits, previous *broadcastLimits) {
	if previous != nil {
		b.limits.CompareAndSwap(limits, previous)
	}
}

// lockChannel returns the named channel, locked, creating it if create is
// set; without create it returns nil for a channel that does not exist.
// It returns errTooManyChannels if creating it would pass maxChannels (0
// for no limit).
func (b *broadcaster) lockChannel(name string, create bool, maxChannels int) (*channel, error) {
	for {
		b.mu.RLock()
		ch := b.channels[name]
		b.mu.RUnlock()
		if ch == nil {
			if !create {
				return nil, nil
			}
			b.mu.Lock()
			ch = b.channels[name]
			if ch == nil {
				if maxChannels > 0 && len(b.channels) >= maxChannels {
					b.mu.Unlock()
					return nil, fmt.Errorf("%w: %d channels exist, the sse app's max_channels", errTooManyChannels, len(b.channels))
				}
				ch = &channel{name: name, namePrefix: appendField(nil, "event", name)}
				// What the channel let go before it was last removed.
				ch.window.lost = max(b.forgotten[name], b.forgottenFloor)
				delete(b.forgotten, name)
				b.channels[name] = ch
			}
			b.mu.Unlock()
		}
		ch.mu.Lock()
		if !ch.removed {
			return ch, nil
		}
		ch.mu.Unlock()
	}
}

// Errors of the broadcaster's limits.
var (
	errTooManyChannels = errors.New("too many channels")
	errEventTooLarge   = errors.New("event too large")
)

// removeIfIdle removes ch from the map if it has neither subscribers nor
// events to replay.
func (b *broadcaster) removeIfIdle(ch *channel) {
	b.mu.Lock()
	defer b.mu.Unlock()
	ch.mu.Lock()
	defer ch.mu.Unlock()
	if ch.removed || len(ch.subscribers) > 0 || ch.window.len() > 0 {
		return
	}
	ch.removed = true
	delete(b.channels, ch.name)
	b.forgetLocked(ch.name, ch.window.lost)
}

// forgetLocked remembers that channel let go of the event numbered seq,
// while the channel is not in the map; b.mu is held. The memory is
// bounded: past maxForgotten channels, the half that let go of the oldest
// events are folded into forgottenFloor, which stands for every channel
// not remembered, at the cost of a reset too many for some of them.
func (b *broadcaster) forgetLocked(channel string, seq uint64) {
	if seq <= b.forgottenFloor {
		return
	}
	b.forgotten[channel] = max(b.forgotten[channel], seq)
	if len(b.forgotten) <= maxForgotten {
		return
	}
	seqs := make([]uint64, 0, len(b.forgotten))
	for _, seq := range b.forgotten {
		seqs = append(seqs, seq)
	}
	slices.Sort(seqs)
	b.forgottenFloor = seqs[len(seqs)/2]
	for name, seq := range b.forgotten {
		if seq <= b.forgottenFloor {
			delete(b.forgotten, name)
		}
	}
}

// maxForgotten bounds how many removed channels' losses are remembered one
// by one.
const maxForgotten = 100000

// checkChannel refuses a channel name longer than maxChannelLength.
func (limits *broadcastLimits) checkChannel(name string) error {
	if limits.maxChannelLength > 0 && len(name) > limits.maxChannelLength {
		return &FieldError{Field: "channel", Reason: fmt.Sprintf(
			"is %d bytes long, longer than the sse app's max_channel_length of %d", len(name), limits.maxChannelLength)}
	}
	return nil
}

// checkEvent refuses an event over the limits.
func (limits *broadcastLimits) checkEvent(ev *Event) error {
	if err := limits.checkChannel(ev.channelName()); err != nil {
		return err
	}
	if size := len(ev.ID) + len(ev.Type) + len(ev.Data); limits.maxEventSize > 0 && size > limits.maxEventSize {
		return fmt.Errorf("%w: its id, name and data are %d bytes, more than the sse app's max_event_size of %d",
			errEventTooLarge, size, limits.maxEventSize)
	}
	return nil
}

// unsubscribe removes s from its channels, and each channel once it is
// idle.
func (b *broadcaster) unsubscribe(s *subscriber) {
	if len(s.memberships) == 0 {
		return
	}
	b.clientsMu.Lock()
	delete(b.clients, s.id)
	b.clientsMu.Unlock()
	for i := range s.memberships {
		ch := s.memberships[i].ch
		ch.mu.Lock()
		// The index moves, under the channel's lock, as others leave.
		index := s.memberships[i].index
		last := len(ch.subscribers) - 1
		moved := ch.subscribers[last]
		ch.subscribers[index] = moved
		moved.s.memberships[moved.slot].index = index
		ch.subscribers[last] = member{}
		ch.subscribers = ch.subscribers[:last]
		idle := len(ch.subscribers) == 0 && ch.window.len() == 0
		ch.mu.Unlock()
		if idle {
			b.removeIfIdle(ch)
		}
	}
}

// preparedEvent is a validated event with its wire form, encoded once and
// shared, read-only, by every subscriber that receives it.
type preparedEvent struct {
	channel string
	id      string // empty until fanOut assigns one
	frame   []byte
	// unnamed is set when the publisher gave the event no name; named is
	// then its frame with the channel as its name, made when a stream
	// first asks for it.
	unnamed bool
	named   []byte
}

// frameFor returns the frame to queue for s: the event as published, or,
// for a stream that names events by their channel, with the channel's
// name where the publisher gave none.
func (ev *preparedEvent) frameFor(s *subscriber, ch *channel) []byte {
	if !ev.unnamed || !s.nameByChannel {
		return ev.frame
	}
	if ev.named == nil {
		ev.named = withEventName(ev.frame, ch.namePrefix)
	}
	return ev.named
}

// withEventName returns frame with the event field namePrefix after its
// first line, the id that every published event has.
func withEventName(frame, namePrefix []byte) []byte {
	idLine := bytes.IndexByte(frame, '\n') + 1
	named := make([]byte, 0, len(frame)+len(namePrefix))
	named = append(named, frame[:idLine]...)
	named = append(named, namePrefix...)
	return append(named, frame[idLine:]...)
}

// idDigitsAt is where an assigned id's digits stand in a frame encoded with
// a placeholder id: right after "id: ".
const idDigitsAt = len("id: ")

// publish validates every event, then encodes each and hands it to
// transport, in order. A batch is all or nothing: if any event is invalid,
// none is sent.
func (b *broadcaster) publish(ctx context.Context, transport Transport, events []Event) ([]Result, error) {
	if len(events) == 0 {
		return nil, errNoEvents
	}
	limits := b.limits.Load()
	for i := range events {
		err := events[i].validate()
		if err == nil {
			err = limits.checkEvent(&events[i])
		}
		if err != nil {
			if len(events) > 1 {
				return nil, fmt.Errorf("event %d: %w", i, err)
			}
			return nil, err
		}
	}
	// A batch that would make more channels than are left is refused
	// whole. Streams arriving meanwhile may take the last ones; the
	// batch's events then still go, over the bound by at most its size.
	if err := b.checkNewChannels(events, limits); err != nil {
		return nil, err
	}
	// Every addressed client must be connected, here or on another node
	// of a cluster, before any event goes.
	cluster, _ := transport.(Cluster)
	var targets []*subscriber
	var remote []*remoteTarget
	for i := range events {
		if events[i].Client == "" {
			continue
		}
		if targets == nil {
			targets = make([]*subscriber, len(events))
			remote = make([]*remoteTarget, len(events))
		}
		target, err := b.client(events[i].Client, events[i].Channel)
		if err != nil && cluster != nil && !b.holds(events[i].Client) {
			remote[i] = &remoteTarget{client: events[i].Client, channel: events[i].Channel}
			// A single event needs no look-up first: its send finds
			// the client, or nothing is sent.
			if len(events) == 1 {
				continue
			}
			err = locate(ctx, cluster, events[i].Client, events[i].Channel)
		}
		if err != nil {
			if len(events) > 1 {
				return nil, fmt.Errorf("event %d: %w", i, err)
			}
			return nil, err
		}
		targets[i] = target
	}

	// A single event, the common publish, costs no allocation here.
	var one [1]Envelope
	envelopes := one[:]
	if len(events) > 1 {
		envelopes = make([]Envelope, len(events))
	}
	for i := range events {
		ev := events[i]
		env := Envelope{Channel: ev.channelName(), ID: ev.ID, Unnamed: ev.Type == ""}
		if targets != nil && targets[i] != nil && ev.Channel == "" {
			env.Channel = targets[i].channels[0]
		}
		if remote != nil && remote[i] != nil && ev.Channel == "" {
			// The node that holds the client knows its channels.
			env.Channel = ""
		}
		if ev.ID == "" {
			// Encode with a placeholder of the assigned id's width, so
			// that the fan-out only has to write the digits in place.
			ev.ID = seqPlaceholder
		}
		env.Frame = ev.encode(make([]byte, 0, ev.encodedSize()))
		envelopes[i] = env
	}

	// Events for every client of a channel go through the transport;
	// those for one client, to it, in order with them: each run of the
	// first kind is handed over whole.
	results := make([]Result, len(events))
	for from := 0; from < len(events); {
		if targets != nil && targets[from] != nil {
			b.orderMu.Lock()
			results[from] = b.sendTo(targets[from], envelopes[from])
			b.orderMu.Unlock()
			from++
			continue
		}
		if remote != nil && remote[from] != nil {
			result, err := sendRemote(ctx, cluster, *remote[from], envelopes[from])
			if err != nil {
				if len(events) > 1 {
					return nil, fmt.Errorf("event %d: %w", from, err)
				}
				return nil, err
			}
			results[from] = result
			from++
			continue
		}
		to := from + 1
		for to < len(events) && (targets == nil || (targets[to] == nil && remote[to] == nil)) {
			to++
		}
		if err := carry(ctx, transport, envelopes[from:to], results[from:to]); err != nil {
			if from > 0 || len(events) > 1 {
				return nil, fmt.Errorf("event %d: %w", from, err)
			}
			return nil, err
		}
		from = to
	}
	for i := range results {
		if results[i].Channel == "" {
			results[i].Channel = envelopes[i].Channel
		}
	}
	return results, nil
}

// carry hands events to transport. The memory transport is called as
// itself, not through the interface, so that a single event's envelope
// stays on the stack: publishing within one node costs what it did before
// there were transports.
func carry(ctx context.Context, transport Transport, events []Envelope, results []Result) error {
	if memory, ok := transport.(*MemoryTransport); ok {
		return memory.Publish(ctx, events, results)
	}
	// Another transport may keep them: its own copy, on the heap.
	return transport.Publish(ctx, slices.Clone(events), results)
}

// Deliver numbers an event that a transport carried, keeps it for replay
// and queues it for this node's clients of its channel, in the order the
// transport delivers (see Sink).
func (b *broadcaster) Deliver(seq uint64, env Envelope) Result {
	ev := preparedEvent{channel: env.Channel, id: env.ID, frame: env.Frame, unnamed: env.Unnamed}
	b.orderMu.Lock()
	if b.durable > 0 && seq > 0 {
		if seq <= b.lastSeq.Load() {
			// Had already, from another consumer of the same history.
			b.orderMu.Unlock()
			if ev.id == "" {
				ev.id = string(appendSeq(nil, seq))
			}
			return Result{ID: ev.id}
		}
		if seq > b.lastSeq.Load()+1 {
			// The history let the numbers between go before this node
			// had them: the oldest it kept, when the node starts, or
			// what its limits took while the node was away.
			b.setFloor(seq - 1)
		}
	}
	clients := b.fanOut(&ev, seq)
	b.orderMu.Unlock()
	return Result{ID: ev.id, Clients: clients}
}

// Durable implements Sink: while a transport numbers events from a history
// that outlives the process, ids are its numbers alone.
func (b *broadcaster) Durable() (release func()) {
	b.orderMu.Lock()
	defer b.orderMu.Unlock()
	if b.durable++; b.durable == 1 {
		b.numberByTransport()
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			b.orderMu.Lock()
			defer b.orderMu.Unlock()
			if b.durable--; b.durable == 0 {
				// Ids from the transport's history are below what the
				// node hands out next, and their windows may not hold
				// what follows them: as after a restart.
				b.bootSeq = nextSeq(b.lastSeq.Load(), time.Now())
			}
		})
	}
}

// numberByTransport starts numbering by a durable transport: the windows
// so far hold numbers of the node's own, which the transport's cannot be
// ordered with, and go; so does what removed channels let go. An id of the
// node's own is then above every number delivered, unknown: a resume from
// it is reset. The caller holds orderMu.
func (b *broadcaster) numberByTransport() {
	b.mu.Lock()
	for _, ch := range b.channels {
		ch.mu.Lock()
		for ch.window.len() > 0 {
			b.windowBytes.Add(-int64(ch.window.dropOldest()))
		}
		ch.window.lost = 0
		ch.mu.Unlock()
	}
	clear(b.forgotten)
	b.forgottenFloor = 0
	b.mu.Unlock()
	b.lastSeq.Store(0)
	b.bootSeq = 0
}

// setFloor records that every event numbered up to floor is let go, on
// every channel: the durable history no longer holds them, and which
// channels they were of is not known. The caller holds orderMu.
func (b *broadcaster) setFloor(floor uint64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.forgottenFloor = max(b.forgottenFloor, floor)
	for _, ch := range b.channels {
		ch.mu.Lock()
		ch.window.lost = max(ch.window.lost, floor)
		ch.mu.Unlock()
	}
}

// ownSeq numbers an event that the node numbers itself: the next number of
// its own sequence or, while a durable transport numbers events, the number
// of the last event delivered, where a resume from the event's id goes on.
// The caller holds orderMu.
func (b *broadcaster) ownSeq(now time.Time) uint64 {
	if b.durable > 0 {
		return b.lastSeq.Load()
	}
	return b.nextSeq(now)
}

var seqPlaceholder = string(appendSeq(nil, 0))

// fanOut numbers the event, keeps it in its channel's window and queues it
// for every subscriber of the channel on this node; seq is its number, or
// 0 for one the node gives it (ownSeq). It returns how many subscribers it was
// queued for, and never waits on a client. The caller holds orderMu.
func (b *broadcaster) fanOut(ev *preparedEvent, seq uint64) int {
	b.published.Add(1)
	limits := b.limits.Load()
	// The bound on channels was checked before the batch: an event is
	// never dropped half way through one.
	ch, _ := b.lockChannel(ev.channel, limits.events > 0, 0)
	now := time.Now()
	if seq == 0 {
		seq = b.ownSeq(now)
	} else {
		b.lastSeq.Store(max(b.lastSeq.Load(), seq))
	}
	if ev.id == "" {
		appendSeq(ev.frame[idDigitsAt:idDigitsAt], seq)
		ev.id = string(ev.frame[idDigitsAt : idDigitsAt+seqDigits])
	}
	if ch == nil {
		// With replay off, and no stream on the channel: the event is
		// lost to anyone who resumes on it later.
		b.mu.Lock()
		b.forgetLocked(ev.channel, seq)
		b.mu.Unlock()
		return 0
	}

	if limits.events == 0 {
		// With replay off, a window left from before would replay events
		// around a gap: this one is not kept.
		for ch.window.len() > 0 {
			b.windowBytes.Add(-int64(ch.window.dropOldest()))
		}
		ch.window.lost = seq
	} else {
		entry := windowEntry{seq: seq, id: ev.id, frame: ev.frame, published: now, unnamed: ev.unnamed}
		ch.window.append(entry)
		added := int64(entry.cost() - ch.window.trim(*limits, now))
		// Over the total, the channel that publishes gives back its own
		// oldest events: memory stays bounded whatever publishers do.
		for b.windowBytes.Add(added) > limits.totalBytes && ch.window.len() > 0 {
			added = -int64(ch.window.dropOldest())
		}
	}

	queued := 0
	for _, m := range ch.subscribers {
		s := m.s
		switch s.enqueue(ev.frameFor(s, ch)) {
		case enqueued:
			queued++
		case toSchedule:
			queued++
			ch.toSchedule = append(ch.toSchedule, s)
		case overflowed:
			b.disconnects[dropSlow].Add(1)
		}
	}
	if len(ch.toSchedule) > 0 {
		b.writers.schedule(ch.toSchedule)
		clear(ch.toSchedule)
		ch.toSchedule = ch.toSchedule[:0]
	}
	b.deliveries.Add(uint64(queued))
	idle := len(ch.subscribers) == 0 && ch.window.len() == 0
	ch.mu.Unlock()
	if idle {
		// A channel whose one event the total took back holds nothing.
		b.removeIfIdle(ch)
	}
	return queued
}

// checkNewChannels refuses events that would make more new channels than
// maxChannels leaves room for. With replay off, publishing makes no
// channel.
func (b *broadcaster) checkNewChannels(events []Event, limits *broadcastLimits) error {
	maxChannels := limits.maxChannels
	if maxChannels <= 0 || limits.events == 0 {
		return nil
	}
	b.mu.RLock()
	defer b.mu.RUnlock()
	room := maxChannels - len(b.channels)
	var fresh map[string]bool
	for i := range events {
		name := events[i].channelName()
		if events[i].Client != "" || b.channels[name] != nil || fresh[name] {
			continue
		}
		if fresh == nil {
			fresh = make(map[string]bool)
		}
		fresh[name] = true
		if len(fresh) > room {
			return fmt.Errorf("%w: %d channels exist, the sse app's max_channels", errTooManyChannels, len(b.channels))
		}
	}
	return nil
}

// errUnknownClient is returned for an event addressed to a client that is
// not connected.
var errUnknownClient = errors.New("unknown client")

// client returns the connected client with the given id; with channel set,
// the client must be on that channel.
func (b *broadcaster) client(id, channel string) (*subscriber, error) {
	b.clientsMu.RLock()
	s := b.clients[id]
	b.clientsMu.RUnlock()
	// A dropped client is on its way out: gone, as far as anyone asks.
	if s == nil || s.dropReason() != notDropped {
		return nil, fmt.Errorf("%w %q: no such client is connected", errUnknownClient, id)
	}
	if channel != "" && !s.onChannel(channel) {
		return nil, fmt.Errorf("%w %q on channel %q: the client is on other channels", errUnknownClient, id, channel)
	}
	return s, nil
}

// holds reports whether the client with the given id is connected to
// this node, on whichever channels.
func (b *broadcaster) holds(id string) bool {
	_, err := b.client(id, "")
	return err == nil
}

// sendTo numbers the event and queues it for one subscriber, in order with
// its channels' events; it is not kept for replay. Its result counts one
// client if the event was queued, none if the client had left meanwhile.
// The caller holds orderMu.
func (b *broadcaster) sendTo(s *subscriber, ev Envelope) Result {
	b.published.Add(1)
	frame := ev.Frame
	switch {
	case ev.ID != "":
	case b.durable > 0:
		// The transport's history numbers events, and this one is not in
		// it: it goes without an id, so that ids stay strictly
		// increasing on the client's stream and its Last-Event-ID stays
		// at its channels' last event, where a resume goes on.
		frame = frame[idDigitsAt+seqDigits+1:]
	default:
		appendSeq(frame[idDigitsAt:idDigitsAt], b.ownSeq(time.Now()))
		ev.ID = string(frame[idDigitsAt : idDigitsAt+seqDigits])
	}
	if ev.Unnamed && s.nameByChannel {
		frame = withEventName(frame, appendField(nil, "event", ev.Channel))
	}
	result := Result{ID: ev.ID}
	switch s.enqueue(frame) {
	case toSchedule:
		b.writers.scheduleOne(s)
	case overflowed:
		b.disconnects[dropSlow].Add(1)
		return result
	case alreadyGone:
		return result
	}
	b.deliveries.Add(1)
	result.Clients = 1
	return result
}

// kick disconnects the client with the given id.
func (b *broadcaster) kick(id string) (*subscriber, error) {
	s, err := b.client(id, "")
	if err != nil {
		return nil, err
	}
	// Of concurrent kicks, or a kick and the client's own leaving, only
	// the one that drops it has found it.
	if !b.drop(s, dropKicked) {
		return nil, fmt.Errorf("%w %q: no such client is connected", errUnknownClient, id)
	}
	return s, nil
}

// ClientInfo describes one connected client, as GET /sse/clients lists it.
type ClientInfo struct {
	// ID names the client in the admin API and in its greeting.
	ID string `json:"id"`
	// Channels are the channels the client receives.
	Channels []string `json:"channels"`
	// RemoteAddr is the client's address, as the server saw it.
	RemoteAddr string `json:"remote_addr"`
	// ConnectedSince is when the stream opened.
	ConnectedSince time.Time `json:"connected_since"`
	// Queued is the number of events waiting to be written to it.
	Queued int `json:"queued"`
	// Sent is the number of events written to it or on their way.
	Sent int `json:"sent"`
	// Node is the name of the node the client is connected to, in a
	// cluster.
	Node string `json:"node,omitempty"`
}

// clientList returns the connected clients, of one channel if channel is
// set, oldest first.
func (b *broadcaster) clientList(channel string) []ClientInfo {
	b.clientsMu.RLock()
	subs := make([]*subscriber, 0, len(b.clients))
	for _, s := range b.clients {
		if channel == "" || s.onChannel(channel) {
			subs = append(subs, s)
		}
	}
	b.clientsMu.RUnlock()
	list := make([]ClientInfo, 0, len(subs))
	for _, s := range subs {
		s.mu.Lock()
		if s.dropped == notDropped {
			list = append(list, ClientInfo{ID: s.id, Channels: s.channels, RemoteAddr: s.remoteAddr,
				ConnectedSince: s.since, Queued: len(s.queue), Sent: s.sent})
		}
		s.mu.Unlock()
	}
	sortClients(list)
	return list
}

// sortClients orders a list of clients oldest first.
func sortClients(list []ClientInfo) {
	slices.SortFunc(list, func(a, b ClientInfo) int {
		if c := a.ConnectedSince.Compare(b.ConnectedSince); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
}

// nextSeq hands out the next sequence number.
func (b *broadcaster) nextSeq(now time.Time) uint64 {
	for {
		last := b.lastSeq.Load()
		seq := nextSeq(last, now)
		if b.lastSeq.CompareAndSwap(last, seq) {
			return seq
		}
	}
}

// drop ends s's subscription for reason, counting it once. A stream that
// a shutdown ends is counted when it ends, by whoever writes it, unless its
// client turns out to have left first.
func (b *broadcaster) drop(s *subscriber, reason dropReason) bool {
	dropped := s.drop(reason)
	if dropped && reason != dropClientLeft && reason != dropShutdown {
		b.disconnects[reason].Add(1)
	}
	return dropped
}

// runJanitor releases expired replay windows and idle channels. Replay
// honours the TTL by itself; the janitor only gives the memory back.
func (b *broadcaster) runJanitor() {
	defer close(b.janitorDone)
	for {
		interval := min(max(b.limits.Load().ttl/2, 50*time.Millisecond), 30*time.Second)
		timer := time.NewTimer(interval)
		select {
		case <-b.stopJanitor:
			timer.Stop()
			return
		case <-timer.C:
		}
		b.sweep(time.Now())
	}
}

// sweep trims every window to the limits and removes idle channels.
func (b *broadcaster) sweep(now time.Time) {
	limits := b.limits.Load()
	b.mu.RLock()
	channels := make([]*channel, 0, len(b.channels))
	for _, ch := range b.channels {
		channels = append(channels, ch)
	}
	b.mu.RUnlock()
	for _, ch := range channels {
		ch.mu.Lock()
		if limits.events == 0 {
			for ch.window.len() > 0 {
				b.windowBytes.Add(-int64(ch.window.dropOldest()))
			}
		} else {
			b.windowBytes.Add(-int64(ch.window.trim(*limits, now)))
			// A lowered total is met at once, oldest events of each
			// channel in turn first.
			for b.windowBytes.Load() > limits.totalBytes && ch.window.len() > 0 {
				b.windowBytes.Add(-int64(ch.window.dropOldest()))
			}
		}
		idle := len(ch.subscribers) == 0 && ch.window.len() == 0
		ch.mu.Unlock()
		if idle {
			b.removeIfIdle(ch)
		}
	}
}

// Stats is a snapshot of the broadcaster's figures, as GET /sse/stats
// reports them. Counters run from the process's start; reloads keep them.
type Stats struct {
	// Clients is the number of connected clients over all channels.
	Clients int `json:"clients"`
	// Channels maps each channel with clients or events to replay to its
	// figures.
	Channels map[string]ChannelStats `json:"channels"`
	// EventsPublished counts published events.
	EventsPublished uint64 `json:"events_published"`
	// Deliveries counts events queued for a client, one per client reached.
	Deliveries uint64 `json:"deliveries"`
	// Replayed counts events replayed to clients that resumed.
	Replayed uint64 `json:"replayed"`
	// ReplayBytes is the memory the replay windows hold, in bytes.
	ReplayBytes int64 `json:"replay_bytes"`
	// Rejected counts stream requests refused over a limit: a max_clients,
	// the handler's or the app's, or the app's max_channels. Refused
	// publishes are not counted.
	Rejected uint64 `json:"rejected"`
	// Disconnects counts streams the server ended, by reason.
	Disconnects DisconnectStats `json:"disconnects"`
	// Node is this node's name, and Cluster the figures of every node, in
	// a cluster (GET /sse/stats).
	Node    string        `json:"node,omitempty"`
	Cluster *ClusterStats `json:"cluster,omitempty"`
}

// ChannelStats holds one channel's figures.
type ChannelStats struct {
	// Clients is the number of connected clients.
	Clients int `json:"clients"`
	// Replayable is the number of events in the replay window.
	Replayable int `json:"replayable"`
}

// DisconnectStats counts streams the server ended, by reason.
type DisconnectStats struct {
	// Slow counts clients whose queue overflowed.
	Slow uint64 `json:"slow"`
	// WriteTimeout counts clients that did not take a write in time.
	WriteTimeout uint64 `json:"write_timeout"`
	// Shutdown counts streams ended by a config reload or Caddy stopping.
	Shutdown uint64 `json:"shutdown"`
	// Kicked counts clients disconnected through the admin API.
	Kicked uint64 `json:"kicked"`
}

func (b *broadcaster) stats() Stats {
	st := Stats{
		Channels:        make(map[string]ChannelStats),
		EventsPublished: b.published.Load(),
		Deliveries:      b.deliveries.Load(),
		Replayed:        b.replayed.Load(),
		ReplayBytes:     b.windowBytes.Load(),
		Rejected:        b.rejected.Load(),
		Disconnects: DisconnectStats{
			Slow:         b.disconnects[dropSlow].Load(),
			WriteTimeout: b.disconnects[dropWriteTimeout].Load(),
			Shutdown:     b.disconnects[dropShutdown].Load(),
			Kicked:       b.disconnects[dropKicked].Load(),
		},
	}
	limits, now := b.limits.Load(), time.Now()
	b.mu.RLock()
	defer b.mu.RUnlock()
	for name, ch := range b.channels {
		ch.mu.Lock()
		cs := ChannelStats{Clients: len(ch.subscribers)}
		if limits.events > 0 {
			kept, _ := ch.window.kept(*limits, now)
			cs.Replayable = len(kept)
		}
		ch.mu.Unlock()
		st.Channels[name] = cs
	}
	// A stream of several channels counts in each one's figures, once here.
	b.clientsMu.RLock()
	st.Clients = len(b.clients)
	b.clientsMu.RUnlock()
	return st
}
