package ssebroadcast

// Tests of how a stream request over a limit is refused: an EventSource
// gets an answer it survives (a stream that sets a retry and ends), any
// other client 503 with Retry-After, and both are counted.

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	sse "github.com/tmaxmax/go-sse"
)

const refusalCaddyfile = `{
	{GLOBAL}
	sse {
		max_clients 3
		max_channels 2
	}
}
:{HTTP} {
	route /limited {
		sse_broadcast {
			max_clients 1
			retry 2s
			keepalive off
		}
	}
	route /open {
		sse_broadcast {query.channel} {
			keepalive off
		}
	}
}`

// eventSourceAccept is the Accept header every EventSource sends.
var eventSourceAccept = http.Header{"Accept": {"text/event-stream"}}

// refusalBody is a refusal stream: a comment that says why, a retry, and
// nothing else.
var refusalBody = regexp.MustCompile(`\A: (.+): try again later\nretry: (\d+)\n\n\z`)

// awaitRefusalStream opens url as an EventSource would and requires a
// refusal stream for reason, which ends at once, and returns its retry.
func awaitRefusalStream(t *testing.T, url, reason string) time.Duration {
	t.Helper()
	s := openStreamWithHeader(t, url, eventSourceAccept)
	assert.Equal(t, "text/event-stream", s.resp.Header.Get("Content-Type"))
	assert.Equal(t, "no-cache", s.resp.Header.Get("Cache-Control"))
	select {
	case <-s.ended:
	case <-time.After(time.Second):
		require.FailNow(t, "the refusal stream did not end at once", "it had read %q", s.raw.String())
	}
	raw := s.raw.String()
	assert.EqualValues(t, len(raw), s.resp.ContentLength, "a refusal stream has a length, so that it ends on every protocol")
	m := refusalBody.FindStringSubmatch(raw)
	require.NotNil(t, m, "a refusal stream is a comment and a retry; got %q", raw)
	assert.Equal(t, reason, m[1])
	for ev := range s.events {
		assert.Empty(t, ev.Data, "a refusal stream carries no event")
	}
	ms, err := strconv.Atoi(m[2])
	require.NoError(t, err)
	return time.Duration(ms) * time.Millisecond
}

// awaitRefusal503 requires that a request to url with header gets 503 with
// Retry-After, as every client but an EventSource does.
func awaitRefusal503(t *testing.T, url string, header http.Header, wantRetryAfter, reason string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	require.NoError(t, err)
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := plainClient.Do(req)
	require.NoError(t, err)
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.NoError(t, err)
	assert.Equal(t, http.StatusServiceUnavailable, resp.StatusCode, "%s with %v", url, header)
	assert.Equal(t, wantRetryAfter, resp.Header.Get("Retry-After"))
	assert.Contains(t, string(body), reason)
}

func TestAnEventSourceOverALimitGetsAStreamThatSetsAJitteredRetryAndEnds(t *testing.T) {
	ts := startCaddy(t, refusalCaddyfile)
	requireWithin := func(retry, backoff time.Duration) {
		t.Helper()
		assert.GreaterOrEqual(t, retry, backoff/2, "the retry is the backoff, jittered by at most half")
		assert.Less(t, retry, backoff*3/2, "the retry is the backoff, jittered by at most half")
	}
	curl := http.Header{"Accept": {"*/*"}}

	// The handler's max_clients: the backoff is its retry.
	openStream(t, nil, ts.url("/limited"))
	requireWithin(awaitRefusalStream(t, ts.url("/limited"), "too many clients"), 2*time.Second)
	awaitRefusal503(t, ts.url("/limited"), nil, "2", "too many clients")
	awaitRefusal503(t, ts.url("/limited"), curl, "2", "too many clients")

	// The app's max_channels: "default" and "a" exist. The handler sets no
	// retry: the backoff is 5 s.
	openStream(t, nil, ts.url("/open?channel=a"))
	requireWithin(awaitRefusalStream(t, ts.url("/open?channel=b"), "too many channels: 2 channels exist, the sse app's max_channels"), 5*time.Second)
	awaitRefusal503(t, ts.url("/open?channel=b"), nil, "5", "too many channels")

	// The app's max_clients, over all handlers.
	openStream(t, nil, ts.url("/open?channel=a"))
	requireWithin(awaitRefusalStream(t, ts.url("/open?channel=a"), "too many clients"), 5*time.Second)
	awaitRefusal503(t, ts.url("/open?channel=a"), curl, "5", "too many clients")

	st := ts.stats()
	assert.Equal(t, 3, st.Clients, "a refusal holds no place")
	assert.Equal(t, uint64(7), st.Rejected, "refusals are counted in either form: three streams, four 503s")
}

