package ssebroadcast

// Tests that one client that stops reading holds no one else back, and is
// disconnected and counted.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// stalledClient opens a stream over a raw TCP connection with a small
// receive buffer, and never reads from it.
func stalledClient(t *testing.T, addr, path string) net.Conn {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	require.NoError(t, conn.(*net.TCPConn).SetReadBuffer(4096))
	_, err = fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: %s\r\nAccept: text/event-stream\r\n\r\n", path, addr)
	require.NoError(t, err)
	return conn
}

// collect reads n events from s in the background, so that the client keeps
// up however fast events come, and returns their data, ids and receive
// times.
func (s *stream) collect(n int) <-chan []received {
	out := make(chan []received, 1)
	go func() {
		got := make([]received, 0, n)
		for len(got) < n {
			select {
			case ev, ok := <-s.events:
				if !ok {
					out <- got
					return
				}
				got = append(got, received{data: ev.Data, id: ev.LastEventID, at: time.Now()})
			case <-time.After(awaitTimeout):
				out <- got
				return
			}
		}
		out <- got
	}()
	return out
}

type received struct {
	data, id string
	at       time.Time
}

func TestAStalledClientIsDisconnectedAndHoldsNoOneBack(t *testing.T) {
	// The normal clients, twenty parsers in this process under the race
	// detector, fall up to a second and a half behind at times, with
	// their receive windows shut: with write_timeout 1s the kernel could
	// give up on one of them (TCP_USER_TIMEOUT, README "Clients that
	// vanish"), which is not what this test is about.
	ts := startCaddy(t, `{
	{GLOBAL}
}
:{HTTP} {
	sse_broadcast {
		channel fanout
		write_timeout 3s
	}
}`)
	const clients, events = 20, 2000

	stalled := stalledClient(t, ts.http, "/")
	normal := make([]*stream, clients)
	results := make([]<-chan []received, clients)
	for i := range normal {
		normal[i] = openStream(t, nil, ts.url("/"))
		results[i] = normal[i].collect(events)
	}
	require.Eventually(t, func() bool { return ts.stats().Clients == clients+1 }, awaitTimeout, 5*time.Millisecond)

	// Published through the admin API, as a backend would, over one
	// kept-alive connection; each event carries its publish time, in 1 KB
	// of data.
	publisher := &http.Client{Transport: &http.Transport{}}
	defer publisher.CloseIdleConnections()
	padding := strings.Repeat("x", 1024)
	for i := range events {
		data := fmt.Sprintf("%d %d %s", i, time.Now().UnixNano(), padding)
		body := fmt.Sprintf(`{"channel":"fanout","data":%q}`, data[:1024])
		resp, err := publisher.Post("http://"+ts.admin+"/sse/broadcast", "application/json", strings.NewReader(body))
		require.NoError(t, err)
		_, err = io.Copy(io.Discard, resp.Body)
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, http.StatusOK, resp.StatusCode)
	}

	var latencies []time.Duration
	for i, result := range results {
		got := <-result
		require.Equal(t, events, len(got), "client %d missed events", i)
		for seq, r := range got {
			fields := strings.SplitN(r.data, " ", 3)
			require.Equal(t, strconv.Itoa(seq), fields[0], "client %d: events out of order", i)
			sent, err := strconv.ParseInt(fields[1], 10, 64)
			require.NoError(t, err)
			latencies = append(latencies, r.at.Sub(time.Unix(0, sent)))
		}
	}
	slices.Sort(latencies)
	t.Logf("latency over %d deliveries: p50 %s, p99 %s, max %s", len(latencies),
		latencies[len(latencies)/2], latencies[len(latencies)*99/100], latencies[len(latencies)-1])

	// The stalled client was dropped, counted, and its connection closed.
	require.Eventually(t, func() bool { return ts.stats().Clients == clients }, awaitTimeout, 5*time.Millisecond)
	st := ts.stats()
	assert.Equal(t, uint64(1), st.Disconnects.Slow+st.Disconnects.WriteTimeout)
	// Draining what the kernel holds ends once the server closed the
	// connection: in EOF, or in a reset where the server's kernel gave up
	// on a client that kept its window shut for write_timeout (Linux,
	// TCP_USER_TIMEOUT) and forgot the connection. A larger buffer lets the
	// client drain it quickly.
	require.NoError(t, stalled.(*net.TCPConn).SetReadBuffer(1<<20))
	// The deadline is generous: on a loaded machine the client drains
	// slowly through its small receive window.
	require.NoError(t, stalled.SetReadDeadline(time.Now().Add(3*awaitTimeout)))
	_, err := io.Copy(io.Discard, stalled)
	if !errors.Is(err, syscall.ECONNRESET) {
		assert.NoError(t, err, "the server must close the stalled connection")
	}
}

