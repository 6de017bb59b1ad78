package ssebroadcast

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const newsCaddyfile = `{
	{GLOBAL}
}
:{HTTP} {
	route /events {
		sse_broadcast {
			channel news
			retry 2s
		}
	}
	route /topic {
		sse_broadcast {
			channel topic-{query.topic}
		}
	}
	route /any {
		sse_broadcast {query.topic}
	}
	route /default {
		sse_broadcast
	}
}`

func TestStreamReceivesAdminBroadcastsByteExact(t *testing.T) {
	ts := startCaddy(t, newsCaddyfile)
	s := openStream(t, nil, ts.url("/events"))

	assert.Equal(t, "text/event-stream", s.resp.Header.Get("Content-Type"))
	assert.Equal(t, "no-cache", s.resp.Header.Get("Cache-Control"))
	assert.Equal(t, "no", s.resp.Header.Get("X-Accel-Buffering"))

	res := ts.mustBroadcast(`{"event":"tick","data":"{\"i\":1}","id":"1","retry":3000,"channel":"news"}`)
	assert.Equal(t, Result{Channel: "news", ID: "1", Clients: 1}, res)
	ev := s.next()
	assert.Equal(t, "tick", ev.Type)
	assert.Equal(t, `{"i":1}`, ev.Data)
	assert.Equal(t, "1", ev.LastEventID)

	multi := ts.mustBroadcast(`{"channel":"news","event":"multi","data":"one\ntwo\r\nthree\rfour"}`)
	ev = s.next()
	assert.Equal(t, "multi", ev.Type)
	assert.Equal(t, "one\ntwo\nthree\nfour", ev.Data)
	assert.Equal(t, multi.ID, ev.LastEventID, "an event without id gets one assigned")

	ts.mustBroadcast(`{"channel":"news","id":"ü-2","data":"héllo 世界 🎉"}`)
	ev = s.next()
	assert.Equal(t, "", ev.Type)
	assert.Equal(t, "héllo 世界 🎉", ev.Data)
	assert.Equal(t, "ü-2", ev.LastEventID)

	empty := ts.mustBroadcast(`{"channel":"news","event":"empty","data":""}`)
	ev = s.next()
	assert.Equal(t, "empty", ev.Type)
	assert.Equal(t, "", ev.Data)

	nested := ts.mustBroadcast(`{"channel":"news","data":{"nested": [1, 2, {"a": "b"}]}}`)
	ev = s.next()
	assert.Equal(t, `{"nested":[1,2,{"a":"b"}]}`, ev.Data, "non-string data is sent as compact JSON")

	assert.Equal(t, "retry: 2000\n\n"+
		"id: 1\nevent: tick\nretry: 3000\ndata: {\"i\":1}\n\n"+
		"id: "+multi.ID+"\nevent: multi\ndata: one\ndata: two\ndata: three\ndata: four\n\n"+
		"id: ü-2\ndata: héllo 世界 🎉\n\n"+
		"id: "+empty.ID+"\nevent: empty\ndata: \n\n"+
		"id: "+nested.ID+"\ndata: {\"nested\":[1,2,{\"a\":\"b\"}]}\n\n",
		s.raw.String())
}

func TestChannelsAreIsolated(t *testing.T) {
	ts := startCaddy(t, newsCaddyfile)
	news := openStream(t, nil, ts.url("/events"))
	sports := openStream(t, nil, ts.url("/any?topic=sports"))

	assert.Equal(t, 0, ts.mustBroadcast(`{"channel":"weather","data":"nobody"}`).Clients)
	assert.Equal(t, 1, ts.mustBroadcast(`{"channel":"sports","data":"goal"}`).Clients)
	assert.Equal(t, 1, ts.mustBroadcast(`{"channel":"news","data":"headline"}`).Clients)

	assert.Equal(t, "headline", news.next().Data, "news must skip the sports event")
	assert.Equal(t, "goal", sports.next().Data)

	ts.mustBroadcast(`{"channel":"sports","data":"second goal"}`)
	assert.Equal(t, "second goal", sports.next().Data, "sports must skip the news event")
}

