package ssebroadcast

// Chaos: clients that misbehave at the TCP level (half a request and gone,
// peers that vanish, a reader that takes one byte a second, a flood over
// max_clients). Whatever they do, the server keeps serving everyone else,
// and once they are gone it holds nothing of theirs: no goroutine, no open
// file (counted in /proc, as the other leak checks do).

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// held is what the process holds at a moment: its goroutines and open
// files, counting the client side of every connection as well as the
// server side, since both are in this process.
type held struct{ goroutines, files int }

// measureHeld counts what the process holds now.
func measureHeld(t *testing.T) held {
	t.Helper()
	return held{goroutines: runtime.NumGoroutine(), files: openFiles(t)}
}

// awaitBackTo waits until the process holds no more than base, and
// clientFiles more open files: sockets whose client, in the test, keeps
// them open while the server must have let go of its end. It polls on the
// test's goroutine: require.Eventually checks on a goroutine of its own,
// one more than the baseline counted.
func (base held) awaitBackTo(t *testing.T, clientFiles int) {
	t.Helper()
	deadline := time.After(awaitTimeout)
	poll := time.NewTicker(10 * time.Millisecond)
	defer poll.Stop()
	for {
		now := measureHeld(t)
		if now.goroutines <= base.goroutines && now.files <= base.files+clientFiles {
			return
		}
		select {
		case <-poll.C:
		case <-deadline:
			var stacks strings.Builder
			_ = pprof.Lookup("goroutine").WriteTo(&stacks, 1)
			t.Fatalf("goroutines %d (from %d), open files %d (from %d, and %d the clients keep); goroutines:\n%s",
				now.goroutines, base.goroutines, now.files, base.files, clientFiles, stacks.String())
		}
	}
}

// warmUp opens and closes one stream, so that what the server starts
// lazily (the hang-up watcher) is in the baseline.
func warmUp(t *testing.T, ts *testServer, path string) {
	t.Helper()
	openStream(t, nil, ts.url(path)).close()
	require.Eventually(t, func() bool { return ts.stats().Clients == 0 }, awaitTimeout, 5*time.Millisecond)
}

// dialTinyWindow connects with the smallest receive buffer the kernel
// allows, set before the handshake so that the window the client
// advertises is small from the first segment: a client that stops reading
// stops the server's writes after a few kilobytes.
func dialTinyWindow(t *testing.T, addr string) net.Conn {
	t.Helper()
	dialer := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		var sockErr error
		err := c.Control(func(fd uintptr) {
			sockErr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 1)
		})
		return errors.Join(err, sockErr)
	}}
	conn, err := dialer.Dial("tcp", addr)
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	return conn
}

// streamRequest is what an EventSource sends to open a stream.
func streamRequest(addr, path string) string {
	return fmt.Sprintf("GET %s HTTP/1.1\r\nHost: %s\r\nAccept: text/event-stream\r\n\r\n", path, addr)
}

// awaitServerClose reads conn until the server closes it, and fails if it
// is still open after awaitTimeout.
func awaitServerClose(t *testing.T, conn net.Conn, what string) {
	t.Helper()
	require.NoError(t, conn.SetReadDeadline(time.Now().Add(awaitTimeout)))
	_, err := io.Copy(io.Discard, conn)
	require.False(t, errors.Is(err, os.ErrDeadlineExceeded), "the server did not close a connection that %s", what)
}

// steadyPublisher publishes numbered events to a channel at a steady rate
// through the sse app, as another module would, until it is stopped.
type steadyPublisher struct {
	stopping chan struct{}
	done     chan struct{}
	app      *App
	channel  string
	count    int
	err      error
}

// publishSteadily publishes an event of size bytes every interval: its data
// is "<seq> <publish time in ns> " and padding.
func publishSteadily(t *testing.T, channel string, interval time.Duration, size int) *steadyPublisher {
	t.Helper()
	p := &steadyPublisher{stopping: make(chan struct{}), done: make(chan struct{}), app: sseApp(t), channel: channel}
	padding := strings.Repeat("x", size)
	go func() {
		defer close(p.done)
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			select {
			case <-p.stopping:
				return
			case <-tick.C:
			}
			data := fmt.Sprintf("%d %d %s", p.count, time.Now().UnixNano(), padding)[:size]
			if _, p.err = p.app.Broadcast(context.Background(), Event{Channel: channel, Data: data}); p.err != nil {
				return
			}
			p.count++
		}
	}()
	t.Cleanup(func() { p.stop(t) })
	return p
}

