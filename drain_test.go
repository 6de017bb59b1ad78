package ssebroadcast

// Tests of the drain: a reload ends the old config's streams spread over
// the handler's drain window, each receiving every event until it ends,
// while a stop ends every stream at once.

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// drainCaddyfile serves /live, whose streams receive the published events,
// and /quiet, whose streams receive only keep-alives, both with the drain
// window given, over HTTP/1.1 and h2c.
func drainCaddyfile(window string) string {
	return fmt.Sprintf(`{
	{GLOBAL}
	servers {
		protocols h1 h2c
	}
}
:{HTTP} {
	route /live {
		sse_broadcast {
			channel live
			drain %s
		}
	}
	route /quiet {
		sse_broadcast {
			channel quiet
			keepalive 100ms
			drain %s
		}
	}
}`, window, window)
}

// h2cClient makes HTTP/2 requests over cleartext, all on one connection.
// When the test ends it closes the connection, and waits for a server that
// began to shut down while it was open, and so waits for it, to finish.
func h2cClient(t *testing.T) *http.Client {
	h2c := new(http.Protocols)
	h2c.SetUnencryptedHTTP2(true)
	var mu sync.Mutex
	var conns []net.Conn
	transport := &http.Transport{
		Protocols: h2c,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			conn, err := new(net.Dialer).DialContext(ctx, network, addr)
			if err == nil {
				mu.Lock()
				conns = append(conns, conn)
				mu.Unlock()
			}
			return conn, err
		},
	}
	t.Cleanup(func() {
		// A connection whose streams were just closed may not be idle
		// yet: close it under the transport.
		transport.CloseIdleConnections()
		mu.Lock()
		for _, conn := range conns {
			conn.Close()
		}
		mu.Unlock()
		awaitServerShutdowns(t)
	})
	return &http.Client{Transport: transport}
}

// endWatch records when each of a set of streams ends.
type endWatch struct {
	mu   sync.Mutex
	at   map[*stream]time.Time
	done sync.WaitGroup
}

func watchEnds(streams []*stream) *endWatch {
	w := &endWatch{at: make(map[*stream]time.Time)}
	for _, s := range streams {
		w.done.Add(1)
		go func() {
			defer w.done.Done()
			<-s.ended
			w.mu.Lock()
			w.at[s] = time.Now()
			w.mu.Unlock()
		}()
	}
	return w
}

// await waits until every stream has ended.
func (w *endWatch) await(t *testing.T, within time.Duration) {
	t.Helper()
	all := make(chan struct{})
	go func() {
		w.done.Wait()
		close(all)
	}()
	select {
	case <-all:
	case <-time.After(within):
		w.mu.Lock()
		ended := len(w.at)
		w.mu.Unlock()
		require.FailNowf(t, "streams outlived their bound", "%d ended within %s", ended, within)
	}
}

// published is an event the test published: its data, its id, and when its
// publish returned.
type published struct {
	data, id string
	at       time.Time
}

