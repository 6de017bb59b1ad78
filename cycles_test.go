package ssebroadcast

import (
	"os"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// openFiles counts this process's open file descriptors.
func openFiles(t *testing.T) int {
	t.Helper()
	entries, err := os.ReadDir("/proc/self/fd")
	require.NoError(t, err)
	return len(entries)
}

// A client's resources are released when it leaves: after many connect and
// disconnect cycles, goroutines and open files are back where they started.
func TestConnectDisconnectCyclesReleaseEverything(t *testing.T) {
	if testing.Short() {
		t.Skip("10,000 cycles; skipped with -short")
	}
	ts := startCaddy(t, `{
	{GLOBAL}
}
:{HTTP} {
	sse_broadcast {query.channel}
}`)
	// One warm-up cycle, so that lazily started goroutines are counted in
	// the baseline.
	openStream(t, nil, ts.url("/?channel=warm")).close()
	require.Eventually(t, func() bool { return ts.stats().Clients == 0 }, awaitTimeout, 5*time.Millisecond)
	base := measureHeld(t)

	const cycles, workers = 10000, 8
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < cycles; i += workers {
				// A few channels, so that channels come and go too.
				s := dialStream(t, nil, ts.url("/?channel=c"+string(rune('a'+i%4))))
				s.raw.awaitContains(t, "\n\n")
				s.close()
			}
		}()
	}
	wg.Wait()

	require.Eventually(t, func() bool {
		st := ts.stats()
		return st.Clients == 0 && len(st.Channels) == 0
	}, awaitTimeout, 10*time.Millisecond, "the server must notice every client left")
	base.awaitBackTo(t, 0)
}