// stop ends the publishing with an event whose data is "end", and returns
// how many numbered events went before it.
func (p *steadyPublisher) stop(t *testing.T) int {
	t.Helper()
	select {
	case <-p.done:
		return p.count // stopped already
	default:
	}
	close(p.stopping)
	<-p.done
	require.NoError(t, p.err, "publishing event %d", p.count)
	_, err := p.app.Broadcast(context.Background(), Event{Channel: p.channel, Data: "end"})
	require.NoError(t, err)
	return p.count
}

// collectUntilEnd reads s's events in the background, keeping up however
// fast they come, until the publisher's "end".
func (s *stream) collectUntilEnd() <-chan []received {
	out := make(chan []received, 1)
	go func() {
		var got []received
		defer func() { out <- got }()
		for {
			select {
			case ev, ok := <-s.events:
				if !ok || ev.Data == "end" {
					return
				}
				got = append(got, received{data: ev.Data, at: time.Now()})
			case <-time.After(awaitTimeout):
				return
			}
		}
	}()
	return out
}

// requireEveryEvent requires got to be the publisher's n events, each once
// and in order, and returns the longest a delivery took.
func requireEveryEvent(t *testing.T, client string, got []received, n int) time.Duration {
	t.Helper()
	require.Len(t, got, n, "%s missed events", client)
	var slowest time.Duration
	for seq, r := range got {
		fields := strings.SplitN(r.data, " ", 3)
		require.Len(t, fields, 3, "%s: event %q", client, r.data)
		require.Equal(t, strconv.Itoa(seq), fields[0], "%s: events out of order", client)
		sent, err := strconv.ParseInt(fields[1], 10, 64)
		require.NoError(t, err)
		slowest = max(slowest, r.at.Sub(time.Unix(0, sent)))
	}
	return slowest
}

// Connections that never finish their request cost the server only until
// read_header: whether the client sends half a request and hangs up, sends
// half and resets, sends half and falls silent, sends nothing, or trickles
// its headers a byte at a time. Meanwhile a stream keeps getting its events,
// and afterwards the server holds nothing of theirs and counted none of
// them as a client.
func TestClientsThatSendHalfARequestAndVanishLeaveNothing(t *testing.T) {
	ts := startCaddy(t, `{
	{GLOBAL}
	servers {
		timeouts {
			read_header 500ms
		}
	}
}
:{HTTP} {
	sse_broadcast chaos
}`)
	warmUp(t, ts, "/")
	normal := openStream(t, nil, ts.url("/"))
	require.Eventually(t, func() bool { return ts.stats().Clients == 1 }, awaitTimeout, 5*time.Millisecond)
	base := measureHeld(t)

	half := "GET / HTTP/1.1\r\nHost: " + ts.http + "\r\nAccept: text/event-stream\r\n" // no blank line
	const each = 25
	dial := func() *net.TCPConn {
		conn, err := net.Dial("tcp", ts.http)
		require.NoError(t, err)
		t.Cleanup(func() { conn.Close() })
		return conn.(*net.TCPConn)
	}
	var lingering []net.Conn // connections the server must end
	for range each {
		// Half a request, then a hang-up (FIN).
		conn := dial()
		_, err := io.WriteString(conn, half)
		require.NoError(t, err)
		require.NoError(t, conn.Close())

		// Half a request, then a reset (RST).
		conn = dial()
		_, err = io.WriteString(conn, half)
		require.NoError(t, err)
		require.NoError(t, conn.SetLinger(0))
		require.NoError(t, conn.Close())

		// Half a request, then silence.
		conn = dial()
		_, err = io.WriteString(conn, half)
		require.NoError(t, err)
		lingering = append(lingering, conn)

		// Silence from the start.
		lingering = append(lingering, dial())
	}
	// Headers that never end, a byte every 50ms, until the server cuts
	// the connection.
	var tricklers sync.WaitGroup
	for range each {
		conn := dial()
		lingering = append(lingering, conn)
		tricklers.Go(func() {
			tick := time.NewTicker(50 * time.Millisecond)
			defer tick.Stop()
			request := half + "X-Slowly: "
			for i := 0; ; i++ {
				b := byte('a')
				if i < len(request) {
					b = request[i]
				}
				if _, err := conn.Write([]byte{b}); err != nil {
					return // the server closed it
				}
				<-tick.C
			}
		})
	}

	// While the server holds all of them, the stream is served.
	res := ts.mustBroadcast(`{"channel":"chaos","data":"while they linger"}`)
	ev := normal.next()
	assert.Equal(t, "while they linger", ev.Data)
	assert.Equal(t, res.ID, ev.LastEventID)

	for _, conn := range lingering {
		awaitServerClose(t, conn, "never finished its request")
	}
	tricklers.Wait()
	ts.mustBroadcast(`{"channel":"chaos","data":"after they left"}`)
	assert.Equal(t, "after they left", normal.next().Data)

	st := ts.stats()
	assert.Equal(t, 1, st.Clients, "only the stream is a client")
	assert.Equal(t, map[string]int{"chaos": 1}, channelClients(st))
	assert.Zero(t, st.Rejected)
	assert.Zero(t, st.Disconnects)

	for _, conn := range lingering {
		conn.Close()
	}
	base.awaitBackTo(t, 0)
}

