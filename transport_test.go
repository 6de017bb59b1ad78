package ssebroadcast

// Tests of the transport seam: the memory transport, named or by default,
// carries every event to the local fan-out in order, events for one client
// keep their place among them, and a transport that cannot carry events
// makes a publish fail with 503, sending nothing.

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"sync"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func init() {
	caddy.RegisterModule(unreachableTransport{})
	caddy.RegisterModule(new(durableTransport))
}

// unreachableTransport is a transport whose far end is down: it carries
// nothing, and says so. It is a cluster of this node, "here", and one other
// node, "there", that it cannot reach either.
type unreachableTransport struct{}

func (unreachableTransport) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "sse.transports.test_unreachable",
		New: func() caddy.Module { return new(unreachableTransport) },
	}
}

func (unreachableTransport) Open(Sink) error { return nil }
func (unreachableTransport) Close() error    { return nil }
func (unreachableTransport) Publish(context.Context, []Envelope, []Result) error {
	return &TransportError{Err: errors.New("the far end is down")}
}
func (unreachableTransport) NodeName() string { return "here" }
func (unreachableTransport) AskAll(context.Context, []byte, func(string, []byte) bool) ([]string, error) {
	return []string{"there"}, &TransportError{Err: errors.New("the far end is down")}
}

// durableTransport numbers events as a durable history would, from 1, and
// delivers each one twice, as two consumers of that history would for a
// moment of a reload.
type durableTransport struct {
	sink    Sink
	release func()
	mu      sync.Mutex
	seq     uint64
}

func (*durableTransport) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "sse.transports.test_durable",
		New: func() caddy.Module { return new(durableTransport) },
	}
}

func (t *durableTransport) Open(sink Sink) error {
	t.sink, t.release = sink, sink.Durable()
	return nil
}

func (t *durableTransport) Close() error {
	t.release()
	return nil
}

func (t *durableTransport) Publish(_ context.Context, events []Envelope, results []Result) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	for i := range events {
		t.seq++
		if events[i].Channel == "gaps" {
			// As if the history had let the 10 events before go.
			t.seq += 10
		}
		// A copy as stored, before the first delivery writes its id in.
		again := events[i]
		again.Frame = slices.Clone(events[i].Frame)
		results[i] = t.sink.Deliver(t.seq, events[i])
		t.sink.Deliver(t.seq, again)
	}
	return nil
}

func TestADurableTransportsNumbersAreTheIdsAndEachEventIsDeliveredOnce(t *testing.T) {
	ts := startCaddy(t, `{
	{GLOBAL}
	sse {
		transport test_durable
	}
}
:{HTTP} {
	sse_broadcast {
		channel news
		greeting
	}
}`)
	live := openStream(t, nil, ts.url("/"))
	id := greetingOf(t, live)
	var ids []string
	for _, data := range []string{"1", "2", "3"} {
		ids = append(ids, ts.mustBroadcast(`{"channel":"news","data":"`+data+`"}`).ID)
	}
	assert.Equal(t, []string{"0000000000000001", "0000000000000002", "0000000000000003"}, ids,
		"the transport's numbers are the ids")
	// An event for one client, not in the history, goes without an id:
	// the client's last id stays that of the last event, where a resume
	// goes on, and ids stay strictly increasing.
	assert.Empty(t, ts.mustBroadcast(`{"client":"`+id+`","data":"just you"}`).ID)
	ts.mustBroadcast(`{"channel":"news","data":"4"}`)
	assert.Equal(t, []string{"1", "2", "3", "just you", "4"}, live.readData(5), "each event once, in order")
	assert.Contains(t, live.raw.String(), "id: 0000000000000003\ndata: 3\n\ndata: just you\n\nid: 0000000000000004\n")

	// Ids far below this process's start are not from before a restart:
	// the history that numbered them outlives the process.
	resumed := openStreamWithHeader(t, ts.url("/"), http.Header{"Last-Event-Id": {ids[0]}})
	greetingOf(t, resumed)
	next := resumed.next()
	assert.Equal(t, "2", next.Data, "no reset first; the stream had read %q", resumed.raw.String())
	assert.Equal(t, []string{"3", "4"}, resumed.readData(2))

	// Numbers that the history skips were let go before this node had
	// them, of channels unknown: a resume from before them is told so.
	assert.Equal(t, "0000000000000015", ts.mustBroadcast(`{"channel":"gaps","data":"after a hole"}`).ID)
	ts.mustBroadcast(`{"channel":"news","data":"5"}`)
	behind := openStreamWithHeader(t, ts.url("/"), http.Header{"Last-Event-Id": {ids[2]}})
	greetingOf(t, behind)
	assert.Equal(t, resetNotice{Reason: "expired", Channels: []string{"news"}}, behind.nextReset())
	assert.Equal(t, []string{"4", "5"}, behind.readData(2), "and sent what is kept")
}

func TestTheMemoryTransportCarriesEveryEventInOrderNamedOrByDefault(t *testing.T) {
	for _, option := range []string{"", "transport memory"} {
		t.Run("option "+option, func(t *testing.T) {
			ts := startCaddy(t, `{
	{GLOBAL}
	sse {
		`+option+`
	}
}
:{HTTP} {
	sse_broadcast {
		channel a b
		greeting
	}
}`)
			s := openStream(t, nil, ts.url("/"))
			id := greetingOf(t, s)
			// A batch mixing events for every client with one for this
			// client alone: the transport carries runs of the first kind,
			// the other keeps its place between them.
			resp := ts.broadcast(`[{"channel":"a","data":"1"},{"channel":"b","data":"2"},` +
				`{"client":"` + id + `","data":"3"},{"channel":"a","data":"4"}]`)
			require.Equal(t, http.StatusOK, resp.status, "%s", resp.body)
			got := s.readData(4)
			assert.Equal(t, []string{"1", "2", "3", "4"}, got)
			raw := s.raw.String()
			assert.Regexp(t, `(?s)id: (\d{16})\ndata: 1\n.*id: (\d{16})\ndata: 2\n.*id: (\d{16})\ndata: 3\n.*id: (\d{16})\ndata: 4\n`, raw)
		})
	}
}

func TestATransportThatCannotCarryEventsMakesPublishesFailWith503(t *testing.T) {
	ts := startCaddy(t, `{
	{GLOBAL}
	sse {
		transport test_unreachable
	}
}
:{HTTP} {
	sse_broadcast
}`)
	s := openStream(t, nil, ts.url("/"))
	resp := ts.broadcast(`{"data":"lost?"}`)
	assert.Equal(t, http.StatusServiceUnavailable, resp.status)
	assert.Equal(t, "1", resp.header.Get("Retry-After"))
	assert.Contains(t, resp.errorMessage(t), "transport unavailable: the far end is down")
	_, err := sseApp(t).Broadcast(context.Background(), Event{Data: "in-process"})
	var transportErr *TransportError
	require.ErrorAs(t, err, &transportErr, "other modules can tell it apart")
	assert.Zero(t, ts.stats().EventsPublished)
	assert.NotContains(t, s.raw.String(), "lost?")
}
