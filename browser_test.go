package ssebroadcast

// End-to-end tests in a real browser: headless Chromium, driven with
// chromedp, loads the demo page from Caddy, and the page's EventSource is
// the client under test.

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// startBrowser starts headless Chromium with a fresh profile and returns a
// context for driving one tab; the browser exits when the test ends.
func startBrowser(t *testing.T, flags ...chromedp.ExecAllocatorOption) context.Context {
	t.Helper()
	path, err := exec.LookPath("chromium")
	require.NoError(t, err, "the browser tests need Chromium: apt-get install chromium (.ci/run installs it)")
	opts := append([]chromedp.ExecAllocatorOption{
		chromedp.ExecPath(path),
		chromedp.Flag("headless", true),
		chromedp.Flag("no-sandbox", true),
		chromedp.Flag("disable-gpu", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("no-first-run", true),
		chromedp.UserDataDir(t.TempDir()),
	}, flags...)
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(allocCtx)
	t.Cleanup(func() {
		cancel()
		cancelAlloc()
	})
	_, err = chromedp.Run(ctx, chromedp.Navigate("about:blank"))
	require.NoError(t, err, "starting Chromium")
	return ctx
}

// demoState is what the demo page records in window.demo.
type demoState struct {
	ClientID string        `json:"clientId"`
	Opens    int           `json:"opens"`
	Received []pageEvent   `json:"received"`
	Resets   []resetNotice `json:"resets"`
}

type pageEvent struct {
	Type string `json:"type"`
	ID   string `json:"id"`
	Data string `json:"data"`
}

// evaluate runs expression in the page and returns its value.
func evaluate[T any](t *testing.T, ctx context.Context, expression string) T {
	t.Helper()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expression))
	require.NoError(t, err, "evaluating %s", expression)
	return v
}

// awaitPage waits until the demo page's state satisfies cond.
func awaitPage(t *testing.T, ctx context.Context, what string, cond func(demoState) bool) demoState {
	t.Helper()
	var st demoState
	require.Eventually(t, func() bool {
		st = evaluate[demoState](t, ctx, `window.demo`)
		return cond(st)
	}, awaitTimeout, 20*time.Millisecond, "the page never %s; it had %+v", what, st)
	return st
}

// demoSite serves the demo page and its streams, as Caddyfile.example does,
// with a short retry so that reconnects come quickly.
func demoSite(address string) string {
	return demoSiteWith(address, "")
}

// demoSiteWith is demoSite with more options for the page's stream.
func demoSiteWith(address, streamOptions string) string {
	demoDir, _ := filepath.Abs("demo")
	return address + ` {
	route /events {
		sse_broadcast {
			channel demo announcements
			retry 200ms
			greeting
			name_by_channel
			` + streamOptions + `
		}
	}
	route /topics {
		sse_broadcast topic-{query.topic}
	}
	root * ` + demoDir + `
	file_server
}`
}

// The demo page's EventSource receives named events, multi-line data and
// unicode; when the server drops its stream, by a forced disconnect and by
// a config reload, the browser reconnects by itself after retry, sends
// Last-Event-ID, and ends with every event exactly once, in order.
func TestBrowserReceivesEveryEventOnceThroughDisconnectsAndReloads(t *testing.T) {
	t.Run("HTTP/1.1", func(t *testing.T) {
		caddyfile := "{\n\t{GLOBAL}\n}\n" + demoSite(":{HTTP}")
		ts := startCaddy(t, caddyfile)
		ctx := startBrowser(t)
		browseDemo(t, ts, ctx, ts.url("/"), "http/1.1", caddyfile)
	})
	t.Run("HTTP/2", func(t *testing.T) {
		caddyfile := tlsGlobals + demoSite("https://127.0.0.1:{HTTP}")
		ts := startCaddy(t, caddyfile)
		ctx := startBrowser(t, acceptCertificateOf(t, ts.http))
		browseDemo(t, ts, ctx, "https://"+ts.http+"/", "h2", caddyfile)
	})
}