// channelClients maps each channel in st to its clients.
func channelClients(st Stats) map[string]int {
	clients := make(map[string]int, len(st.Channels))
	for name, ch := range st.Channels {
		clients[name] = ch.Clients
	}
	return clients
}

// A peer that vanishes without a FIN or a RST (its host lost power, its
// network went away) leaves a half-open connection: no hang-up ever
// arrives, and the server's bytes stop being acknowledged. Its stream is
// ended within write_timeout of its writes stalling, and counted; the
// server lets go of its end of the connection though the peer never
// closes its own, and the other clients get every event meanwhile.
//
// Loopback cannot lose packets, so the vanished peer is modelled by a
// client that stops reading with the smallest receive window and never
// closes: to the server it is the same (writes stop making progress, no
// FIN, no RST, no error), save that the kernel answers the server's
// window probes where a vanished host would not answer at all, which the
// server cannot see. (An idle stream to a vanished peer is another matter:
// its keep-alives fit the send buffer, so no write stalls, and only the
// user timeout on its socket ends it; loopback cannot show that, and
// halfopen_linux_test.go tests it with peers that vanish for real.)
func TestHalfOpenConnectionsAreReaped(t *testing.T) {
	ts := startCaddy(t, `{
	{GLOBAL}
}
:{HTTP} {
	sse_broadcast chaos {
		write_timeout 500ms
		send_buffer 16KiB
		max_queue 1000000
		max_queue_bytes 1GiB
	}
}`)
	const writeTimeout = 500 * time.Millisecond
	warmUp(t, ts, "/")
	const healthy, vanished = 3, 10
	streams := make([]*stream, healthy)
	for i := range streams {
		streams[i] = openStream(t, nil, ts.url("/"))
	}
	require.Eventually(t, func() bool { return ts.stats().Clients == healthy }, awaitTimeout, 5*time.Millisecond)
	base := measureHeld(t)

	for range vanished {
		conn := dialTinyWindow(t, ts.http)
		_, err := io.WriteString(conn, streamRequest(ts.http, "/"))
		require.NoError(t, err)
		// The stream opens; then the peer is gone for good.
		require.NoError(t, conn.SetReadDeadline(time.Now().Add(awaitTimeout)))
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		require.NoError(t, err)
		require.Equal(t, http.StatusOK, resp.StatusCode)
	}
	require.Eventually(t, func() bool { return ts.stats().Clients == healthy+vanished }, awaitTimeout, 5*time.Millisecond)

	results := make([]<-chan []received, healthy)
	for i, s := range streams {
		results[i] = s.collectUntilEnd()
	}
	started := time.Now()
	publisher := publishSteadily(t, "chaos", 2*time.Millisecond, 2<<10)
	require.Eventually(t, func() bool {
		st := ts.stats()
		return st.Clients == healthy && st.Disconnects.WriteTimeout == vanished
	}, awaitTimeout, 5*time.Millisecond, "stats: %+v", ts.stats())
	reaped := time.Since(started)
	// Filling the buffers takes milliseconds at this rate: the rest is
	// the write timeout, and the margin is the race detector's.
	t.Logf("%d half-open peers reaped %s after publishing began (write_timeout %s)", vanished, reaped, writeTimeout)
	assert.Less(t, reaped, writeTimeout+2*time.Second, "half-open peers must be reaped within write_timeout of their writes stalling")
	assert.Zero(t, ts.stats().Disconnects.Slow)

	published := publisher.stop(t)
	for i, result := range results {
		requireEveryEvent(t, fmt.Sprintf("client %d", i), <-result, published)
	}
	base.awaitBackTo(t, vanished)
}

