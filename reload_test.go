package ssebroadcast

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	sse "github.com/tmaxmax/go-sse"
)

// reloadingCaddyfile is the config the reload test switches between; each
// variant changes the handler's options.
func reloadingCaddyfile(keepalive string, maxQueue int) string {
	return fmt.Sprintf(`{
	{GLOBAL}
}
:{HTTP} {
	sse_broadcast {
		channel live
		retry 20ms
		keepalive %s
		max_queue %d
	}
}`, keepalive, maxQueue)
}

// browserLikeClient reconnects by itself after the server's retry delay and
// sends Last-Event-ID when it does, as EventSource does; it is go-sse's
// client, not ours.
type browserLikeClient struct {
	mu   sync.Mutex
	data []string
	done chan struct{} // closed when the "end" event arrives
}

func connectBrowserLike(t *testing.T, url string) *browserLikeClient {
	t.Helper()
	c := &browserLikeClient{done: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	require.NoError(t, err)
	client := &sse.Client{
		HTTPClient: plainClient,
		Backoff:    sse.Backoff{InitialInterval: 20 * time.Millisecond, Multiplier: 1, Jitter: 0.5},
	}
	conn := client.NewConnection(req)
	conn.SubscribeToAll(func(ev sse.Event) {
		if ev.Type == "" && ev.Data == "" {
			// go-sse also dispatches a block that only sets retry, which
			// the HTML spec (and browsers) do not: this test publishes no
			// empty event, so such a block is the stream's opening retry.
			return
		}
		if ev.Type == "end" {
			close(c.done)
			return
		}
		c.mu.Lock()
		c.data = append(c.data, ev.Data)
		c.mu.Unlock()
	})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		_ = conn.Connect()
	}()
	t.Cleanup(func() {
		cancel()
		<-stopped
	})
	return c
}

func TestReloadsLoseNoEventForReconnectingClients(t *testing.T) {
	ts := startCaddy(t, reloadingCaddyfile("15s", 1024))
	const clients = 50
	browsers := make([]*browserLikeClient, clients)
	for i := range browsers {
		browsers[i] = connectBrowserLike(t, ts.url("/"))
	}
	require.Eventually(t, func() bool { return ts.stats().Clients == clients }, awaitTimeout, 5*time.Millisecond)

	// A publisher sends an event every 10 ms while the config is reloaded
	// five times, each time with other handler options.
	const events = 300
	variants := []string{
		reloadingCaddyfile("1s", 1024),
		reloadingCaddyfile("1s", 2048),
		reloadingCaddyfile("500ms", 512),
		reloadingCaddyfile("15s", 4096),
		reloadingCaddyfile("15s", 1024),
	}
	ticker := time.NewTicker(10 * time.Millisecond)
	defer ticker.Stop()
	for i := 1; i <= events; i++ {
		<-ticker.C
		ts.mustBroadcast(fmt.Sprintf(`{"channel":"live","data":"%d"}`, i))
		if i%50 == 0 && i/50 <= len(variants) {
			ts.load(variants[i/50-1])
		}
	}
	ts.mustBroadcast(`{"channel":"live","event":"end","data":"end"}`)

	want := numbers(1, events)
	for i, b := range browsers {
		select {
		case <-b.done:
		case <-time.After(awaitTimeout):
			require.FailNowf(t, "client did not finish", "client %d", i)
		}
		b.mu.Lock()
		assert.Equal(t, want, b.data, "client %d must have every event exactly once, in order", i)
		b.mu.Unlock()
	}
	assert.GreaterOrEqual(t, ts.stats().Disconnects.Shutdown, uint64(5*clients), "each reload ends every open stream")

	stopped := make(chan error, 1)
	go func() { stopped <- caddy.Stop() }()
	select {
	case err := <-stopped:
		require.NoError(t, err)
	case <-time.After(2 * time.Second):
		require.FailNow(t, "stopping after the reloads waited on open streams")
	}
}
