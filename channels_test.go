package ssebroadcast

// Tests of streams with several channels: how a stream's channels are
// chosen and bounded, one id order over all of them, resuming them all
// with one Last-Event-ID, resets where history cannot fill the gap, and
// backlogs.

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const channelsCaddyfile = `{
	{GLOBAL}
	sse {
		replay 5
	}
}
:{HTTP} {
	route /mine {
		sse_broadcast {
			channel news user-{query.user}
			greeting
		}
	}
	route /topics {
		sse_broadcast {
			channel news
			query_channels topic
			allow topic-* sport
			max_stream_channels 4
		}
	}
	route /named {
		sse_broadcast {
			query_channels c
			allow *
			name_by_channel
		}
	}
	route /backlog {
		sse_broadcast {
			channel a b
			backlog 3
			max_queue 100000
		}
	}
	route /renamed {
		sse_broadcast {
			channel a b
			reset_event resync
			max_queue 100000
		}
	}
	route /no-reset {
		sse_broadcast {
			channel a b
			reset_event off
		}
	}
}`

func TestAStreamReceivesEveryOneOfItsChannelsAndNoOther(t *testing.T) {
	ts := startCaddy(t, channelsCaddyfile)
	s := openStream(t, nil, ts.url("/mine?user=alice"))
	id := greetingOf(t, s)
	other := openStream(t, nil, ts.url("/mine?user=bob"))
	greetingOf(t, other)

	ts.mustBroadcast(`{"channel":"user-bob","data":"for bob"}`)
	news := ts.mustBroadcast(`{"channel":"news","data":"for all"}`)
	mine := ts.mustBroadcast(`{"channel":"user-alice","data":"for alice"}`)
	assert.Equal(t, 2, news.Clients)
	assert.Equal(t, 1, mine.Clients)
	assert.Equal(t, []string{"for all", "for alice"}, s.readData(2), "its channels, in order, and not bob's")
	assert.Equal(t, []string{"for bob", "for all"}, other.readData(2))

	// The admin API names every channel of the stream.
	list := ts.clients("?channel=user-alice")
	require.Len(t, list.Clients, 1)
	assert.Equal(t, id, list.Clients[0].ID)
	assert.Equal(t, []string{"news", "user-alice"}, list.Clients[0].Channels)
	assert.Len(t, ts.clients("?channel=news").Clients, 2)
	st := ts.stats()
	assert.Equal(t, 2, st.Clients, "each stream counted once")
	assert.Equal(t, 2, st.Channels["news"].Clients)
	assert.Equal(t, 1, st.Channels["user-alice"].Clients)
	assert.Contains(t, s.raw.String(), `"channels":["news","user-alice"]`, "the greeting names them too")
}

func TestAClientChoosesItsChannelsWithinTheAllowPatterns(t *testing.T) {
	ts := startCaddy(t, channelsCaddyfile)
	s := openStream(t, nil, ts.url("/topics?topic=topic-go&topic=sport&topic=topic-go"))
	require.Eventually(t, func() bool { return ts.stats().Clients == 1 }, awaitTimeout, 5*time.Millisecond)
	list := ts.clients("")
	require.Len(t, list.Clients, 1)
	assert.Equal(t, []string{"news", "topic-go", "sport"}, list.Clients[0].Channels, "the handler's first, duplicates collapsed")
	for _, channel := range []string{"topic-go", "topic-rust", "sport", "news"} {
		ts.mustBroadcast(fmt.Sprintf(`{"channel":%q,"data":%q}`, channel, channel))
	}
	assert.Equal(t, []string{"topic-go", "sport", "news"}, s.readData(3))

	refused := []struct {
		name, query string
		status      int
		message     string
	}{
		{"a channel no pattern allows", "?topic=sport&topic=secret", http.StatusForbidden, `channel "secret" is not one this stream may ask for`},
		{"a pattern is no prefix", "?topic=xtopic-go", http.StatusForbidden, `channel "xtopic-go" is not one`},
		{"too many", "?topic=topic-1&topic=topic-2&topic=topic-3&topic=topic-4", http.StatusBadRequest, "max_stream_channels, 4"},
		{"a line break", "?topic=topic-a%0Aevent:x", http.StatusBadRequest, "must not contain a line break"},
		{"an empty name", "?topic=", http.StatusBadRequest, "must not be empty"},
	}
	for _, tt := range refused {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := plainClient.Get(ts.url("/topics" + tt.query))
			require.NoError(t, err)
			defer resp.Body.Close()
			body, err := io.ReadAll(resp.Body)
			require.NoError(t, err)
			assert.Equal(t, tt.status, resp.StatusCode)
			assert.NotEqual(t, "text/event-stream", resp.Header.Get("Content-Type"), "no stream")
			assert.Contains(t, string(body), tt.message)
		})
	}
	assert.Equal(t, 1, ts.stats().Clients, "no refused request got a stream")

	// With query_channels and no channel of the handler's own, a stream
	// has the channels it asks for, and asking for none is an error.
	resp, err := plainClient.Get(ts.url("/named"))
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusBadRequest, resp.StatusCode)
}