func TestPlaceholderChannelsRoutePerRequest(t *testing.T) {
	ts := startCaddy(t, newsCaddyfile)
	red := openStream(t, nil, ts.url("/topic?topic=red"))
	blue := openStream(t, nil, ts.url("/topic?topic=blue"))
	blue2 := openStream(t, nil, ts.url("/topic?topic=blue"))

	assert.Equal(t, 2, ts.mustBroadcast(`{"channel":"topic-blue","data":"b"}`).Clients)
	assert.Equal(t, 1, ts.mustBroadcast(`{"channel":"topic-red","data":"r"}`).Clients)
	assert.Equal(t, "r", red.next().Data)
	assert.Equal(t, "b", blue.next().Data)
	assert.Equal(t, "b", blue2.next().Data)

	st := ts.stats()
	assert.Equal(t, map[string]ChannelStats{"topic-red": {Clients: 1, Replayable: 1}, "topic-blue": {Clients: 2, Replayable: 1}}, st.Channels)
}

func TestDefaultChannelIsUsedWhenNoneIsNamed(t *testing.T) {
	ts := startCaddy(t, newsCaddyfile)
	s := openStream(t, nil, ts.url("/default"))
	res := ts.mustBroadcast(`{"data":"to everyone on default"}`)
	assert.Equal(t, "default", res.Channel)
	assert.Equal(t, 1, res.Clients)
	ev := s.next()
	assert.Equal(t, "to everyone on default", ev.Data)
	assert.Equal(t, res.ID, ev.LastEventID)
}

func TestStreamOpensWithACommentWhenNoRetryIsSet(t *testing.T) {
	ts := startCaddy(t, newsCaddyfile)
	s := openStream(t, nil, ts.url("/default"))
	assert.Equal(t, ": open\n\n", s.raw.String(), "no retry field unless configured")
}

func TestKeepAliveCommentsArriveAtTheInterval(t *testing.T) {
	ts := startCaddy(t, `{
	{GLOBAL}
}
:{HTTP} {
	route /fast {
		sse_broadcast {
			keepalive 100ms
		}
	}
	route /quiet {
		sse_broadcast {
			keepalive off
		}
	}
}`)
	quiet := openStream(t, nil, ts.url("/quiet"))
	start := time.Now() // before the stream opens, so before its timer starts
	fast := openStream(t, nil, ts.url("/fast"))

	fast.raw.awaitCount(t, ": keep-alive\n\n", 3)
	elapsed := time.Since(start)
	assert.GreaterOrEqual(t, elapsed, 300*time.Millisecond, "three keep-alives came faster than the interval")
	assert.Equal(t, ": open\n\n", quiet.raw.String(), "keepalive off must send no comments")

	// A keep-alive follows an event after an idle interval, and never
	// splits an event.
	ts.mustBroadcast(`{"data":"x"}`)
	assert.Equal(t, "x", fast.next().Data)
	assert.Equal(t, "x", quiet.next().Data)
	fast.raw.awaitContains(t, "data: x\n\n: keep-alive\n\n")
}

func TestStreamFlushesThroughEncode(t *testing.T) {
	for _, minLength := range []int{0, 1} {
		t.Run(fmt.Sprintf("minimum_length %d", minLength), func(t *testing.T) {
			encode := "encode gzip"
			if minLength > 0 {
				encode = fmt.Sprintf("encode gzip {\n\t\tminimum_length %d\n\t}", minLength)
			}
			ts := startCaddy(t, `{
	{GLOBAL}
}
:{HTTP} {
	`+encode+`
	sse_broadcast
}`)
			// Go's transport asks for gzip and decompresses transparently.
			s := openStream(t, nil, ts.url("/"))
			if minLength > 0 {
				assert.True(t, s.resp.Uncompressed, "the stream should have been gzip-encoded")
			}
			for i := range 3 {
				ts.mustBroadcast(fmt.Sprintf(`{"id":"%d","data":"through encode"}`, i))
				ev := s.next()
				assert.Equal(t, "through encode", ev.Data)
				assert.Equal(t, fmt.Sprint(i), ev.LastEventID)
			}
		})
	}
}

func TestStreamAnswersGetOnly(t *testing.T) {
	ts := startCaddy(t, newsCaddyfile)
	for _, method := range []string{http.MethodPost, http.MethodPut, http.MethodDelete, http.MethodHead} {
		req, err := http.NewRequest(method, ts.url("/events"), nil)
		require.NoError(t, err)
		resp, err := plainClient.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		assert.Equal(t, http.StatusMethodNotAllowed, resp.StatusCode, method)
		assert.Equal(t, "GET", resp.Header.Get("Allow"), method)
	}
	assert.Equal(t, 0, ts.stats().Clients)
}