func TestAReloadEndsStreamsSpreadOverTheDrainWindowAndLosesNoEvent(t *testing.T) {
	const window = 3 * time.Second
	caddyfile := drainCaddyfile(window.String())
	ts := startCaddy(t, caddyfile)

	// 200 HTTP/1.1 streams, taken over from the server, and 10 over h2c,
	// which stay with it, on one connection; and 10 quiet ones.
	var live, quiet []*stream
	for range 200 {
		live = append(live, openStream(t, nil, ts.url("/live")))
	}
	h2c := h2cClient(t)
	for range 10 {
		s := openStream(t, h2c, ts.url("/live"))
		require.Equal(t, 2, s.resp.ProtoMajor)
		live = append(live, s)
	}
	for range 10 {
		quiet = append(quiet, openStream(t, nil, ts.url("/quiet")))
	}
	all := append(slices.Clone(live), quiet...)
	ends := watchEnds(all)
	require.Eventually(t, func() bool { return ts.stats().Clients == len(all) }, awaitTimeout, 5*time.Millisecond)

	// An event every 20 ms, from before the reload until after the
	// window and the bound on the last writes have passed.
	cfgJSON := ts.adapt(caddyfile)
	var events []published
	var reloadBegan time.Time
	var quietBefore []int
	reloaded := make(chan error, 1)
	var shutdownEnded <-chan time.Time
	var fresh *stream
	ticker := time.NewTicker(20 * time.Millisecond)
	defer ticker.Stop()
	for i := 1; reloadBegan.IsZero() || time.Since(reloadBegan) < window+1500*time.Millisecond; i++ {
		<-ticker.C
		res := ts.mustBroadcast(fmt.Sprintf(`{"channel":"live","data":"%d"}`, i))
		events = append(events, published{data: fmt.Sprint(i), id: res.ID, at: time.Now()})
		switch {
		case i == 10:
			for _, s := range quiet {
				quietBefore = append(quietBefore, len(s.raw.String()))
			}
			reloadBegan = time.Now()
			go func() { reloaded <- caddy.Load(cfgJSON, true) }()
		case i == 20:
			require.NoError(t, <-reloaded)
			ts.awaitOldSocketsClosed()
			// The old server's shutdown is under way; it waits for its
			// HTTP/2 connection.
			shutdownEnded = watchServerShutdowns()
			// The new config serves new streams, and does not drain them.
			fresh = openStream(t, nil, ts.url("/live"))
		}
	}
	ends.await(t, awaitTimeout)
	shutDown := <-shutdownEnded
	t.Logf("the old server's shutdown ended %s after the reload began", shutDown.Sub(reloadBegan))
	assert.Less(t, shutDown.Sub(reloadBegan), window+time.Second+shutdownAfterLastStream, "the old server's shutdown waits on the drain, and no longer")

	var offsets []time.Duration
	var thirds [3]int
	for _, s := range all {
		offset := ends.at[s].Sub(reloadBegan)
		offsets = append(offsets, offset)
		thirds[min(int(offset/(window/3)), 2)]++
	}
	slices.Sort(offsets)
	t.Logf("%d streams ended from %s to %s after the reload began; by thirds of the window %v; median %s",
		len(offsets), offsets[0], offsets[len(offsets)-1], thirds, offsets[len(offsets)/2])
	assert.LessOrEqual(t, offsets[len(offsets)-1], window+time.Second, "no stream outlives the window by more than a second")
	assert.Greater(t, offsets[len(offsets)-1]-offsets[0], 2*window/3, "the ends are spread over the window, not bunched")
	for i, n := range thirds {
		assert.Greater(t, n, len(all)/6, "each third of the window ends its share of the streams (third %d)", i+1)
	}

	for i, s := range live {
		var got []string
		for ev := range s.events {
			got = append(got, ev.Data)
		}
		require.Equal(t, numbers(1, len(got)), got, "stream %d: every event until it ended, in order, once", i)
		// Every event published before the stream ended reached it; the
		// margin covers the moment between the server's end of the
		// stream and the client seeing it.
		for _, ev := range events {
			if ev.at.Before(ends.at[s].Add(-300 * time.Millisecond)) {
				require.Contains(t, got, ev.data, "stream %d, which ended %s after the reload began", i, ends.at[s].Sub(reloadBegan))
			}
		}
		// It resumes on the new config, with the id of the last event it
		// got, and gets the rest: nothing lost overall.
		header := http.Header{}
		if len(got) > 0 {
			header.Set("Last-Event-Id", events[len(got)-1].id)
		}
		resumed := openStreamWithHeader(t, ts.url("/live"), header)
		if rest := len(events) - len(got); rest > 0 {
			assert.Equal(t, numbers(len(got)+1, len(events)), resumed.readData(rest), "stream %d resumed", i)
		}
		resumed.close()
	}

	// Keep-alives go on while a stream drains.
	for i, s := range quiet {
		if ends.at[s].Sub(reloadBegan) > 500*time.Millisecond {
			assert.Contains(t, s.raw.String()[quietBefore[i]:], ": keep-alive\n\n", "quiet stream %d, draining for %s",
				i, ends.at[s].Sub(reloadBegan))
		}
	}

	select {
	case <-fresh.ended:
		assert.Fail(t, "the reload's drain ended a stream of the new config")
	default:
	}
	assert.Equal(t, uint64(len(all)), ts.stats().Disconnects.Shutdown, "each drained stream counted once, as ended by the shutdown")
}

