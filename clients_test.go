package ssebroadcast

// Tests of clients as objects: ids, the greeting, listing, sending to one
// client, disconnecting one.

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const clientsCaddyfile = `{
	{GLOBAL}
}
:{HTTP} {
	sse_broadcast {query.channel} {
		greeting
		keepalive off
	}
}`

// greeted opens a stream and returns it with the id its greeting names.
func greeted(t *testing.T, ts *testServer, channel string) (*stream, string) {
	t.Helper()
	s := openStream(t, nil, ts.url("/?channel="+channel))
	ev := s.next()
	require.Equal(t, "connected", ev.Type)
	var hello struct {
		Client   string
		Channels []string
	}
	require.NoError(t, json.Unmarshal([]byte(ev.Data), &hello), "greeting data %q", ev.Data)
	require.Equal(t, []string{channel}, hello.Channels)
	require.Len(t, hello.Client, 26)
	assert.Empty(t, ev.LastEventID, "the greeting must not move Last-Event-ID")
	return s, hello.Client
}

type clientList struct {
	Clients []ClientInfo `json:"clients"`
}

func (ts *testServer) clients(query string) clientList {
	ts.t.Helper()
	res := ts.adminRequest(http.MethodGet, "/sse/clients"+query, "", nil)
	require.Equal(ts.t, http.StatusOK, res.status, "%s", res.body)
	var list clientList
	require.NoError(ts.t, json.Unmarshal(res.body, &list))
	return list
}

func TestGreetingNamesTheClientAndTheListShowsIt(t *testing.T) {
	ts := startCaddy(t, clientsCaddyfile)
	before := time.Now()
	_, alice := greeted(t, ts, "room-a")
	_, bob := greeted(t, ts, "room-b")
	require.NotEqual(t, alice, bob)

	all := ts.clients("")
	require.Len(t, all.Clients, 2)
	assert.Equal(t, alice, all.Clients[0].ID, "oldest first")
	assert.Equal(t, []string{"room-a"}, all.Clients[0].Channels)
	assert.Equal(t, bob, all.Clients[1].ID)
	assert.Contains(t, all.Clients[0].RemoteAddr, "127.0.0.1:")
	assert.False(t, all.Clients[0].ConnectedSince.Before(before.Truncate(time.Second)))

	roomB := ts.clients("?channel=room-b")
	require.Len(t, roomB.Clients, 1)
	assert.Equal(t, bob, roomB.Clients[0].ID)
	assert.Empty(t, ts.clients("?channel=nobody").Clients)

	one := ts.adminRequest(http.MethodGet, "/sse/clients/"+alice, "", nil)
	require.Equal(t, http.StatusOK, one.status)
	var info ClientInfo
	require.NoError(t, json.Unmarshal(one.body, &info))
	assert.Equal(t, alice, info.ID)
	assert.Equal(t, 1, info.Sent, "the greeting")
}

func TestBroadcastToOneClientReachesThatClientOnly(t *testing.T) {
	ts := startCaddy(t, clientsCaddyfile)
	target, id := greeted(t, ts, "room")
	other, _ := greeted(t, ts, "room")

	res := ts.mustBroadcast(`{"client":"` + id + `","event":"private","data":"for you"}`)
	assert.Equal(t, 1, res.Clients)
	assert.Equal(t, "room", res.Channel)
	ev := target.next()
	assert.Equal(t, "private", ev.Type)
	assert.Equal(t, "for you", ev.Data)
	assert.Equal(t, res.ID, ev.LastEventID)

	// The other client's next event is the channel's, not the private one.
	ts.mustBroadcast(`{"channel":"room","data":"for all"}`)
	assert.Equal(t, "for all", other.next().Data)
	assert.Equal(t, "for all", target.next().Data)

	// Naming the client's own channel too is fine.
	assert.Equal(t, 1, ts.mustBroadcast(`{"client":"`+id+`","channel":"room","data":"again"}`).Clients)
	assert.Equal(t, "again", target.next().Data)
}