// A channel whose placeholders are unknown or empty is refused: leaving
// them out would put every such client on one shared channel.
func TestStreamWithAnInvalidChannelGets400(t *testing.T) {
	ts := startCaddy(t, newsCaddyfile)
	for _, path := range []string{"/any", "/any?topic=", "/topic", "/any?topic=a%0Ab", "/any?topic=a%0Db"} {
		resp, err := plainClient.Get(ts.url(path))
		require.NoError(t, err)
		resp.Body.Close()
		assert.Equal(t, http.StatusBadRequest, resp.StatusCode, path)
	}
	assert.Equal(t, 0, ts.stats().Clients)
}

func TestLeavingClientIsUnsubscribed(t *testing.T) {
	ts := startCaddy(t, newsCaddyfile)
	stay := openStream(t, nil, ts.url("/events"))
	leave := openStream(t, nil, ts.url("/events"))
	require.Equal(t, 2, ts.stats().Channels["news"].Clients)

	leave.close()
	require.Eventually(t, func() bool { return ts.stats().Channels["news"].Clients == 1 },
		awaitTimeout, 5*time.Millisecond, "the server must notice the client left")
	assert.Equal(t, 1, ts.mustBroadcast(`{"channel":"news","data":"after"}`).Clients)
	assert.Equal(t, "after", stay.next().Data)
}

func TestStopEndsOpenStreams(t *testing.T) {
	ts := startCaddy(t, newsCaddyfile)
	streams := make([]*stream, 20)
	for i := range streams {
		streams[i] = openStream(t, nil, ts.url("/events"))
	}
	ts.mustBroadcast(`{"channel":"news","data":"before stop"}`)

	stopped := make(chan error, 1)
	go func() { stopped <- caddy.Stop() }()
	select {
	case err := <-stopped:
		require.NoError(t, err)
	case <-time.After(awaitTimeout):
		require.FailNow(t, "stopping Caddy waited on open streams")
	}
	for _, s := range streams {
		assert.Equal(t, "before stop", s.next().Data, "events published before the stop arrive")
		s.awaitEnd()
	}
}

func TestReloadEndsOldStreamsAndKeepsTheBroadcaster(t *testing.T) {
	ts := startCaddy(t, newsCaddyfile)
	old := openStream(t, nil, ts.url("/events"))
	ts.mustBroadcast(`{"channel":"news","data":"first"}`)
	assert.Equal(t, "first", old.next().Data)

	ts.load(strings.Replace(newsCaddyfile, "retry 2s", "retry 5s", 1))
	old.awaitEnd()

	fresh := openStream(t, nil, ts.url("/events"))
	assert.Equal(t, "retry: 5000\n\n", fresh.raw.String(), "the new config serves new streams")
	ts.mustBroadcast(`{"channel":"news","data":"second"}`)
	assert.Equal(t, "second", fresh.next().Data)

	st := ts.stats()
	assert.Equal(t, uint64(2), st.EventsPublished, "counters live across the reload")
	assert.Equal(t, 1, st.Clients)
}

// When Caddy exits, the http app waits for its servers' open requests, and
// it may be stopped before the sse app: the streams must end as soon as
// their server begins to shut down, not only when the sse app stops.
func TestStreamsEndWhenTheirServerBeginsToShutDown(t *testing.T) {
	ts := startCaddy(t, newsCaddyfile)
	s := openStream(t, nil, ts.url("/events"))

	httpApp, err := caddy.ActiveContext().AppIfConfigured("http")
	require.NoError(t, err)
	require.NoError(t, httpApp.(caddy.App).Stop())
	s.awaitEnd()
}

func TestStreamFromAJSONConfig(t *testing.T) {
	ts := newTestServer(t)
	cfg := fmt.Sprintf(`{
		"admin": {"listen": %q, "config": {"persist": false}},
		"apps": {
			"sse": {"max_body": 2048},
			"http": {"servers": {"srv0": {"listen": [%q], "routes": [{
				"match": [{"path": ["/events"]}],
				"handle": [{"handler": "sse_broadcast", "channels": ["json-{http.request.uri.query.room}"], "keepalive": "50ms", "retry": "1500ms"}]
			}]}}}
		}
	}`, ts.admin, ts.http)
	require.NoError(t, caddy.Load([]byte(cfg), true))
	t.Cleanup(func() {
		require.NoError(t, caddy.Stop())
		checkNoLeaks(t)
	})

	s := openStream(t, nil, ts.url("/events?room=a"))
	assert.True(t, strings.HasPrefix(s.raw.String(), "retry: 1500\n\n"), "stream opened with %q", s.raw.String())
	s.raw.awaitContains(t, ": keep-alive\n\n")
	ts.mustBroadcast(`{"channel":"json-a","data":"from JSON config"}`)
	assert.Equal(t, "from JSON config", s.next().Data)

	resp := ts.broadcast(fmt.Sprintf(`{"channel":"json-a","data":"%s"}`, strings.Repeat("x", 2048)))
	assert.Equal(t, http.StatusRequestEntityTooLarge, resp.status)
}