// With name_by_channel, an event its publisher gave no name is named after
// its channel, live and replayed, so that a page routes each channel of one
// stream with addEventListener; a publisher's own name stays.
func TestNameByChannelNamesUnnamedEventsAfterTheirChannel(t *testing.T) {
	ts := startCaddy(t, channelsCaddyfile)
	first := ts.mustBroadcast(`{"channel":"sport","data":"kept"}`)
	s := openStreamWithHeader(t, ts.url("/named?c=news&c=sport"), http.Header{"Last-Event-Id": {first.ID}})
	ts.mustBroadcast(`{"channel":"news","data":"headline"}`)
	ts.mustBroadcast(`{"channel":"sport","event":"score","data":"1-0"}`)
	ts.mustBroadcast(`{"channel":"sport","data":"half time"}`)
	for _, want := range [][2]string{{"news", "headline"}, {"score", "1-0"}, {"sport", "half time"}} {
		ev := s.next()
		assert.Equal(t, want[0], ev.Type)
		assert.Equal(t, want[1], ev.Data)
	}
	// A stream without the option, on the same channel, reads the same
	// events unnamed: the frame is shared, the name spliced in apart.
	plain := openStream(t, nil, ts.url("/backlog"))
	ts.mustBroadcast(`{"channel":"a","data":"unnamed"}`)
	ev := plain.next()
	assert.Empty(t, ev.Type)
	assert.Equal(t, "unnamed", ev.Data)

	// Replayed events are named too.
	resumed := openStreamWithHeader(t, ts.url("/named?c=sport"), http.Header{"Last-Event-Id": {"earliest"}})
	for _, want := range []string{"sport", "score", "sport"} {
		assert.Equal(t, want, resumed.next().Type)
	}
}

// Events of all of a stream's channels arrive in id order, ids strictly
// increasing, while publishers publish to each of the channels at once.
func TestAStreamOfSeveralChannelsSeesOneStrictlyIncreasingIdOrder(t *testing.T) {
	// More threads than this machine may have CPUs, so that publishers
	// to different channels do run at once.
	previous := runtime.GOMAXPROCS(8)
	defer runtime.GOMAXPROCS(previous)
	ts := startCaddy(t, channelsCaddyfile)
	const publishers, perPublisher = 8, 500
	streams := []*stream{
		openStream(t, nil, ts.url("/backlog")),
		openStream(t, nil, ts.url("/renamed")),
	}
	require.Eventually(t, func() bool { return ts.stats().Clients == 2 }, awaitTimeout, 5*time.Millisecond)
	results := make([]<-chan []received, len(streams))
	for i, s := range streams {
		results[i] = s.collect(publishers * perPublisher)
	}
	app := sseApp(t)
	var wg sync.WaitGroup
	for p := range publishers {
		wg.Go(func() {
			channel := []string{"a", "b"}[p%2]
			for i := range perPublisher {
				_, err := app.Broadcast(context.Background(), Event{Channel: channel, Data: fmt.Sprintf("%d-%d", p, i)})
				assert.NoError(t, err)
			}
		})
	}
	wg.Wait()
	for i, result := range results {
		got := <-result
		require.Len(t, got, publishers*perPublisher, "stream %d", i)
		for j := 1; j < len(got); j++ {
			require.Less(t, got[j-1].id, got[j].id, "stream %d: ids must strictly increase, at event %d", i, j)
		}
		// Each publisher's own events in the order it published them.
		next := make([]int, publishers)
		for _, ev := range got {
			var p, n int
			_, err := fmt.Sscanf(ev.data, "%d-%d", &p, &n)
			require.NoError(t, err)
			require.Equal(t, next[p], n, "stream %d, publisher %d", i, p)
			next[p]++
		}
	}
}

// One Last-Event-ID resumes every channel of a stream: the events after it
// in any of them, in id order, then live ones, with no gap and no duplicate
// at the seam while events are published to all of them.
func TestOneLastEventIDResumesEveryChannelAtTheSeam(t *testing.T) {
	previous := runtime.GOMAXPROCS(8)
	defer runtime.GOMAXPROCS(previous)
	ts := startCaddy(t, strings.Replace(channelsCaddyfile, "replay 5", "replay 10000", 1))
	app := sseApp(t)
	const events = 2000
	var ids sync.Map // data → id
	publish := func(i int) {
		channel := []string{"a", "b"}[i%2]
		res, err := app.Broadcast(context.Background(), Event{Channel: channel, Data: fmt.Sprint(i)})
		assert.NoError(t, err)
		ids.Store(fmt.Sprint(i), res.ID)
	}
	for i := range 100 {
		publish(i)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 100; i < events; i++ {
			publish(i)
		}
	}()
	// Clients resume from ids at different points while publishing goes on.
	var clients []*stream
	var from []int
	for k := range 30 {
		point := 2 * k
		id, ok := ids.Load(fmt.Sprint(point))
		require.True(t, ok)
		clients = append(clients, openStreamWithHeader(t, ts.url("/backlog"), http.Header{"Last-Event-Id": {id.(string)}}))
		from = append(from, point+1)
	}
	<-done
	for k, s := range clients {
		assert.Equal(t, numbers(from[k], events-1), s.readData(events-from[k]), "client %d, resumed after %d", k, from[k]-1)
	}
}