func TestAClientThatTakesNoWriteInTimeIsDisconnected(t *testing.T) {
	ts := startCaddy(t, `{
	{GLOBAL}
}
:{HTTP} {
	sse_broadcast {
		channel fanout
		write_timeout 300ms
		max_queue 1000000
		max_queue_bytes 1GiB
	}
}`)
	stalledClient(t, ts.http, "/")
	keeping := openStream(t, nil, ts.url("/"))
	require.Eventually(t, func() bool { return ts.stats().Clients == 2 }, awaitTimeout, 5*time.Millisecond)

	// More than the socket buffers hold, so that a write to the stalled
	// client blocks until its deadline.
	app := sseApp(t)
	data := strings.Repeat("y", 8<<10)
	const events = 1000
	done := keeping.collect(events)
	for range events {
		_, err := app.Broadcast(context.Background(), Event{Channel: "fanout", Data: data})
		require.NoError(t, err)
	}
	assert.Equal(t, events, len(<-done), "the client that reads gets every event")

	require.Eventually(t, func() bool { return ts.stats().Disconnects.WriteTimeout == 1 }, awaitTimeout, 5*time.Millisecond)
	assert.Zero(t, ts.stats().Disconnects.Slow)
}

// A keep-alive comment that waits for a writer is no event: it counts
// against neither queue bound, so that a client that keeps up is never
// dropped as slow for it, however tight the bounds.
func TestAKeepAliveCountsAgainstNoQueueBound(t *testing.T) {
	for _, bound := range []string{"max_queue 1", "max_queue_bytes 200"} {
		t.Run(bound, func(t *testing.T) {
			ts := startCaddy(t, `{
	{GLOBAL}
}
:{HTTP} {
	sse_broadcast {
		keepalive 1ms
		`+bound+`
	}
}`)
			s := openStream(t, nil, ts.url("/"))
			require.Eventually(t, func() bool { return ts.stats().Clients == 1 }, awaitTimeout, 5*time.Millisecond)
			app := sseApp(t)
			// Each event alone in the queue, 150 bytes of data: within
			// both bounds, unless a keep-alive counted too.
			padding := strings.Repeat("k", 140)
			for i := range 300 {
				_, err := app.Broadcast(context.Background(), Event{Data: fmt.Sprintf("%09d %s", i, padding)})
				require.NoError(t, err)
				ev := s.next()
				require.Equal(t, fmt.Sprintf("%09d %s", i, padding), ev.Data, "event %d", i)
				if i%10 == 0 {
					// Quiet for a few keep-alive intervals now and then.
					s.raw.awaitCount(t, ": keep-alive\n\n", strings.Count(s.raw.String(), ": keep-alive\n\n")+1)
				}
			}
			st := ts.stats()
			assert.Zero(t, st.Disconnects.Slow, "a client that keeps up is not slow")
			assert.Equal(t, 1, st.Clients)
		})
	}
}

// The moment the test above can only hope to hit, made to happen: a
// keep-alive waits for a writer (the test holds the writers off) when an
// event is published to a taken-over stream with max_queue 1.
func TestAnEventPublishedWhileAKeepAliveWaitsForAWriterIsQueued(t *testing.T) {
	ts := startCaddy(t, `{
	{GLOBAL}
}
:{HTTP} {
	sse_broadcast {
		keepalive 20ms
		max_queue 1
	}
}`)
	s := openStream(t, nil, ts.url("/"))
	require.Eventually(t, func() bool { return ts.stats().Clients == 1 }, awaitTimeout, 5*time.Millisecond)
	app := sseApp(t)
	b := app.broadcaster
	b.clientsMu.RLock()
	var sub *subscriber
	for _, c := range b.clients {
		sub = c
	}
	b.clientsMu.RUnlock()
	require.NotNil(t, sub)

	// With the writers' list locked, no writer takes anything: the
	// keep-alive, once due, waits.
	b.writers.mu.Lock()
	locked := true
	defer func() {
		if locked {
			b.writers.mu.Unlock()
		}
	}()
	require.Eventually(t, func() bool {
		sub.mu.Lock()
		defer sub.mu.Unlock()
		return sub.scheduled
	}, awaitTimeout, time.Millisecond, "the keep-alive must come due")
	res, err := app.Broadcast(context.Background(), Event{Data: "alongside the keep-alive"})
	require.NoError(t, err)
	assert.Equal(t, 1, res.Clients, "queued, not dropped")
	b.writers.mu.Unlock()
	locked = false

	ev := s.next()
	assert.Equal(t, "alongside the keep-alive", ev.Data)
	assert.Zero(t, ts.stats().Disconnects.Slow)
}