// With a flush interval, events that come faster than it share writes; none
// is lost or reordered, and an event after a quiet spell goes out at once.
func TestFlushIntervalCoalescesWithoutLosingOrReordering(t *testing.T) {
	ts := startCaddy(t, `{
	{GLOBAL}
}
:{HTTP} {
	sse_broadcast {
		channel burst
		keepalive off
		flush_interval 50ms
	}
}`)
	s := openStream(t, nil, ts.url("/"))
	app := sseApp(t)
	for i := 1; i <= 500; i++ {
		_, err := app.Broadcast(context.Background(), Event{Channel: "burst", Data: fmt.Sprint(i)})
		require.NoError(t, err)
	}
	assert.Equal(t, numbers(1, 500), s.readData(500))
}

// The site's own header directives win over the stream's defaults, except
// that the response stays an event stream.
func TestTheSitesHeadersWinOverTheStreamsDefaults(t *testing.T) {
	ts := startCaddy(t, `{
	{GLOBAL}
}
:{HTTP} {
	route /cdn {
		header Cache-Control "no-cache, no-transform"
		header Content-Type "text/event-stream; charset=utf-8"
		header X-Accel-Buffering yes
		sse_broadcast
	}
	route /wrong-type {
		header Content-Type text/html
		sse_broadcast
	}
}`)
	s := openStream(t, nil, ts.url("/cdn"))
	assert.Equal(t, "no-cache, no-transform", s.resp.Header.Get("Cache-Control"))
	assert.Equal(t, "text/event-stream; charset=utf-8", s.resp.Header.Get("Content-Type"))
	assert.Equal(t, "yes", s.resp.Header.Get("X-Accel-Buffering"))

	wrong := openStream(t, nil, ts.url("/wrong-type"))
	assert.Equal(t, "text/event-stream", wrong.resp.Header.Get("Content-Type"), "clients refuse any other type")
	assert.Equal(t, "no-cache", wrong.resp.Header.Get("Cache-Control"))

	ts.mustBroadcast(`{"data":"both"}`)
	assert.Equal(t, "both", s.next().Data)
	assert.Equal(t, "both", wrong.next().Data)
}

// A reload counts, as ended by the shutdown, the streams it ended and no
// others: streams whose clients left as it began end on their own. The
// leaving and the reload race on purpose; before each stream was marked as
// leaving, some that had left were counted too.
func TestAReloadCountsOnlyTheStreamsItEnded(t *testing.T) {
	caddyfile := `{
	{GLOBAL}
	servers {
		protocols h1 h2c
	}
}
:{HTTP} {
	sse_broadcast {
		keepalive off
	}
}`
	ts := startCaddy(t, caddyfile)
	const leaving, staying = 200, 50
	leavers := dialRawH2(t, ts.http, 1<<20)
	stayers := dialRawH2(t, ts.http, 1<<20)
	var stayingStreams []*rawH2Stream
	for i := range leaving {
		leavers.get(uint32(2*i+1), "/", true)
	}
	for i := range staying {
		stayingStreams = append(stayingStreams, stayers.get(uint32(2*i+1), "/", true))
	}
	require.Eventually(t, func() bool { return ts.stats().Clients == leaving+staying }, awaitTimeout, 5*time.Millisecond)

	// One connection's streams all leave at once; the reload begins as
	// the server notices.
	require.NoError(t, leavers.conn.Close())
	require.Eventually(t, func() bool { return ts.stats().Clients < leaving+staying }, awaitTimeout, time.Millisecond)
	ts.load(caddyfile)

	for _, s := range stayingStreams {
		select {
		case <-s.ended:
		case <-time.After(awaitTimeout):
			require.FailNow(t, "a staying stream was not ended by the reload")
		}
	}
	require.Eventually(t, func() bool { return ts.stats().Clients == 0 }, awaitTimeout, 5*time.Millisecond)
	assert.Equal(t, uint64(staying), ts.stats().Disconnects.Shutdown, "the streams the reload ended, once each")
}
