package ssebroadcast

// Tests of HTTP/1 streams whose connections are taken over from net/http
// after the headers: what an idle client costs, and that nothing a client
// sees changes.

import (
	"bufio"
	"fmt"
	"iter"
	"net"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	sse "github.com/tmaxmax/go-sse"
)

// rawStream is a stream over a bare TCP connection: the client side holds
// no goroutine, so that the process's goroutines are the server's.
type rawStream struct {
	conn net.Conn
	resp *http.Response
}

// dialRawStream sends a stream request and reads the response headers with
// net/http's parser.
func dialRawStream(t *testing.T, addr, path string) *rawStream {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	req, err := http.NewRequest(http.MethodGet, "http://"+addr+path, nil)
	require.NoError(t, err)
	require.NoError(t, req.Write(conn))
	require.NoError(t, conn.SetReadDeadline(time.Now().Add(awaitTimeout)))
	resp, err := http.ReadResponse(bufio.NewReader(conn), req)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	return &rawStream{conn: conn, resp: resp}
}

// events returns a pull iterator over the stream's events, parsed by
// go-sse; stop releases it.
func (rs *rawStream) events() (next func() (sse.Event, error, bool), stop func()) {
	return iter.Pull2(sse.Read(rs.resp.Body, &sse.ReadConfig{MaxEventSize: 1 << 20}))
}

// Once the headers are out, an idle HTTP/1.1 stream holds no goroutine of
// the server's: hundreds of open streams leave the goroutine count where it
// was, and every one of them still receives the next event.
func TestIdleTakenOverStreamsHoldNoGoroutine(t *testing.T) {
	ts := startCaddy(t, `{
	{GLOBAL}
}
:{HTTP} {
	sse_broadcast
}`)
	// Warm-up: lazily started goroutines (the hang-up watcher) belong in
	// the baseline.
	dialRawStream(t, ts.http, "/").conn.Close()
	require.Eventually(t, func() bool { return ts.stats().Clients == 0 }, awaitTimeout, 5*time.Millisecond)
	base := runtime.NumGoroutine()

	const clients = 300
	streams := make([]*rawStream, clients)
	for i := range streams {
		streams[i] = dialRawStream(t, ts.http, "/")
	}
	require.Eventually(t, func() bool { return ts.stats().Clients == clients }, awaitTimeout, 5*time.Millisecond)
	require.Eventually(t, func() bool { return runtime.NumGoroutine() <= base+5 },
		awaitTimeout, 5*time.Millisecond, "%d goroutines for %d idle streams, from %d", runtime.NumGoroutine(), clients, base)

	res := ts.mustBroadcast(`{"event":"tick","data":"one for all"}`)
	require.Equal(t, clients, res.Clients)
	for i, rs := range streams {
		assert.Empty(t, rs.resp.TransferEncoding, "stream %d: the body is the event stream itself, not chunked", i)
		next, stop := rs.events()
		ev, err, ok := next()
		require.True(t, ok, "stream %d ended", i)
		require.NoError(t, err, "stream %d", i)
		assert.Equal(t, "tick", ev.Type)
		assert.Equal(t, "one for all", ev.Data)
		assert.Equal(t, res.ID, ev.LastEventID)
		stop()
	}
}

// A client that closes a taken-over stream is let go at once, with no write
// needed to find out: the server's count drops to zero and the channel goes.
func TestClientClosingATakenOverStreamIsNoticedWithoutAWrite(t *testing.T) {
	ts := startCaddy(t, `{
	{GLOBAL}
}
:{HTTP} {
	sse_broadcast {
		keepalive off
	}
}`)
	streams := make([]*rawStream, 20)
	for i := range streams {
		streams[i] = dialRawStream(t, ts.http, "/")
	}
	require.Eventually(t, func() bool { return ts.stats().Clients == len(streams) }, awaitTimeout, 5*time.Millisecond)
	for _, rs := range streams {
		require.NoError(t, rs.conn.Close())
	}
	require.Eventually(t, func() bool {
		st := ts.stats()
		return st.Clients == 0 && len(st.Channels) == 0
	}, awaitTimeout, 5*time.Millisecond, "stats: %+v", ts.stats())
	assert.Zero(t, ts.stats().Disconnects, "a client that leaves is not a disconnect")
}

