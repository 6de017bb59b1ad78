package ssebroadcast

// Tests of the sse app's limits on channel names, event sizes and the
// number of channels: each exceeded limit is a clear error and changes
// nothing.

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const limitsCaddyfile = `{
	{GLOBAL}
	sse {
		max_channel_length 10
		max_event_size 100
		max_channels 2
	}
}
:{HTTP} {
	sse_broadcast {query.channel} {
		keepalive off
	}
}`

func TestAChannelNameOverMaxChannelLengthIsRefused(t *testing.T) {
	ts := startCaddy(t, limitsCaddyfile)
	s := openStream(t, nil, ts.url("/?channel=tenletters"))

	res := ts.broadcast(`{"channel":"elevenchars","data":"x"}`)
	require.Equal(t, http.StatusBadRequest, res.status)
	assert.Contains(t, res.errorMessage(t), `field "channel": is 11 bytes long, longer than the sse app's max_channel_length of 10`)

	long := dialStream(t, nil, ts.url("/?channel=elevenchars"))
	assert.Equal(t, http.StatusBadRequest, long.resp.StatusCode)

	ts.mustBroadcast(`{"channel":"tenletters","data":"sentinel"}`)
	assert.Equal(t, "sentinel", s.next().Data)
	assert.Len(t, ts.stats().Channels, 1)
}

func TestAnEventOverMaxEventSizeIsRefusedWith413(t *testing.T) {
	ts := startCaddy(t, limitsCaddyfile)
	s := openStream(t, nil, ts.url("/?channel=c"))

	// id, name and data: 100 bytes pass, 101 do not.
	fits := `{"channel":"c","id":"1234","event":"tick","data":"` + strings.Repeat("x", 92) + `"}`
	over := `{"channel":"c","id":"1234","event":"tick","data":"` + strings.Repeat("x", 93) + `"}`
	res := ts.broadcast(over)
	require.Equal(t, http.StatusRequestEntityTooLarge, res.status)
	assert.Contains(t, res.errorMessage(t), "101 bytes, more than the sse app's max_event_size of 100")
	batch := ts.broadcast(`[` + fits + `,` + over + `]`)
	require.Equal(t, http.StatusRequestEntityTooLarge, batch.status)
	assert.Contains(t, batch.errorMessage(t), "event 1:")

	ts.mustBroadcast(fits)
	assert.Equal(t, strings.Repeat("x", 92), s.next().Data, "only the event that fits arrives")
}

func TestChannelsOverMaxChannelsAreRefusedWith503(t *testing.T) {
	ts := startCaddy(t, limitsCaddyfile)
	a := openStream(t, nil, ts.url("/?channel=a"))
	openStream(t, nil, ts.url("/?channel=b"))

	third := dialStream(t, nil, ts.url("/?channel=c"))
	require.Equal(t, http.StatusServiceUnavailable, third.resp.StatusCode)
	assert.NotEmpty(t, third.resp.Header.Get("Retry-After"))

	res := ts.broadcast(`{"channel":"c","data":"x"}`)
	require.Equal(t, http.StatusServiceUnavailable, res.status)
	assert.Contains(t, res.errorMessage(t), "too many channels: 2 channels exist, the sse app's max_channels")
	batch := ts.broadcast(`[{"channel":"a","data":"x"},{"channel":"d","data":"x"}]`)
	require.Equal(t, http.StatusServiceUnavailable, batch.status, "a batch that needs a new channel is refused whole")

	ts.mustBroadcast(`{"channel":"a","data":"sentinel"}`)
	assert.Equal(t, "sentinel", a.next().Data, "nothing of the refused batch arrived")
	st := ts.stats()
	assert.Len(t, st.Channels, 2)
	assert.Equal(t, uint64(1), st.Rejected, "the stream refused over max_channels, not the publishes")
}

// A channel exists while it has events to replay, whether or not anyone
// listens: each channel published to takes a place under max_channels until
// its last event is older than replay_ttl.
func TestAChannelWithOnlyEventsToReplayCountsAgainstMaxChannelsUntilTheyExpire(t *testing.T) {
	// The TTL leaves the test ample time to be refused before it expires,
	// even on a loaded machine.
	ts := startCaddy(t, `{
	{GLOBAL}
	sse {
		max_channels 2
		replay_ttl 2s
	}
}
:{HTTP} {
	sse_broadcast {query.channel} {
		keepalive off
	}
}`)
	ts.mustBroadcast(`{"channel":"a","data":"nobody listens"}`)
	ts.mustBroadcast(`{"channel":"b","data":"nobody listens"}`)
	refused := dialStream(t, nil, ts.url("/?channel=c"))
	require.Equal(t, http.StatusServiceUnavailable, refused.resp.StatusCode)
	assert.Equal(t, map[string]ChannelStats{"a": {Replayable: 1}, "b": {Replayable: 1}}, ts.stats().Channels)

	require.Eventually(t, func() bool { return len(ts.stats().Channels) == 0 }, awaitTimeout, 20*time.Millisecond,
		"the channels outlived their events")
	openStream(t, nil, ts.url("/?channel=c"))
}
