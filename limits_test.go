package ssebroadcast

// Tests of the sse app's limits on channel names, event sizes and the
// number of channels: each exceeded limit is a clear error and changes
// nothing.

import (
	"net/http"
	"strings"
	"testing"

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
	assert.Len(t, ts.stats().Channels, 2)
}