// With takeover off, every stream stays with Caddy's server: a goroutine
// serves each, the response is chunked, and events arrive as before.
func TestTakeoverOffKeepsStreamsWithTheServer(t *testing.T) {
	ts := startCaddy(t, `{
	{GLOBAL}
}
:{HTTP} {
	sse_broadcast {
		takeover off
	}
}`)
	base := runtime.NumGoroutine()
	const clients = 50
	streams := make([]*rawStream, clients)
	for i := range streams {
		streams[i] = dialRawStream(t, ts.http, "/")
	}
	require.Eventually(t, func() bool { return ts.stats().Clients == clients }, awaitTimeout, 5*time.Millisecond)
	assert.GreaterOrEqual(t, runtime.NumGoroutine(), base+clients, "each stream has its handler")

	ts.mustBroadcast(`{"data":"chunked"}`)
	for i, rs := range streams {
		assert.Equal(t, []string{"chunked"}, rs.resp.TransferEncoding, "stream %d", i)
		next, stop := rs.events()
		ev, err, ok := next()
		require.True(t, ok, "stream %d ended", i)
		require.NoError(t, err, "stream %d", i)
		assert.Equal(t, "chunked", ev.Data)
		stop()
	}
}

// Large events and a backlog reach a taken-over client whole and in order,
// through writes the socket takes in parts.
func TestLargeEventsReachATakenOverStreamWhole(t *testing.T) {
	ts := startCaddy(t, `{
	{GLOBAL}
}
:{HTTP} {
	sse_broadcast {
		send_buffer 16KiB
	}
}`)
	rs := dialRawStream(t, ts.http, "/")
	require.Eventually(t, func() bool { return ts.stats().Clients == 1 }, awaitTimeout, 5*time.Millisecond)
	const events = 40
	payloads := make([]string, events)
	for i := range payloads {
		// From a few bytes to 200 KiB: larger than a write, larger than
		// the socket's send buffer.
		payloads[i] = fmt.Sprintf("%d:", i) + strings.Repeat("x", (i%5)*50000+i)
		ts.mustBroadcast(fmt.Sprintf(`{"data":%q}`, payloads[i]))
	}
	next, stop := rs.events()
	defer stop()
	for i := range payloads {
		ev, err, ok := next()
		require.True(t, ok, "stream ended before event %d", i)
		require.NoError(t, err)
		require.Equal(t, len(payloads[i]), len(ev.Data), "event %d", i)
		require.Equal(t, payloads[i], ev.Data, "event %d", i)
	}
}

// A handler that wraps this one and puts its write deadline back as it
// unwinds (timeouts), after the takeover, does not cut the stream: it
// outlives the server's write_idle timeout many times over.
func TestATakenOverStreamOutlivesTheTimeoutsHandler(t *testing.T) {
	ts := startCaddy(t, `{
	{GLOBAL}
	servers {
		timeouts {
			write_idle 200ms
		}
	}
}
:{HTTP} {
	route {
		timeouts {
			write_timeout 1m
		}
		sse_broadcast {
			keepalive 50ms
		}
	}
}`)
	s := openStream(t, nil, ts.url("/"))
	assert.Empty(t, s.resp.TransferEncoding, "the stream must be taken over")
	// Twenty keep-alives take a second: five times write_idle.
	s.raw.awaitCount(t, ": keep-alive\n\n", 20)
	res := ts.mustBroadcast(`{"data":"still here"}`)
	ev := s.next()
	assert.Equal(t, "still here", ev.Data)
	assert.Equal(t, res.ID, ev.LastEventID)
	assert.Zero(t, ts.stats().Disconnects)
}

