package ssebroadcast

// Tests of the transport seam: the memory transport, named or by default,
// carries every event to the local fan-out in order, events for one client
// keep their place among them, and a transport that cannot carry events
// makes a publish fail with 503, sending nothing.

import (
	"context"
	"errors"
	"net/http"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func init() {
	caddy.RegisterModule(unreachableTransport{})
}

// unreachableTransport is a transport whose far end is down: it carries
// nothing, and says so.
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