func TestAResetTellsTheClientWhenHistoryCannotFillTheGap(t *testing.T) {
	ts := startCaddy(t, channelsCaddyfile)
	// Channel a keeps its 5 newest of 8; channel b all of its 2.
	aIDs := ts.publishNumbered("a", 1, 8)
	bIDs := ts.publishNumbered("b", 101, 102)

	t.Run("a complete resume sends no reset", func(t *testing.T) {
		s := openStreamWithHeader(t, ts.url("/backlog"), http.Header{"Last-Event-Id": {aIDs[6]}})
		assert.Equal(t, []string{"8", "101", "102"}, s.readData(3))
		assert.NotContains(t, s.raw.String(), "event: reset")
	})
	t.Run("a channel let events after the id go", func(t *testing.T) {
		s := openStreamWithHeader(t, ts.url("/backlog"), http.Header{"Last-Event-Id": {aIDs[0]}})
		assert.Equal(t, resetNotice{Reason: "expired", Channels: []string{"a"}}, s.nextReset())
		assert.Equal(t, []string{"4", "5", "6", "7", "8", "101", "102"}, s.readData(7), "then what is kept, in id order")
	})
	t.Run("an unknown id", func(t *testing.T) {
		s := openStreamWithHeader(t, ts.url("/backlog"), http.Header{"Last-Event-Id": {"no-such-id"}})
		assert.Equal(t, resetNotice{Reason: "unknown_id", Channels: []string{"a", "b"}}, s.nextReset())
		assert.Equal(t, []string{"4", "5", "6", "7", "8", "101", "102"}, s.readData(7))
	})
	t.Run("an assigned id not handed out yet", func(t *testing.T) {
		future := fmt.Sprintf("%016d", uint64(time.Now().Add(time.Hour).UnixMicro()))
		s := openStreamWithHeader(t, ts.url("/backlog"), http.Header{"Last-Event-Id": {future}})
		assert.Equal(t, "unknown_id", s.nextReset().Reason)
	})
	t.Run("renamed", func(t *testing.T) {
		s := openStreamWithHeader(t, ts.url("/renamed"), http.Header{"Last-Event-Id": {aIDs[0]}})
		ev := s.next()
		assert.Equal(t, "resync", ev.Type)
		assert.JSONEq(t, `{"reason":"expired","channels":["a"]}`, ev.Data)
	})
	t.Run("off", func(t *testing.T) {
		s := openStreamWithHeader(t, ts.url("/no-reset"), http.Header{"Last-Event-Id": {aIDs[0]}})
		assert.Equal(t, []string{"4", "5", "6", "7", "8", "101", "102"}, s.readData(7))
		assert.NotContains(t, s.raw.String(), "reset")
	})
	// The reset is on the wire as a named event without an id, before
	// every replayed event.
	s := openStreamWithHeader(t, ts.url("/backlog"), http.Header{"Last-Event-Id": {bIDs[0]}})
	s.readData(1)
	assert.NotContains(t, s.raw.String(), "event: reset", "b's 101 is kept: nothing lost after it")
	raw := openStreamWithHeader(t, ts.url("/backlog"), http.Header{"Last-Event-Id": {aIDs[1]}})
	raw.readData(1)
	assert.True(t, strings.HasPrefix(raw.raw.String(), ": open\n\nevent: reset\ndata: {\"reason\":\"expired\",\"channels\":[\"a\"]}\n\nid: "),
		"the stream began %q", raw.raw.String())
}

func TestEarliestAndBacklogServeWhatIsKept(t *testing.T) {
	ts := startCaddy(t, channelsCaddyfile)
	ts.publishNumbered("a", 1, 8) // a keeps 4..8
	ts.publishNumbered("b", 101, 102)

	earliest := openStreamWithHeader(t, ts.url("/backlog"), http.Header{"Last-Event-Id": {"earliest"}})
	assert.Equal(t, []string{"4", "5", "6", "7", "8", "101", "102"}, earliest.readData(7), "everything kept, in id order")
	query := openStream(t, nil, ts.url("/backlog?last_event_id=earliest"))
	assert.Equal(t, []string{"4", "5", "6", "7", "8", "101", "102"}, query.readData(7), "the query parameter works too")
	assert.NotContains(t, earliest.raw.String()+query.raw.String(), "reset")

	backlog := openStream(t, nil, ts.url("/backlog"))
	assert.Equal(t, []string{"8", "101", "102"}, backlog.readData(3), "a client with no id gets the newest 3")
	ts.mustBroadcast(`{"channel":"b","data":"live"}`)
	assert.Equal(t, "live", backlog.next().Data)

	none := openStream(t, nil, ts.url("/renamed"))
	ts.mustBroadcast(`{"channel":"a","data":"live only"}`)
	assert.Equal(t, "live only", none.next().Data, "no backlog by default")
}