// A page whose stream stays quiet, over HTTP/2, for longer than the
// stream's write_timeout keeps its stream: no reset, no reconnect, the same
// client, and the next event arrives on it.
func TestABrowsersQuietHTTP2StreamOutlivesItsWriteTimeout(t *testing.T) {
	const writeTimeout = 300 * time.Millisecond
	caddyfile := tlsGlobals + demoSiteWith("https://127.0.0.1:{HTTP}", fmt.Sprintf("write_timeout %s\n\t\t\tkeepalive off", writeTimeout))
	ts := startCaddy(t, caddyfile)
	ctx := startBrowser(t, acceptCertificateOf(t, ts.http))
	_, err := chromedp.Run(ctx, chromedp.Navigate("https://"+ts.http+"/"))
	require.NoError(t, err)
	require.Equal(t, "h2", evaluate[string](t, ctx, `performance.getEntriesByType("navigation")[0].nextHopProtocol`))
	first := awaitPage(t, ctx, "got its greeting", func(st demoState) bool { return st.ClientID != "" })

	// The silence under test: five write timeouts without a byte.
	time.Sleep(5 * writeTimeout)

	res := ts.mustBroadcast(`{"channel":"demo","data":"after the silence"}`)
	last := awaitPage(t, ctx, "received the event", func(st demoState) bool { return len(st.Received) == 1 })
	assert.Equal(t, []pageEvent{{Type: "demo", ID: res.ID, Data: "after the silence"}}, last.Received)
	assert.Equal(t, 1, last.Opens, "the page never reconnected")
	assert.Equal(t, first.ClientID, last.ClientID, "the same client, on the same stream")
	assert.Zero(t, ts.stats().Disconnects.WriteTimeout)
}

// A page away for longer than the replay window holds is told so: its
// EventSource reconnects by itself, receives a reset (which leaves its
// lastEventId alone) and then what is kept.
func TestABrowserPageIsToldWhenHistoryCannotFillItsGap(t *testing.T) {
	caddyfile := "{\n\t{GLOBAL}\n\tsse {\n\t\treplay 2\n\t}\n}\n" + demoSiteWith(":{HTTP}", "")
	// The page comes back after its retry of 200 ms; publishing while it is
	// away takes far less.
	ts := startCaddy(t, caddyfile)
	ctx := startBrowser(t)
	_, err := chromedp.Run(ctx, chromedp.Navigate(ts.url("/")))
	require.NoError(t, err)
	first := awaitPage(t, ctx, "got its greeting", func(st demoState) bool { return st.ClientID != "" })
	seen := ts.mustBroadcast(`{"channel":"demo","data":"seen"}`)
	awaitPage(t, ctx, "received the first event", func(st demoState) bool { return len(st.Received) == 1 })

	kick := ts.adminRequest(http.MethodDelete, "/sse/clients/"+first.ClientID, "", nil)
	require.Equal(t, http.StatusOK, kick.status, "%s", kick.body)
	require.Eventually(t, func() bool { return ts.stats().Clients == 0 }, awaitTimeout, 2*time.Millisecond)
	var kept []pageEvent
	for i := range 4 {
		res := ts.mustBroadcast(fmt.Sprintf(`{"channel":"announcements","data":"while away %d"}`, i))
		kept = append(kept, pageEvent{Type: "announcements", ID: res.ID, Data: fmt.Sprintf("while away %d", i)})
	}
	kept = kept[2:] // replay 2

	back := awaitPage(t, ctx, "came back", func(st demoState) bool { return len(st.Received) == 3 })
	require.Equal(t, []resetNotice{{Reason: "expired", Channels: []string{"announcements"}}}, back.Resets)
	assert.Equal(t, append([]pageEvent{{Type: "demo", ID: seen.ID, Data: "seen"}}, kept...), back.Received,
		"the reset, then the kept events, named after their channel")
	assert.Equal(t, 2, back.Opens)
	assert.GreaterOrEqual(t, ts.stats().Replayed, uint64(2))
}

// tlsGlobals serves HTTPS with Caddy's internal issuer on a test port.
const tlsGlobals = `{
	{GLOBAL}
	local_certs
	skip_install_trust
	auto_https disable_redirects
}
`

// acceptCertificateOf makes the browser accept the certificate that the
// server at addr presents, and no other: Chromium ignores certificate
// errors only for chains holding one of these public keys.
func acceptCertificateOf(t *testing.T, addr string) chromedp.ExecAllocatorOption {
	t.Helper()
	conn := awaitTLSHandshake(t, addr)
	defer conn.Close()
	var hashes []string
	for _, cert := range conn.ConnectionState().PeerCertificates {
		sum := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
		hashes = append(hashes, base64.StdEncoding.EncodeToString(sum[:]))
	}
	return chromedp.Flag("ignore-certificate-errors-spki-list", strings.Join(hashes, ","))
}