// Refused clients come back spread over the backoff, not together: the
// retries that 200 refusals carry vary, within the jitter's range.
func TestRefusalRetriesAreSpreadOverTheJittersRange(t *testing.T) {
	ts := startCaddy(t, refusalCaddyfile)
	openStream(t, nil, ts.url("/limited"))
	const refusals = 40
	low, high := time.Duration(1<<62), time.Duration(0)
	for range refusals {
		retry := awaitRefusalStream(t, ts.url("/limited"), "too many clients")
		low, high = min(low, retry), max(high, retry)
	}
	assert.GreaterOrEqual(t, low, time.Second)
	assert.Less(t, high, 3*time.Second)
	// Uniform over 2 s: 40 draws span less than 1 s with odds of about
	// 40 × 2^-39.
	assert.Greater(t, high-low, time.Second, "retries from %s to %s", low, high)
}

// The refusal's body has a length: the response ends where the body does,
// and the HTTP/1.1 connection carries the next request, which a browser's
// reconnect may use.
func TestARefusalStreamEndsItsResponseAndKeepsTheConnection(t *testing.T) {
	ts := startCaddy(t, refusalCaddyfile)
	openStream(t, nil, ts.url("/limited"))

	conn, err := net.Dial("tcp", ts.http)
	require.NoError(t, err)
	defer conn.Close()
	reader := bufio.NewReader(conn)
	for i := range 2 {
		_, err := fmt.Fprintf(conn, "GET /limited HTTP/1.1\r\nHost: %s\r\nAccept: text/event-stream\r\n\r\n", ts.http)
		require.NoError(t, err)
		require.NoError(t, conn.SetReadDeadline(time.Now().Add(awaitTimeout)))
		resp, err := http.ReadResponse(reader, nil)
		require.NoError(t, err, "response %d", i)
		body, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		resp.Body.Close()
		assert.Equal(t, http.StatusOK, resp.StatusCode)
		assert.Empty(t, resp.TransferEncoding, "not chunked")
		assert.False(t, resp.Close, "the connection stays open")
		assert.Regexp(t, refusalBody, string(body))
	}
}

// Only a request that names text/event-stream in its Accept header, as
// EventSource does, gets the refusal stream: the header may be a list, over
// several lines, in any case, with parameters. Wildcards and q=0 do not
// count.
func TestOnlyARequestAcceptingAnEventStreamByNameGetsTheRefusalStream(t *testing.T) {
	ts := startCaddy(t, refusalCaddyfile)
	openStream(t, nil, ts.url("/limited"))
	tests := []struct {
		accept []string
		stream bool
	}{
		{[]string{"text/event-stream"}, true},
		{[]string{"TEXT/Event-Stream"}, true},
		{[]string{"text/html, text/event-stream;q=0.9"}, true},
		{[]string{"text/event-stream; charset=utf-8"}, true},
		{[]string{"application/json", "text/event-stream"}, true},
		{[]string{"text/event-stream;q=0"}, false},
		{[]string{"text/event-stream;q=0.0, */*"}, false},
		{[]string{"*/*"}, false},
		{[]string{"text/*"}, false},
		{[]string{"application/json"}, false},
		{[]string{""}, false},
		{nil, false},
	}
	for _, tt := range tests {
		req, err := http.NewRequest(http.MethodGet, ts.url("/limited"), nil)
		require.NoError(t, err)
		if tt.accept != nil {
			req.Header["Accept"] = tt.accept
		}
		resp, err := plainClient.Do(req)
		require.NoError(t, err)
		_, err = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		require.NoError(t, err)
		want := http.StatusServiceUnavailable
		if tt.stream {
			want = http.StatusOK
		}
		assert.Equal(t, want, resp.StatusCode, "Accept: %q", tt.accept)
	}
}

