package ssebroadcast

// Tests of the delivery guarantees: ids, replay on reconnect, the seam
// between replay and live, bounded windows and queues, limits, reloads.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const replayCaddyfile = `{
	{GLOBAL}
	sse {
		replay 5
	}
}
:{HTTP} {
	sse_broadcast {query.channel} {
		keepalive off
	}
}`

// openStreamWithHeader opens a stream sending extra request headers.
func openStreamWithHeader(t *testing.T, url string, header http.Header) *stream {
	t.Helper()
	client := &http.Client{Transport: &headerTransport{header: header, base: plainClient.Transport}}
	return openStream(t, client, url)
}

type headerTransport struct {
	header http.Header
	base   http.RoundTripper
}

func (ht *headerTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	for k, v := range ht.header {
		r.Header[k] = v
	}
	return ht.base.RoundTrip(r)
}

// publishNumbered publishes events whose data is "1", "2", … n to channel
// and returns the ids the broadcaster answered with.
func (ts *testServer) publishNumbered(channel string, from, to int) []string {
	ts.t.Helper()
	var ids []string
	for i := from; i <= to; i++ {
		ids = append(ids, ts.mustBroadcast(fmt.Sprintf(`{"channel":%q,"data":"%d"}`, channel, i)).ID)
	}
	return ids
}

// readData reads n events and returns their data.
func (s *stream) readData(n int) []string {
	s.t.Helper()
	data := make([]string, n)
	for i := range data {
		data[i] = s.next().Data
	}
	return data
}

func numbers(from, to int) []string {
	var out []string
	for i := from; i <= to; i++ {
		out = append(out, strconv.Itoa(i))
	}
	return out
}

func TestAssignedIdsIncreaseStrictlyWithinAChannel(t *testing.T) {
	ts := startCaddy(t, replayCaddyfile)
	s := openStream(t, nil, ts.url("/?channel=a"))

	var idsA, idsB []string
	for i := range 200 {
		idsA = append(idsA, ts.mustBroadcast(fmt.Sprintf(`{"channel":"a","data":"%d"}`, i)).ID)
		idsB = append(idsB, ts.mustBroadcast(fmt.Sprintf(`{"channel":"b","data":"%d"}`, i)).ID)
	}
	for _, ids := range [][]string{idsA, idsB} {
		for i, id := range ids {
			assert.Len(t, id, 16, "assigned ids are 16 digits")
			if i > 0 {
				assert.Less(t, ids[i-1], id, "ids must increase strictly, as text")
			}
		}
	}
	for _, id := range idsA {
		assert.Equal(t, id, s.next().LastEventID, "the client sees the id the publisher was given")
	}

	// Publishing in-process, many events fall in one microsecond.
	app := sseApp(t)
	last := ""
	for range 5000 {
		res, err := app.Broadcast(context.Background(), Event{Channel: "fast", Data: "x"})
		require.NoError(t, err)
		require.Less(t, last, res.ID, "ids must increase strictly, as text")
		last = res.ID
	}

	kept := ts.mustBroadcast(`{"channel":"a","id":"my-own-id","data":"x"}`)
	assert.Equal(t, "my-own-id", kept.ID, "a publisher's id is kept as it is")
	assert.Equal(t, "my-own-id", s.next().LastEventID)
}

func TestAssignedIdsKeepIncreasingAcrossAReload(t *testing.T) {
	ts := startCaddy(t, replayCaddyfile)
	before := ts.publishNumbered("a", 1, 3)
	ts.load(strings.Replace(replayCaddyfile, "replay 5", "replay 6", 1))
	after := ts.publishNumbered("a", 4, 6)
	assert.Less(t, before[2], after[0])

	// The window lived through the reload too.
	s := openStreamWithHeader(t, ts.url("/?channel=a"), http.Header{"Last-Event-Id": {before[0]}})
	assert.Equal(t, numbers(2, 6), s.readData(5))
}

func TestResumeReplaysMissedEventsThenLiveWithoutGapOrDuplicate(t *testing.T) {
	ts := startCaddy(t, replayCaddyfile)
	ids := ts.publishNumbered("a", 1, 5)

	s := openStreamWithHeader(t, ts.url("/?channel=a"), http.Header{"Last-Event-Id": {ids[1]}})
	ts.publishNumbered("a", 6, 7)
	assert.Equal(t, numbers(3, 7), s.readData(5))
	wantRaw := ": open\n\n"
	for i, id := range ids[2:] {
		wantRaw += fmt.Sprintf("id: %s\ndata: %d\n\n", id, i+3)
	}
	assert.True(t, strings.HasPrefix(s.raw.String(), wantRaw), "replayed events are the events as published: %q", s.raw.String())

	st := ts.stats()
	assert.Equal(t, uint64(3), st.Replayed)
}

func TestResumeFromTheQueryParameterAndTheHeaderWins(t *testing.T) {
	ts := startCaddy(t, replayCaddyfile)
	ids := ts.publishNumbered("a", 1, 4)

	byQuery := openStream(t, nil, ts.url("/?channel=a&last_event_id="+ids[2]))
	ts.publishNumbered("a", 5, 5)
	assert.Equal(t, numbers(4, 5), byQuery.readData(2))

	// A browser reconnecting to a URL with last_event_id also sends the
	// newer Last-Event-ID header.
	both := openStreamWithHeader(t, ts.url("/?channel=a&last_event_id="+ids[0]), http.Header{"Last-Event-Id": {ids[3]}})
	ts.publishNumbered("a", 6, 6)
	assert.Equal(t, numbers(5, 6), both.readData(2))
}

func TestResumeWithAnIdTheWindowCannotPlace(t *testing.T) {
	ts := startCaddy(t, replayCaddyfile)
	ids := ts.publishNumbered("a", 1, 8) // the window keeps 4..8

	t.Run("older than the window: a reset, then the whole window", func(t *testing.T) {
		s := openStreamWithHeader(t, ts.url("/?channel=a"), http.Header{"Last-Event-Id": {ids[0]}})
		assert.Equal(t, resetNotice{Reason: "expired", Channels: []string{"a"}}, s.nextReset())
		assert.Equal(t, numbers(4, 8), s.readData(5))
	})
	t.Run("unknown: a reset, then the whole window", func(t *testing.T) {
		s := openStreamWithHeader(t, ts.url("/?channel=a"), http.Header{"Last-Event-Id": {"not-an-id-we-gave"}})
		assert.Equal(t, resetNotice{Reason: "unknown_id", Channels: []string{"a"}}, s.nextReset())
		assert.Equal(t, numbers(4, 8), s.readData(5))
		ts.mustBroadcast(`{"channel":"a","data":"live"}`)
		assert.Equal(t, "live", s.next().Data)
	})
	t.Run("the newest: nothing to replay", func(t *testing.T) {
		latest := ts.mustBroadcast(`{"channel":"a","data":"latest"}`).ID
		s := openStreamWithHeader(t, ts.url("/?channel=a"), http.Header{"Last-Event-Id": {latest}})
		ts.mustBroadcast(`{"channel":"a","data":"after latest"}`)
		assert.Equal(t, "after latest", s.next().Data)
	})
	t.Run("empty: live events only", func(t *testing.T) {
		s := openStreamWithHeader(t, ts.url("/?channel=a"), http.Header{"Last-Event-Id": {""}})
		ts.mustBroadcast(`{"channel":"a","data":"live again"}`)
		assert.Equal(t, "live again", s.next().Data)
	})
}

// nextReset reads the next event, which must be a reset, and returns what
// it says.
func (s *stream) nextReset() resetNotice {
	s.t.Helper()
	ev := s.next()
	require.Equal(s.t, "reset", ev.Type, "a reset event first; the stream had read %q", s.raw.String())
	assert.Empty(s.t, ev.LastEventID, "a reset has no id")
	var notice resetNotice
	require.NoError(s.t, json.Unmarshal([]byte(ev.Data), &notice), "reset data %q", ev.Data)
	return notice
}

// replayOptionCaddyfile serves per-channel streams with one sse app option.
func replayOptionCaddyfile(option string) string {
	return `{
	{GLOBAL}
	sse {
		` + option + `
	}
}
:{HTTP} {
	sse_broadcast {query.channel}
}`
}

func TestReplayWindowIsBoundedByBytesAndAge(t *testing.T) {
	t.Run("replay_max_bytes", func(t *testing.T) {
		ts := startCaddy(t, replayOptionCaddyfile("replay_max_bytes 1KiB"))
		ids := ts.publishNumbered("a", 1, 50)
		st := ts.stats()
		assert.LessOrEqual(t, st.ReplayBytes, int64(1024))
		kept := st.Channels["a"].Replayable
		require.Positive(t, kept)
		require.Less(t, kept, 50)
		s := openStreamWithHeader(t, ts.url("/?channel=a"), http.Header{"Last-Event-Id": {ids[0]}})
		assert.Equal(t, resetNotice{Reason: "expired", Channels: []string{"a"}}, s.nextReset())
		assert.Equal(t, numbers(51-kept, 50), s.readData(kept), "the newest events are the ones kept")
	})
	t.Run("replay_ttl", func(t *testing.T) {
		ts := startCaddy(t, replayOptionCaddyfile("replay_ttl 200ms"))
		ids := ts.publishNumbered("a", 1, 3)
		// Wait out the TTL: the janitor frees the expired window (which
		// nothing replays even before).
		require.Eventually(t, func() bool { st := ts.stats(); return st.ReplayBytes == 0 && len(st.Channels) == 0 },
			awaitTimeout, 20*time.Millisecond)
		s := openStreamWithHeader(t, ts.url("/?channel=a"), http.Header{"Last-Event-Id": {ids[0]}})
		ts.mustBroadcast(`{"channel":"a","data":"fresh"}`)
		assert.Equal(t, resetNotice{Reason: "expired", Channels: []string{"a"}}, s.nextReset(),
			"the channel was removed with its window, and is known to have lost events")
		assert.Equal(t, "fresh", s.next().Data, "expired events are not replayed")
	})
	t.Run("replay_total_bytes", func(t *testing.T) {
		ts := startCaddy(t, replayOptionCaddyfile("replay_total_bytes 4KiB"))
		for c := range 20 {
			ts.publishNumbered(fmt.Sprintf("ch%d", c), 1, 10)
		}
		assert.LessOrEqual(t, ts.stats().ReplayBytes, int64(4096))
	})
	t.Run("replay 0", func(t *testing.T) {
		ts := startCaddy(t, replayOptionCaddyfile("replay 0"))
		ids := ts.publishNumbered("a", 1, 3)
		st := ts.stats()
		assert.Zero(t, st.ReplayBytes)
		assert.Empty(t, st.Channels, "no window, no client: no channel kept")
		s := openStreamWithHeader(t, ts.url("/?channel=a"), http.Header{"Last-Event-Id": {ids[0]}})
		ts.mustBroadcast(`{"channel":"a","data":"live"}`)
		assert.Equal(t, resetNotice{Reason: "expired", Channels: []string{"a"}}, s.nextReset(),
			"events 2 and 3 were published while no one listened, and not kept")
		assert.Equal(t, "live", s.next().Data)
	})
}

// sseApp returns the running config's sse app, for publishing in-process
// as another Caddy module would.
func sseApp(t *testing.T) *App {
	t.Helper()
	app, err := caddy.ActiveContext().App("sse")
	require.NoError(t, err)
	return app.(*App)
}

// Clients that resume while events are being published must get every
// event after their id exactly once, in order: the seam between replay and
// live must neither lose nor double an event.
func TestResumeSeamUnderConcurrentPublishing(t *testing.T) {
	ts := startCaddy(t, `{
	{GLOBAL}
	sse {
		replay 100000
	}
}
:{HTTP} {
	sse_broadcast {query.channel} {
		keepalive off
		max_queue 100000
	}
}`)
	app := sseApp(t)
	const total = 2000

	// The publisher runs on its own, recording the last event it published.
	type published struct {
		n  int
		id string
	}
	var latest atomic.Pointer[published]
	latest.Store(&published{})
	done := make(chan error, 1)
	go func() {
		for i := 1; i <= total; i++ {
			res, err := app.Broadcast(context.Background(), Event{Channel: "seam", Data: strconv.Itoa(i)})
			if err != nil {
				done <- err
				return
			}
			latest.Store(&published{n: i, id: res.ID})
			if i%10 == 0 {
				time.Sleep(time.Millisecond) // spread the publishing over the resumes
			}
		}
		done <- nil
	}()

	// Meanwhile clients resume from whatever was last published.
	type resumer struct {
		after  int
		stream *stream
	}
	var resumers []resumer
	var publishErr error
	for running := true; running; {
		select {
		case publishErr = <-done:
			running = false
		default:
			last := latest.Load()
			if last.n == 0 || last.n == total || len(resumers) == 20 ||
				(len(resumers) > 0 && last.n-resumers[len(resumers)-1].after < 50) {
				continue
			}
			s := openStreamWithHeader(t, ts.url("/?channel=seam"), http.Header{"Last-Event-Id": {last.id}})
			resumers = append(resumers, resumer{after: last.n, stream: s})
		}
	}
	require.NoError(t, publishErr)
	require.GreaterOrEqual(t, len(resumers), 10, "too few clients resumed while events were published")
	for _, r := range resumers {
		assert.Equal(t, numbers(r.after+1, total), r.stream.readData(total-r.after), "resumed after event %d", r.after)
	}
}

func TestMaxClientsRefusesWith503AndRetryAfter(t *testing.T) {
	ts := startCaddy(t, `{
	{GLOBAL}
	sse {
		max_clients 3
	}
}
:{HTTP} {
	route /limited {
		sse_broadcast {
			max_clients 2
			retry 2s
		}
	}
	route /open {
		sse_broadcast
	}
}`)
	openStream(t, nil, ts.url("/limited"))
	openStream(t, nil, ts.url("/limited"))

	refused := func(path, wantRetryAfter string) {
		t.Helper()
		resp, err := plainClient.Get(ts.url(path))
		require.NoError(t, err)
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		require.NoError(t, err)
		assert.Equal(t, http.StatusServiceUnavailable, resp.StatusCode, path)
		assert.Equal(t, wantRetryAfter, resp.Header.Get("Retry-After"), path)
		assert.Contains(t, string(body), "too many clients", path)
	}
	refused("/limited", "2") // the handler's limit, with its retry as Retry-After

	openStream(t, nil, ts.url("/open"))
	refused("/open", "5") // the app's limit over all handlers

	st := ts.stats()
	assert.Equal(t, 3, st.Clients)
	assert.Equal(t, uint64(2), st.Rejected)
}

// With replay turned off and on again, a client never gets a replay with
// a hole in it: a channel that got events while replay was off starts its
// window anew.
func TestTurningReplayOffAndOnLeavesNoGapInAReplay(t *testing.T) {
	ts := startCaddy(t, replayCaddyfile)
	ids := ts.publishNumbered("a", 1, 2)

	ts.load(strings.Replace(replayCaddyfile, "replay 5", "replay 0", 1))
	off := openStreamWithHeader(t, ts.url("/?channel=a"), http.Header{"Last-Event-Id": {ids[0]}})
	ts.publishNumbered("a", 3, 3)
	assert.Equal(t, resetNotice{Reason: "expired", Channels: []string{"a"}}, off.nextReset(),
		"replay is off: event 2 cannot be replayed")
	assert.Equal(t, "3", off.next().Data, "replay is off: live events only")

	ts.load(replayCaddyfile)
	ts.publishNumbered("a", 4, 4)
	s := openStreamWithHeader(t, ts.url("/?channel=a"), http.Header{"Last-Event-Id": {ids[0]}})
	ts.publishNumbered("a", 5, 5)
	assert.Equal(t, resetNotice{Reason: "expired", Channels: []string{"a"}}, s.nextReset(), "2 and 3 are gone")
	assert.Equal(t, numbers(4, 5), s.readData(2), "the window starts after the events published while replay was off")
}

// A reload that fails leaves the running config as it was, replay limits
// included.
func TestAFailedReloadKeepsTheReplaySettings(t *testing.T) {
	ts := startCaddy(t, replayCaddyfile)
	ids := ts.publishNumbered("a", 1, 3)

	// The new config's site cannot listen: its port is taken.
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer taken.Close()
	broken := strings.Replace(replayCaddyfile, "replay 5", "replay 0", 1) + "\nhttp://" + taken.Addr().String() + " {\n\trespond ok\n}\n"
	require.Error(t, caddy.Load(ts.adapt(broken), true), "the reload must fail")
	// Caddy resets connections that arrive while it rolls back.
	require.Eventually(t, func() bool {
		resp, err := plainClient.Get(ts.url("/nothing-here?channel=probe"))
		if err != nil {
			return false
		}
		resp.Body.Close()
		return true
	}, awaitTimeout, 10*time.Millisecond)

	s := openStreamWithHeader(t, ts.url("/?channel=a"), http.Header{"Last-Event-Id": {ids[0]}})
	assert.Equal(t, numbers(2, 3), s.readData(2), "replay must still be on")
}

// A reload that lowers the replay limits is in force at once for every
// resume, on a channel that nobody publishes to since: it never serves
// more than the limits keep.
func TestLoweredReplayLimitsApplyToAQuietChannelAtOnce(t *testing.T) {
	ts := startCaddy(t, replayOptionCaddyfile("replay 700"))
	events := make([]Event, 700)
	for i := range events {
		events[i] = Event{Channel: "a", Data: strconv.Itoa(i + 1)}
	}
	results, err := sseApp(t).BroadcastBatch(context.Background(), events)
	require.NoError(t, err)
	require.Equal(t, 700, ts.stats().Channels["a"].Replayable)

	ts.load(replayOptionCaddyfile("replay 500"))
	assert.Equal(t, 500, ts.stats().Channels["a"].Replayable, "what a resume may be served")
	s := openStreamWithHeader(t, ts.url("/?channel=a"), http.Header{"Last-Event-Id": {results[0].ID}})
	assert.Equal(t, resetNotice{Reason: "expired", Channels: []string{"a"}}, s.nextReset(), "2 to 200 are no longer kept")
	assert.Equal(t, numbers(201, 700), s.readData(500), "the newest 500 events, no more")
	ts.mustBroadcast(`{"channel":"a","data":"live"}`)
	assert.Equal(t, "live", s.next().Data)

	ts.load(replayOptionCaddyfile("replay 500\n\t\treplay_max_bytes 10KiB"))
	kept := ts.stats().Channels["a"].Replayable
	require.Positive(t, kept)
	require.Less(t, kept, 200, "100-odd bytes an event, 10 KiB in all")
	again := openStreamWithHeader(t, ts.url("/?channel=a"), http.Header{"Last-Event-Id": {results[0].ID}})
	assert.Equal(t, resetNotice{Reason: "expired", Channels: []string{"a"}}, again.nextReset())
	got := again.readData(kept)
	assert.Equal(t, "live", got[len(got)-1], "the newest events are the ones kept")
}