func TestAStopEndsStreamsAtOnceWhateverTheDrain(t *testing.T) {
	ts := startCaddy(t, drainCaddyfile("10s"))
	var streams []*stream
	for range 20 {
		streams = append(streams, openStream(t, nil, ts.url("/live")))
	}
	h2c := h2cClient(t)
	for range 5 {
		streams = append(streams, openStream(t, h2c, ts.url("/live")))
	}
	ts.mustBroadcast(`{"channel":"live","data":"before stop"}`)
	ends := watchEnds(streams)

	start := time.Now()
	stopped := make(chan error, 1)
	go func() { stopped <- caddy.Stop() }()
	select {
	case err := <-stopped:
		require.NoError(t, err)
	case <-time.After(2 * time.Second):
		require.FailNow(t, "stopping Caddy waited on the drain")
	}
	ends.await(t, 2*time.Second-time.Since(start))
	for _, s := range streams {
		assert.Equal(t, "before stop", s.next().Data, "events published before the stop arrive")
	}
}

// Caddy stopping during a reload's drain ends the draining streams at
// once, not at their moments.
func TestAStopDuringADrainEndsTheDrainingStreamsAtOnce(t *testing.T) {
	caddyfile := drainCaddyfile("10s")
	ts := startCaddy(t, caddyfile)
	var streams []*stream
	for range 20 {
		streams = append(streams, openStream(t, nil, ts.url("/live")))
	}
	h2c := h2cClient(t)
	for range 5 {
		streams = append(streams, openStream(t, h2c, ts.url("/live")))
	}
	ends := watchEnds(streams)
	ts.load(caddyfile)
	// Draining: over 10 s, 25 streams end one every 400 ms or so.
	ts.mustBroadcast(`{"channel":"live","data":"while draining"}`)
	open := ts.stats().Clients
	require.Greater(t, open, 15, "the reload ended the streams at once")

	start := time.Now()
	require.NoError(t, caddy.Stop())
	ends.await(t, 2*time.Second-time.Since(start))
	received := 0
	for _, s := range streams {
		for ev := range s.events {
			assert.Equal(t, "while draining", ev.Data)
			received++
		}
	}
	assert.GreaterOrEqual(t, received, open, "the draining streams received the event published during the drain")
}

// A reload ends at once the streams of a handler without a drain (the
// default), and drains those of a handler with one.
func TestAReloadEndsAtOnceTheStreamsOfAHandlerWithoutADrain(t *testing.T) {
	caddyfile := strings.Replace(drainCaddyfile("10s"), "keepalive 100ms\n\t\t\tdrain 10s", "keepalive 100ms", 1)
	require.NotEqual(t, drainCaddyfile("10s"), caddyfile)
	ts := startCaddy(t, caddyfile)
	var draining []*stream
	for range 4 {
		draining = append(draining, openStream(t, nil, ts.url("/live")))
	}
	immediate := openStream(t, nil, ts.url("/quiet"))

	start := time.Now()
	ts.load(caddyfile)
	immediate.awaitEnd()
	require.Less(t, time.Since(start), 2500*time.Millisecond, "the test was too slow to tell")
	// Four streams over 10 s: one ends in each 2.5 s, and at most one
	// has by now.
	res := ts.mustBroadcast(`{"channel":"live","data":"still here"}`)
	receiving := 0
	for _, s := range draining {
		if ev, ok := <-s.events; ok {
			assert.Equal(t, "still here", ev.Data)
			assert.Equal(t, res.ID, ev.LastEventID)
			receiving++
		}
	}
	assert.GreaterOrEqual(t, receiving, 3, "the draining streams stay, and receive")
}

