package ssebroadcast

// The soak test: many connect/disconnect cycles, then many events to many
// clients, after which the process's RSS, goroutines and open files are
// back at their baseline (RSS checked without the race detector only).
// Skipped with -short; its size is set by flags, so that a longer run is
// one command:
//
//	go test -run TestSoak -soak.cycles 10000 -soak.clients 1000 -soak.events 100000 -timeout 2h .

import (
	"bufio"
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var (
	soakCycles  = flag.Int("soak.cycles", 10000, "connect/disconnect cycles of the soak test")
	soakClients = flag.Int("soak.clients", 1000, "clients of the soak test's event phase")
	soakEvents  = flag.Int("soak.events", 1000, "events published to every client in the soak test")
)

// rssKiB returns this process's resident memory after giving back what the
// heap does not use, so that what is measured is what is still held.
func rssKiB(t *testing.T) int64 {
	t.Helper()
	runtime.GC()
	debug.FreeOSMemory()
	status, err := os.ReadFile("/proc/self/status")
	require.NoError(t, err)
	for line := range strings.Lines(string(status)) {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kib, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			require.NoError(t, err)
			return kib
		}
	}
	require.FailNow(t, "no VmRSS in /proc/self/status")
	return 0
}

func TestSoakReturnsToBaseline(t *testing.T) {
	if testing.Short() {
		t.Skip("the soak test is long; skipped with -short")
	}
	ts := startCaddy(t, `{
	{GLOBAL}
}
:{HTTP} {
	sse_broadcast {query.channel} {
		keepalive off
	}
}`)
	// Warm-up, so that lazily started parts count in the baseline.
	dialRawStream(t, ts.http, "/?channel=warm").conn.Close()
	require.Eventually(t, func() bool { return ts.stats().Clients == 0 }, awaitTimeout, 5*time.Millisecond)
	base := measureHeld(t)
	var baseRSS int64
	if !raceEnabled {
		baseRSS = rssKiB(t)
	}

	// Phase 1: connect and disconnect, eight at a time, over a few channels.
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < *soakCycles; i += 8 {
				rs := dialRawStream(t, ts.http, fmt.Sprintf("/?channel=c%d", i%16))
				rs.conn.Close()
			}
		}()
	}
	wg.Wait()

	// Phase 2: every client receives every event, counted from the wire.
	clients := make([]*rawStream, *soakClients)
	for i := range clients {
		clients[i] = dialRawStream(t, ts.http, "/?channel=soak")
	}
	require.Eventually(t, func() bool { return ts.stats().Channels["soak"].Clients == *soakClients },
		awaitTimeout, 10*time.Millisecond)
	for _, rs := range clients {
		// The readers wait for as long as the events take.
		require.NoError(t, rs.conn.SetReadDeadline(time.Time{}))
	}
	counts := make([]int, len(clients))
	for i, rs := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			lines := bufio.NewReader(rs.resp.Body)
			for counts[i] < *soakEvents {
				line, err := lines.ReadSlice('\n')
				if err != nil {
					return
				}
				if bytes.HasPrefix(line, []byte("data: ")) {
					counts[i]++
				}
			}
		}()
	}
	payload := strings.Repeat("x", 100)
	batch := make([]string, 0, 100)
	for published := 0; published < *soakEvents; {
		batch = batch[:0]
		for ; len(batch) < cap(batch) && published < *soakEvents; published++ {
			batch = append(batch, `{"channel":"soak","data":"`+payload+`"}`)
		}
		ts.mustBroadcastBatch("[" + strings.Join(batch, ",") + "]")
	}
	wg.Wait()
	for i, n := range counts {
		require.Equal(t, *soakEvents, n, "client %d", i)
	}
	assert.Zero(t, ts.stats().Disconnects.Slow, "no client fell behind")
	for _, rs := range clients {
		rs.conn.Close()
	}

	require.Eventually(t, func() bool {
		st := ts.stats()
		return st.Clients == 0 && len(st.Channels) <= 17 // the soak channel and c0..c15 keep their replay windows
	}, awaitTimeout, 10*time.Millisecond)
	base.awaitBackTo(t, 0)
	if raceEnabled {
		// The race detector's shadow memory is never given back: the
		// RSS is checked by the runs without it (the command above).
		t.Log("RSS not checked under the race detector")
		return
	}
	// What stays is the replay windows (up to 1,000 events of the soak
	// channel) and the heap's own bookkeeping, not the clients.
	rss := rssKiB(t)
	t.Logf("RSS %d KiB before, %d KiB after %d cycles and %d events to %d clients", baseRSS, rss, *soakCycles, *soakEvents, *soakClients)
	assert.Less(t, rss-baseRSS, int64(32<<10), "RSS grew by %d KiB", rss-baseRSS)
}

// mustBroadcastBatch publishes a batch and fails the test unless it went.
func (ts *testServer) mustBroadcastBatch(body string) []Result {
	ts.t.Helper()
	resp := ts.broadcast(body)
	require.Equal(ts.t, http.StatusOK, resp.status, "broadcast answer: %s", resp.body)
	var res []Result
	require.NoError(ts.t, json.Unmarshal(resp.body, &res))
	return res
}