func TestBroadcastToAnUnknownClientIs404AndSendsNothing(t *testing.T) {
	ts := startCaddy(t, clientsCaddyfile)
	s, id := greeted(t, ts, "room")
	gone := "AAAAAAAAAAAAAAAAAAAAAAAAAA"

	tests := []struct {
		name, body string
		status     int
		message    string
	}{
		{"unknown client", `{"client":"` + gone + `","data":"x"}`, http.StatusNotFound, "no such client"},
		{"client on another channel", `{"client":"` + id + `","channel":"hall","data":"x"}`, http.StatusNotFound, "the client is on other channels"},
		{"unknown client in a batch", `[{"channel":"room","data":"x"},{"client":"` + gone + `","data":"x"}]`, http.StatusNotFound, "event 1"},
		{"malformed client id", `{"client":"bob\nevent: x","data":"x"}`, http.StatusBadRequest, `field "client"`},
		{"client id of the wrong type", `{"client":7,"data":"x"}`, http.StatusBadRequest, `field "client"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := ts.broadcast(tt.body)
			require.Equal(t, tt.status, res.status, "%s", res.body)
			assert.Contains(t, res.errorMessage(t), tt.message)
		})
	}
	// Nothing reached the client: its next event is the sentinel.
	ts.mustBroadcast(`{"channel":"room","data":"sentinel"}`)
	assert.Equal(t, "sentinel", s.next().Data)
}

func TestDeletingAClientDisconnectsItAndCountsIt(t *testing.T) {
	ts := startCaddy(t, clientsCaddyfile)
	kicked, id := greeted(t, ts, "room")
	stays, _ := greeted(t, ts, "room")

	res := ts.adminRequest(http.MethodDelete, "/sse/clients/"+id, "", nil)
	require.Equal(t, http.StatusOK, res.status, "%s", res.body)
	assert.JSONEq(t, `{"disconnected":"`+id+`","channels":["room"]}`, string(res.body))
	kicked.awaitEnd()
	require.Eventually(t, func() bool { return ts.stats().Clients == 1 }, awaitTimeout, 5*time.Millisecond)
	assert.Equal(t, uint64(1), ts.stats().Disconnects.Kicked)

	again := ts.adminRequest(http.MethodDelete, "/sse/clients/"+id, "", nil)
	assert.Equal(t, http.StatusNotFound, again.status)
	assert.Contains(t, again.errorMessage(t), "no such client")
	malformed := ts.adminRequest(http.MethodDelete, "/sse/clients/..%2Fstats", "", nil)
	assert.Equal(t, http.StatusNotFound, malformed.status)
	post := ts.adminRequest(http.MethodPost, "/sse/clients/"+id, "application/json", []byte(`{}`))
	assert.Equal(t, http.StatusMethodNotAllowed, post.status)
	assert.Equal(t, "GET, DELETE", post.header.Get("Allow"))
	list := ts.adminRequest(http.MethodDelete, "/sse/clients", "", nil)
	assert.Equal(t, http.StatusMethodNotAllowed, list.status)

	ts.mustBroadcast(`{"channel":"room","data":"still on"}`)
	assert.Equal(t, "still on", stays.next().Data)
}

// A client deleted while its stream waits for nothing to write, or while
// it holds a flush back (flush_interval), has its stream ended at once on
// every protocol, with no event or write to end it.
func TestDeletingAQuietClientEndsItsStreamOnEveryProtocol(t *testing.T) {
	for _, proto := range streamProtocols {
		for _, held := range []bool{false, true} {
			name := proto.name + ", quiet"
			flushInterval := "0"
			if held {
				// Long enough that the stream's end can only have come
				// from the delete, not from the held flush.
				name, flushInterval = proto.name+", holding a flush", "1m"
			}
			t.Run(name, func(t *testing.T) {
				ts, url := startCaddyOn(t, proto.tls, fmt.Sprintf(`keepalive off
		greeting
		flush_interval %s
		takeover %s`, flushInterval, proto.takeover))
				s := openStream(t, &http.Client{Transport: proto.transport(t)}, url)
				require.Equal(t, proto.wantMajor, s.resp.ProtoMajor)
				id := greetingOf(t, s)
				if held {
					// The greeting was a write: what follows it within
					// the interval is held back, on every protocol.
					ts.mustBroadcast(`{"data":"held back"}`)
				}

				res := ts.adminRequest(http.MethodDelete, "/sse/clients/"+id, "", nil)
				require.Equal(t, http.StatusOK, res.status, "%s", res.body)
				s.awaitEnd()
				require.Eventually(t, func() bool { return ts.stats().Clients == 0 }, awaitTimeout, 5*time.Millisecond)
				assert.Equal(t, uint64(1), ts.stats().Disconnects.Kicked)
				assert.NotContains(t, s.raw.String(), "held back", "a deleted client's queue is not written")
			})
		}
	}
}

func TestOfConcurrentDeletesOfOneClientExactlyOneSucceeds(t *testing.T) {
	ts := startCaddy(t, clientsCaddyfile)
	const deletes, rounds = 50, 10
	// Connections opened beforehand, so that the deletes arrive together.
	admin := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: deletes}}
	defer admin.CloseIdleConnections()
	send := func(method, path string) (int, error) {
		req, err := http.NewRequest(method, "http://"+ts.admin+path, nil)
		if err != nil {
			return 0, err
		}
		resp, err := admin.Do(req)
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		_, err = io.Copy(io.Discard, resp.Body)
		return resp.StatusCode, err
	}
	for round := range rounds {
		kicked, id := greeted(t, ts, "room")
		var warm sync.WaitGroup
		for range deletes {
			warm.Go(func() { _, _ = send(http.MethodGet, "/sse/stats") })
		}
		warm.Wait()

		statuses := make(chan int, deletes)
		start := make(chan struct{})
		var wg sync.WaitGroup
		for range deletes {
			wg.Go(func() {
				<-start
				status, err := send(http.MethodDelete, "/sse/clients/"+id)
				if err != nil {
					status = 0
				}
				statuses <- status
			})
		}
		close(start)
		wg.Wait()
		close(statuses)
		counts := make(map[int]int)
		for status := range statuses {
			counts[status]++
		}
		require.Equal(t, map[int]int{http.StatusOK: 1, http.StatusNotFound: deletes - 1}, counts, "round %d", round)
		kicked.awaitEnd()
		require.Eventually(t, func() bool { return ts.stats().Clients == 0 }, awaitTimeout, 5*time.Millisecond)
		require.Equal(t, uint64(round+1), ts.stats().Disconnects.Kicked, "counted once")
	}
}

// The same race without HTTP in between, where it is rarely lost by
// chance: of concurrent kicks of one client, each round, exactly one finds
// it.
func TestConcurrentKicksOfOneClientFindItOnce(t *testing.T) {
	b := newBroadcaster(broadcastLimits{events: 10, bytes: 1 << 20})
	defer b.Destruct()
	for round := range 2000 {
		s := newSubscriber([]string{"room"}, 10, 1<<20)
		require.NoError(t, b.subscribe(s, &resumeRequest{}))
		var found atomic.Int32
		var wg sync.WaitGroup
		start := make(chan struct{})
		for range 20 {
			wg.Go(func() {
				<-start
				if _, err := b.kick(s.id); err == nil {
					found.Add(1)
				}
			})
		}
		close(start)
		wg.Wait()
		require.Equal(t, int32(1), found.Load(), "round %d", round)
		b.unsubscribe(s)
	}
	assert.Equal(t, uint64(2000), b.disconnects[dropKicked].Load())
}