// A client that stopped reading holds its drained stream up for at most a
// second past the stream's moment, as it would a stop, whatever the
// timeouts; the drain then ends, and with it the old server's shutdown.
func TestAStalledStreamEndsWithinASecondOfTheDrainWindow(t *testing.T) {
	const window = time.Second
	caddyfile := func(takeover string) string { return unboundedStallCaddyfile(takeover, "drain "+window.String()) }
	stalls := []struct {
		name     string
		takeover string
		stall    func(t *testing.T, ts *testServer)
	}{
		{"HTTP/1.1 taken over", "on", func(t *testing.T, ts *testServer) { stalledClient(t, ts.http, "/") }},
		{"HTTP/1.1 kept by the server", "off", func(t *testing.T, ts *testServer) { stalledClient(t, ts.http, "/") }},
		{"HTTP/2", "on", func(t *testing.T, ts *testServer) {
			conn := dialRawH2(t, ts.http, 0)
			require.Equal(t, "200", <-conn.get(1, "/", false).status)
		}},
	}
	for _, tt := range stalls {
		t.Run(tt.name, func(t *testing.T) {
			ts := startCaddy(t, caddyfile(tt.takeover))
			tt.stall(t, ts)
			require.Eventually(t, func() bool { return ts.stats().Clients == 1 }, awaitTimeout, 5*time.Millisecond)
			// Far more than the socket buffers and windows hold: the
			// stream's write blocks.
			payload := strings.Repeat("x", 64<<10)
			for range 32 {
				ts.mustBroadcast(fmt.Sprintf(`{"data":%q}`, payload))
			}

			began := time.Now()
			ts.load(caddyfile(tt.takeover))
			require.Eventually(t, func() bool { return ts.stats().Clients == 0 }, awaitTimeout, 5*time.Millisecond)
			ended := time.Since(began)
			assert.Less(t, ended, window+time.Second+500*time.Millisecond, "the drain window and the bound on the last write")
			assert.Equal(t, uint64(1), ts.stats().Disconnects.Shutdown, "counted as ended by the shutdown")
			shutDown := awaitServerShutdowns(t)
			t.Logf("the stalled stream ended %s after the reload began, and the old server's shutdown %s", ended, time.Since(began))
			assert.Less(t, shutDown.Sub(began), window+time.Second+shutdownAfterLastStream, "the old server's shutdown waits on the drain, and no longer")
		})
	}
}

// shutdownAfterLastStream bounds how long a server's shutdown may take once
// its last stream has ended: an HTTP/2 connection, which got GOAWAY at the
// reload, closes a second after its last stream, and net/http's Shutdown
// looks for closed connections every half second; the rest is leeway.
const shutdownAfterLastStream = 2 * time.Second

// serverShuttingDown reports whether an HTTP server's Shutdown is under way
// in the process: waiting for its connections to close.
func serverShuttingDown() bool {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			return bytes.Contains(buf[:n], []byte("net/http.(*Server).Shutdown("))
		}
		buf = make([]byte, 2*len(buf))
	}
}

// awaitServerShutdowns waits until no HTTP server's Shutdown is under way,
// and returns when that was seen.
func awaitServerShutdowns(t *testing.T) time.Time {
	t.Helper()
	require.Eventually(t, func() bool { return !serverShuttingDown() }, awaitTimeout, 10*time.Millisecond,
		"a server's shutdown is still waiting for its connections")
	return time.Now()
}

// watchServerShutdowns tells when no HTTP server's Shutdown is under way
// any more, looking every 50 ms (each look stops the world for a moment),
// for at most awaitTimeout.
func watchServerShutdowns() <-chan time.Time {
	ended := make(chan time.Time, 1)
	go func() {
		for deadline := time.Now().Add(awaitTimeout); serverShuttingDown() && time.Now().Before(deadline); {
			time.Sleep(50 * time.Millisecond) // the interval between looks, not synchronisation
		}
		ended <- time.Now()
	}()
	return ended
}

func TestANegativeDrainFailsTheLoad(t *testing.T) {
	_, err := loadJSON(t, map[string]any{"drain": "-1s"}, nil)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "drain must not be negative, got -1s")
}

// `caddy stop` ends at once the streams a reload is draining, and the new
// config's own. The streams here stay with the server (takeover off): the
// old server's shutdown waits for them, and an exiting Caddy waits for the
// old server's shutdown.
func TestCaddyStopDuringADrainIsPromptWithAThousandOpenStreams(t *testing.T) {
	p := startCaddyProcess(t, strings.Replace(processCaddyfile, "keepalive off", "keepalive off\n\t\tdrain 10s\n\t\ttakeover off", 1))
	streams := make([]*stream, 1000)
	for i := range streams {
		streams[i] = openStream(t, nil, p.url("/"))
	}
	ts := &testServer{t: t, admin: p.admin}
	require.Equal(t, 1000, ts.stats().Clients)
	_, stderr, err := p.command("", "reload", "--config", p.caddyfile, "--adapter", "caddyfile", "--address", p.admin, "--force")
	require.NoError(t, err, "stderr: %s", stderr)
	for range 10 {
		streams = append(streams, openStream(t, nil, p.url("/")))
	}
	require.Greater(t, ts.stats().Clients, 900, "the reload drains its streams over 10 s")
	ends := watchEnds(streams)

	start := time.Now()
	p.stop()
	elapsed := time.Since(start)
	assert.NoError(t, p.exitStatus)
	assert.Less(t, elapsed, 2*time.Second, "caddy stop during a drain took %s", elapsed)
	ends.await(t, time.Second)
}
