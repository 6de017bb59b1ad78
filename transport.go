package ssebroadcast

import (
	"context"
	"fmt"

	"github.com/caddyserver/caddy/v2"
)

func init() {
	caddy.RegisterModule(MemoryTransport{})
}

// Transport carries published events from the publishers of every node to
// the fan-out of every node, in one order: it stands between publishing
// (validating and encoding, on the node where an event is published) and
// the fan-out (numbering, keeping for replay, queueing for each client, on
// every node). Transports are Caddy modules in the sse.transports
// namespace; the sse app's transport option names one. MemoryTransport,
// the default, carries events within the process.
//
// A transport that carries events between nodes delivers each event once
// per process, in the same order on every node, whatever configs come and
// go: it keeps what receives events (a connection, a consumer) in a
// caddy.UsagePool, as the sse app keeps its broadcaster.
type Transport interface {
	// Open starts carrying events to sink, the fan-out of this node. The
	// sse app calls it once per config, after provisioning the
	// transport and before any Publish.
	Open(sink Sink) error

	// Publish carries events, in order, and returns once it has stored
	// them (a memory transport: delivered them), with what became of each
	// in results, which has a place for each: its ID and Clients, those
	// of this node's clients it was queued for (the publisher fills in
	// Channel). An error means that none of them, or none from the one
	// that failed on, was carried; a *TransportError says to try again
	// later.
	Publish(ctx context.Context, events []Envelope, results []Result) error

	// Close stops what Open started for this config.
	Close() error
}

// Sink is a node's fan-out, as transports deliver to it.
type Sink interface {
	// Deliver numbers ev with seq, or with the next number of the node's
	// own sequence when seq is 0, keeps it for replay, and queues it for
	// this node's clients of its channel. It returns the event's id and
	// how many clients it was queued for. Deliveries happen one at a
	// time, in the transport's order.
	Deliver(seq uint64, ev Envelope) Result

	// Durable hands the numbering of events to the transport until
	// release is called. Every event the transport delivers then comes
	// with its number (seq > 0) from a history that outlives this
	// process, such as a stream stored on other machines, which the
	// transport delivers from its oldest kept event on:
	//   - A resume from an id older than this process is served from the
	//     windows that history rebuilt, not reset as from before a
	//     restart.
	//   - A number that skips some says that the history let those go
	//     before this node had them (the oldest kept, at start; or what
	//     its limits took while the node was away): a resume from an id
	//     before them is reset as expired, on every channel, since which
	//     channels they were of is not known.
	//   - A number at or below the last one delivered is one this node
	//     has had (two consumers of one history, for a moment of a
	//     reload): it is not delivered again.
	//   - The node numbers nothing of its own: an event delivered with
	//     seq 0 takes the number of the last event delivered, which is
	//     where a resume from its id goes on, and an event for one
	//     client, which is not in the history, goes without an id
	//     unless its publisher gave it one.
	// The windows kept so far, numbered by the node, cannot be ordered
	// among the transport's numbers: they are let go. After release, the
	// node numbers events again, above every number before, and an id
	// from before is reset as from before a restart. Transports call it
	// once per process, before they deliver; calls nest.
	Durable() (release func())

	// Answer answers a question another node put to this one through a
	// Cluster, with the answer to carry back.
	Answer(question []byte) (answer []byte)
}

// Envelope is one published event as transports carry it: validated and
// encoded, once, by the node where it was published.
type Envelope struct {
	// Channel is the event's channel.
	Channel string `json:"channel"`
	// ID is the publisher's own id, or empty when the event's sequence
	// number names it: Frame then holds a placeholder for its digits.
	ID string `json:"id,omitempty"`
	// Unnamed is set when the publisher gave the event no name.
	Unnamed bool `json:"unnamed,omitempty"`
	// Frame is the event's wire form, as every client receives it.
	Frame []byte `json:"frame"`
}

// TransportError is a failure to carry events that may pass: the transport
// cannot reach what carries them. Publishers get 503 with Retry-After.
type TransportError struct {
	Err error
}

func (e *TransportError) Error() string { return fmt.Sprintf("transport unavailable: %v", e.Err) }
func (e *TransportError) Unwrap() error { return e.Err }

// MemoryTransport carries events within this process, from the publisher
// straight to the fan-out: one node, no copy, no wait. It is the default.
type MemoryTransport struct {
	sink Sink
}

// CaddyModule returns the Caddy module information.
func (MemoryTransport) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "sse.transports.memory",
		New: func() caddy.Module { return new(MemoryTransport) },
	}
}

// Open keeps the sink to deliver to.
func (t *MemoryTransport) Open(sink Sink) error {
	t.sink = sink
	return nil
}

// Publish delivers each event, in order, numbered with this node's own
// sequence.
func (t *MemoryTransport) Publish(_ context.Context, events []Envelope, results []Result) error {
	for i := range events {
		results[i] = t.sink.Deliver(0, events[i])
	}
	return nil
}

// Close does nothing: there is nothing to stop.
func (t *MemoryTransport) Close() error { return nil }

// Interface guards
var (
	_ Transport = (*MemoryTransport)(nil)
	_ Sink      = (*broadcaster)(nil)
)