// A client that reads one byte a second, from the first byte of the
// response on, holds no one back: under a steady stream of events the
// other clients get every event in order and each well within
// write_timeout, which they would wait for if the slow client held a
// writer; the slow client is disconnected as slow or for its write timeout,
// whichever bound it meets first, and counted; and the server lets go of
// its end of the connection though the client keeps reading.
func TestAClientReadingOneByteASecondHoldsNoOneBack(t *testing.T) {
	ts := startCaddy(t, `{
	{GLOBAL}
}
:{HTTP} {
	sse_broadcast chaos {
		write_timeout 2s
		send_buffer 16KiB
	}
}`)
	const writeTimeout = 2 * time.Second
	warmUp(t, ts, "/")
	const healthy = 5
	streams := make([]*stream, healthy)
	for i := range streams {
		streams[i] = openStream(t, nil, ts.url("/"))
	}
	require.Eventually(t, func() bool { return ts.stats().Clients == healthy }, awaitTimeout, 5*time.Millisecond)
	base := measureHeld(t)

	slow := dialTinyWindow(t, ts.http)
	_, err := io.WriteString(slow, streamRequest(ts.http, "/"))
	require.NoError(t, err)
	var (
		mu       sync.Mutex
		slowRead []byte
	)
	stopReading, readerDone := make(chan struct{}), make(chan struct{})
	stopSlowReader := sync.OnceFunc(func() {
		close(stopReading)
		<-readerDone
	})
	t.Cleanup(stopSlowReader)
	go func() {
		defer close(readerDone)
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		var one [1]byte
		for {
			select {
			case <-stopReading:
				return
			case <-tick.C:
			}
			if err := slow.SetReadDeadline(time.Now().Add(awaitTimeout)); err != nil {
				return
			}
			n, err := slow.Read(one[:])
			mu.Lock()
			slowRead = append(slowRead, one[:n]...)
			mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	require.Eventually(t, func() bool { return ts.stats().Clients == healthy+1 }, awaitTimeout, 5*time.Millisecond)

	results := make([]<-chan []received, healthy)
	for i, s := range streams {
		results[i] = s.collectUntilEnd()
	}
	publisher := publishSteadily(t, "chaos", 2*time.Millisecond, 1<<10)
	require.Eventually(t, func() bool {
		st := ts.stats()
		return st.Clients == healthy && st.Disconnects.Slow+st.Disconnects.WriteTimeout == 1
	}, awaitTimeout, 5*time.Millisecond, "stats: %+v", ts.stats())
	published := publisher.stop(t)

	var slowest time.Duration
	for i, result := range results {
		slowest = max(slowest, requireEveryEvent(t, fmt.Sprintf("client %d", i), <-result, published))
	}
	t.Logf("%d events; slowest delivery to the clients that keep up: %s", published, slowest)
	assert.Less(t, slowest, writeTimeout, "a client waited on the slow one")

	stopSlowReader()
	mu.Lock()
	read := string(slowRead)
	mu.Unlock()
	require.NotEmpty(t, read, "the slow client read nothing")
	assert.True(t, strings.HasPrefix("HTTP/1.1 200 OK\r\n", read), "the slow client read %q", read)

	st := ts.stats()
	assert.Equal(t, uint64(1), st.Disconnects.Slow+st.Disconnects.WriteTimeout, "disconnects: %+v", st.Disconnects)
	t.Logf("the slow client read %q before it was disconnected (%+v)", read, st.Disconnects)
	base.awaitBackTo(t, 1)
}

// A flood of stream requests over max_clients, all at once, is refused
// (these requests accept text/event-stream, as EventSource's do: each gets
// a stream that sets a retry and ends), and counted; the clients already
// in get every event published during the flood; afterwards the server
// holds nothing of the refused requests, and the limit still counts right:
// a place that frees up is taken by the next client, and only it.
// Both limits are tried: the handler's and the app's.
func TestAFloodOverMaxClientsIsRefusedAndOthersKeepBeingServed(t *testing.T) {
	for _, limit := range []struct{ name, caddyfile string }{
		{"the handler's max_clients", `{
	{GLOBAL}
}
:{HTTP} {
	sse_broadcast chaos {
		max_clients 50
		retry 2s
	}
}`},
		{"the app's max_clients", `{
	{GLOBAL}
	sse {
		max_clients 50
	}
}
:{HTTP} {
	sse_broadcast chaos {
		retry 2s
	}
}`},
	} {
		t.Run(limit.name, func(t *testing.T) {
			ts := startCaddy(t, limit.caddyfile)
			warmUp(t, ts, "/")
			const admitted, flood = 50, 500
			streams := make([]*stream, admitted)
			for i := range streams {
				streams[i] = openStream(t, nil, ts.url("/"))
			}
			require.Eventually(t, func() bool { return ts.stats().Clients == admitted }, awaitTimeout, 5*time.Millisecond)
			base := measureHeld(t)

			results := make([]<-chan []received, admitted)
			for i, s := range streams {
				results[i] = s.collectUntilEnd()
			}
			publisher := publishSteadily(t, "chaos", time.Millisecond, 256)

			type refusal struct {
				answer streamAnswer
				err    error
			}
			// Each attempt must be answered, but not within awaitTimeout:
			// on a busy machine a burst of connections can overflow the
			// kernel's loopback queue (netdev_max_backlog), and TCP's
			// retransmissions back off (1s, 2s, 4s...) without the server
			// being at fault.
			const floodTimeout = 3 * awaitTimeout
			refusals := make(chan refusal, flood)
			start := make(chan struct{})
			var attempts sync.WaitGroup
			for range flood {
				attempts.Go(func() {
					<-start
					answer, err := tryStream(ts.http, "/", floodTimeout)
					refusals <- refusal{answer, err}
				})
			}
			close(start)
			attempts.Wait()
			close(refusals)
			var failures []error
			for r := range refusals {
				if r.err != nil {
					failures = append(failures, r.err)
					continue
				}
				require.Equal(t, http.StatusOK, r.answer.status, "body %q", r.answer.body)
				m := refusalBody.FindStringSubmatch(r.answer.body)
				require.NotNil(t, m, "a refusal stream; got %q", r.answer.body)
				require.Equal(t, "too many clients", m[1])
				retry, _ := strconv.Atoi(m[2])
				require.True(t, retry >= 1000 && retry < 3000, "retry %d ms: the handler's 2 s, jittered", retry)
			}
			require.Empty(t, failures, "%d of %d requests got no answer", len(failures), flood)
			st := ts.stats()
			assert.Equal(t, uint64(flood), st.Rejected)
			assert.Equal(t, admitted, st.Clients)

			published := publisher.stop(t)
			for i, result := range results {
				requireEveryEvent(t, fmt.Sprintf("client %d", i), <-result, published)
			}
			t.Logf("%d events published during the flood reached all %d clients", published, admitted)
			base.awaitBackTo(t, 0)

			// The limit lost no place and gained none.
			streams[0].close()
			require.Eventually(t, func() bool { return ts.stats().Clients == admitted-1 }, awaitTimeout, 5*time.Millisecond)
			streams[0] = openStream(t, nil, ts.url("/"))
			r, err := tryStream(ts.http, "/", awaitTimeout)
			require.NoError(t, err)
			assert.Regexp(t, refusalBody, r.body)
			st = ts.stats()
			assert.Equal(t, admitted, st.Clients)
			assert.Equal(t, uint64(flood+1), st.Rejected)
		})
	}
}

// streamAnswer is the server's answer to a stream request; body is read
// only from a refusal.
type streamAnswer struct {
	status     int
	retryAfter string
	body       string
}

// tryStream sends one stream request on a connection of its own and
// returns the answer, within timeout; a stream that opens is closed after
// its headers, and a refusal (a 503, or a refusal stream, which has a
// length) is read whole. An error says which step failed, on which connection, and
// when.
func tryStream(addr, path string, timeout time.Duration) (r streamAnswer, err error) {
	began := time.Now()
	conn, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return r, fmt.Errorf("dialing, after %s: %w", time.Since(began), err)
	}
	defer conn.Close()
	failed := func(step string, err error) error {
		return fmt.Errorf("%s %s, %s after dialing: %w", step, conn.LocalAddr(), time.Since(began), err)
	}
	if err := conn.SetDeadline(time.Now().Add(timeout)); err != nil {
		return r, failed("setting a deadline on", err)
	}
	if _, err := io.WriteString(conn, streamRequest(addr, path)); err != nil {
		return r, failed("sending the request on", err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return r, failed("reading the answer's headers on", err)
	}
	defer resp.Body.Close()
	r.status, r.retryAfter = resp.StatusCode, resp.Header.Get("Retry-After")
	if resp.StatusCode == http.StatusOK && resp.ContentLength < 0 {
		return r, nil
	}
	body, err := io.ReadAll(resp.Body)
	r.body = string(body)
	if err != nil {
		return r, failed("reading the answer's body on", err)
	}
	return r, nil
}