// With write_timeout off, a client that stopped reading is still bounded by
// the server's write_idle timeout: a reload ends its stream, rather than
// leaving a writer blocked on it for good.
func TestAStalledTakenOverStreamWithoutWriteTimeoutEndsOnReload(t *testing.T) {
	caddyfile := `{
	{GLOBAL}
	servers {
		timeouts {
			write_idle 300ms
		}
	}
}
:{HTTP} {
	sse_broadcast {
		write_timeout off
		send_buffer 16KiB
		keepalive off
		max_queue 100000
		max_queue_bytes 64MiB
	}
}`
	ts := startCaddy(t, caddyfile)
	stalledClient(t, ts.http, "/")
	require.Eventually(t, func() bool { return ts.stats().Clients == 1 }, awaitTimeout, 5*time.Millisecond)
	// Far more than the socket buffers hold: the stream's writer blocks.
	payload := strings.Repeat("x", 64<<10)
	for range 32 {
		ts.mustBroadcast(fmt.Sprintf(`{"data":%q}`, payload))
	}
	ts.load(caddyfile)
	require.Eventually(t, func() bool { return ts.stats().Clients == 0 }, awaitTimeout, 5*time.Millisecond,
		"the stalled stream must end within write_idle of the reload")
}

// Taken-over streams stay whole under everything at once, on more writers
// than this machine may have CPUs: concurrent publishers, keep-alives and
// flush holds firing every millisecond, clients leaving mid-stream and a
// reload. The clients that stay receive every event once, in id order;
// every stream ends, and nothing is left behind (checked at cleanup, under
// the race detector in CI).
func TestTakenOverStreamsStayWholeUnderStress(t *testing.T) {
	previous := runtime.GOMAXPROCS(4) // three writers
	defer runtime.GOMAXPROCS(previous)
	caddyfile := `{
	{GLOBAL}
}
:{HTTP} {
	sse_broadcast {
		keepalive 1ms
		flush_interval 1ms
	}
}`
	ts := startCaddy(t, caddyfile)
	const clients, leaving, publishers, perPublisher = 30, 10, 4, 100
	streams := make([]*stream, clients)
	results := make([]<-chan []received, clients)
	for i := range streams {
		streams[i] = openStream(t, nil, ts.url("/"))
		if i >= leaving {
			results[i] = streams[i].collect(publishers * perPublisher)
		}
	}
	require.Eventually(t, func() bool { return ts.stats().Clients == clients }, awaitTimeout, 5*time.Millisecond)

	failed := make(chan error, publishers)
	for p := range publishers {
		go func() {
			for i := range perPublisher {
				if res := ts.broadcast(fmt.Sprintf(`{"data":"%d %d"}`, p, i)); res.status != http.StatusOK {
					failed <- fmt.Errorf("publisher %d, event %d: status %d: %s", p, i, res.status, res.body)
					return
				}
				if p == 0 && i == perPublisher/2 {
					for _, s := range streams[:leaving] {
						s.close()
					}
				}
			}
			failed <- nil
		}()
	}
	for range publishers {
		require.NoError(t, <-failed)
	}
	for i := leaving; i < clients; i++ {
		got := <-results[i]
		require.Len(t, got, publishers*perPublisher, "client %d", i)
		// Each publisher's events arrive in the order it sent them, so
		// none is missing, doubled or out of place.
		next := make([]int, publishers)
		for _, r := range got {
			var p, seq int
			_, err := fmt.Sscanf(r.data, "%d %d", &p, &seq)
			require.NoError(t, err, "client %d: %q", i, r.data)
			require.Equal(t, next[p], seq, "client %d: publisher %d's events out of order", i, p)
			next[p]++
		}
	}
	ts.load(caddyfile)
	require.Eventually(t, func() bool { return ts.stats().Clients == 0 }, awaitTimeout, 5*time.Millisecond)
	for _, s := range streams[leaving:] {
		s.awaitEnd()
	}
}