func browseDemo(t *testing.T, ts *testServer, ctx context.Context, pageURL, protocol, caddyfile string) {
	_, err := chromedp.Run(ctx, chromedp.Navigate(pageURL))
	require.NoError(t, err)
	nextHop := evaluate[string](t, ctx, `performance.getEntriesByType("navigation")[0].nextHopProtocol`)
	require.Equal(t, protocol, nextHop, "protocol of the page")
	first := awaitPage(t, ctx, "got its greeting", func(st demoState) bool { return st.ClientID != "" })

	var published []pageEvent
	publish := func(body, eventType, data string) {
		t.Helper()
		res := ts.mustBroadcast(body)
		published = append(published, pageEvent{Type: eventType, ID: res.ID, Data: data})
	}
	awaitAll := func(what string) demoState {
		t.Helper()
		return awaitPage(t, ctx, what, func(st demoState) bool { return len(st.Received) >= len(published) })
	}

	publish(`{"channel":"demo","event":"tick","data":"héllo wörld ✓ 🌍 日本語"}`, "tick", "héllo wörld ✓ 🌍 日本語")
	publish(`{"channel":"demo","data":"line one\nline two\r\nline three\rline four"}`, "demo",
		"line one\nline two\nline three\nline four")
	publish(`{"channel":"announcements","data":"the other channel"}`, "announcements", "the other channel")
	publish(`{"channel":"demo","event":"update","data":{"n":1,"s":"✓"}}`, "update", `{"n":1,"s":"✓"}`)
	awaitAll("received the first events")

	// A forced disconnect: events published while the page is away reach
	// it when it comes back.
	replayedBefore := ts.stats().Replayed
	kick := ts.adminRequest(http.MethodDelete, "/sse/clients/"+first.ClientID, "", nil)
	require.Equal(t, http.StatusOK, kick.status, "%s", kick.body)
	require.Eventually(t, func() bool { return ts.stats().Channels["demo"].Clients == 0 },
		awaitTimeout, 2*time.Millisecond, "the page's stream must end")
	publish(`{"channel":"demo","event":"news","data":"while away 1"}`, "news", "while away 1")
	publish(`{"channel":"demo","data":"while away 2"}`, "demo", "while away 2")
	back := awaitAll("caught up after the forced disconnect")
	assert.GreaterOrEqual(t, back.Opens, 2, "the browser must have reconnected by itself")
	assert.NotEqual(t, first.ClientID, back.ClientID, "a reconnect is a new client")
	assert.GreaterOrEqual(t, ts.stats().Replayed-replayedBefore, uint64(2),
		"the events published while away must come from replay, after the browser sent Last-Event-ID")

	// A config reload ends the stream too.
	ts.load(caddyfile)
	publish(`{"channel":"demo","event":"tick","data":"after reload 1"}`, "tick", "after reload 1")
	publish(`{"channel":"demo","data":"after reload 2"}`, "demo", "after reload 2")
	last := awaitAll("caught up after the reload")
	assert.GreaterOrEqual(t, last.Opens, 3)

	assert.Equal(t, published, last.Received, "every event exactly once, in order")
	assert.Empty(t, last.Resets, "every resume was complete")

	if protocol == "h2" {
		moreThanSixStreams(t, ts, ctx)
	}
}

// One page holds more than six streams over HTTP/2, more than a browser
// opens to one server over HTTP/1.1, and each receives its events.
func moreThanSixStreams(t *testing.T, ts *testServer, ctx context.Context) {
	const topics = 8
	evaluate[bool](t, ctx, fmt.Sprintf(`
		window.multi = { opens: 0, got: {} };
		for (let i = 0; i < %d; i++) {
			const source = new EventSource("/topics?topic=t" + i);
			source.onopen = () => { window.multi.opens++; };
			source.onmessage = (ev) => { window.multi.got["t" + i] = ev.data; };
		}
		true`, topics))
	// The page's own stream and the topics.
	require.Eventually(t, func() bool { return ts.stats().Clients == topics+1 }, awaitTimeout, 10*time.Millisecond)
	for i := range topics {
		ts.mustBroadcast(fmt.Sprintf(`{"channel":"topic-t%d","data":"for t%d"}`, i, i))
	}
	var got map[string]string
	require.Eventually(t, func() bool {
		got = evaluate[map[string]string](t, ctx, `window.multi.got`)
		return len(got) == topics
	}, awaitTimeout, 20*time.Millisecond, "events on %d streams; got %v", topics, got)
	for i := range topics {
		assert.Equal(t, fmt.Sprintf("for t%d", i), got[fmt.Sprintf("t%d", i)])
	}
}

// awaitTLSHandshake returns a TLS connection to addr once the server
// completes a handshake: on a fresh machine Caddy makes its local CA and
// issues the certificate after the config loads, and fails handshakes
// until then.
func awaitTLSHandshake(t *testing.T, addr string) *tls.Conn {
	t.Helper()
	var conn *tls.Conn
	require.Eventually(t, func() bool {
		var err error
		conn, err = tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, ServerName: "127.0.0.1"})
		return err == nil
	}, awaitTimeout, 20*time.Millisecond, "the server never completed a TLS handshake")
	return conn
}