// go-sse's client, like EventSource, gives up on a 503 and reconnects after
// a stream that ends: refused, it waits the retry it was given, and once
// the place is free it connects and receives events.
func TestAnSSEClientRefusedOverMaxClientsComesBackOnceThePlaceIsFree(t *testing.T) {
	ts := startCaddy(t, `{
	{GLOBAL}
}
:{HTTP} {
	sse_broadcast {
		channel live
		max_clients 1
		retry 200ms
		keepalive off
		greeting
	}
}`)
	holder := openStream(t, nil, ts.url("/"))

	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, ts.url("/"), nil)
	require.NoError(t, err)
	retries := make(chan time.Duration, 100)
	connected := make(chan struct{}, 1)
	received := make(chan string, 10)
	client := &sse.Client{
		HTTPClient: plainClient,
		// Without growth, and with as little jitter of its own as it takes
		// (its -1 for none is replaced by its default of 0.5), the client
		// waits the retry the server sent.
		Backoff: sse.Backoff{InitialInterval: time.Minute, Multiplier: 1, Jitter: 0.001},
		OnRetry: func(_ error, next time.Duration) {
			select {
			case retries <- next:
			default:
			}
		},
	}
	conn := client.NewConnection(req)
	conn.SubscribeEvent("connected", func(sse.Event) { connected <- struct{}{} })
	conn.SubscribeMessages(func(ev sse.Event) {
		if ev.Data != "" {
			received <- ev.Data
		}
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

	select {
	case next := <-retries:
		assert.GreaterOrEqual(t, next, 99*time.Millisecond, "the client waits the refusal's retry")
		assert.Less(t, next, 301*time.Millisecond, "the client waits the refusal's retry")
	case <-time.After(awaitTimeout):
		require.FailNow(t, "the refused client did not retry")
	}
	require.GreaterOrEqual(t, ts.stats().Rejected, uint64(1))

	holder.close()
	select {
	case <-connected: // the greeting of a stream that holds the place
	case <-time.After(awaitTimeout):
		require.FailNow(t, "the refused client never connected once the place was free")
	}
	ts.mustBroadcast(`{"channel":"live","data":"welcome"}`)
	select {
	case data := <-received:
		assert.Equal(t, "welcome", data)
	case <-time.After(awaitTimeout):
		require.FailNow(t, "the client that came back received nothing")
	}
}

// A page refused over max_clients (another client holds the only place)
// is not lost, as it would be after a 503: its EventSource reconnects by
// itself after the refusal's retry, again and again, and once the place is
// free it connects and receives what is published.
func TestABrowserRefusedOverMaxClientsConnectsByItselfOnceThePlaceIsFree(t *testing.T) {
	caddyfile := "{\n\t{GLOBAL}\n}\n" + demoSiteWith(":{HTTP}", "max_clients 1")
	ts := startCaddy(t, caddyfile)
	holder := openStream(t, nil, ts.url("/events"))
	ctx := startBrowser(t)
	_, err := chromedp.Run(ctx, chromedp.Navigate(ts.url("/")))
	require.NoError(t, err)

	// The demo's retry is 200 ms: refused, the page comes back every
	// 100 to 300 ms.
	require.Eventually(t, func() bool { return ts.stats().Rejected >= 3 }, awaitTimeout, 10*time.Millisecond,
		"the page was not refused, or did not come back after a refusal")
	refused := evaluate[demoState](t, ctx, `window.demo`)
	assert.Empty(t, refused.ClientID, "the refused page has no stream")
	assert.Equal(t, 1, ts.stats().Clients)

	holder.close()
	st := awaitPage(t, ctx, "connected once the place was free", func(st demoState) bool { return st.ClientID != "" })
	res := ts.mustBroadcast(`{"channel":"demo","data":"welcome"}`)
	st = awaitPage(t, ctx, "received the event", func(st demoState) bool { return len(st.Received) == 1 })
	// The event's type is the demo site's business.
	assert.Equal(t, res.ID, st.Received[0].ID)
	assert.Equal(t, "welcome", st.Received[0].Data)
	// Each refusal is a stream that opened and ended: the page saw an
	// open for each, and one for the stream it holds.
	assert.Greater(t, st.Opens, 3, "the page reconnected by itself after each refusal")
	assert.Equal(t, 1, ts.stats().Clients)
}
