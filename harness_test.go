package ssebroadcast

// The test harness: a real Caddy, in this process, loaded from a Caddyfile;
// real HTTP connections; and streams read by a third-party SSE parser
// (github.com/tmaxmax/go-sse) alongside their raw bytes.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddy-sse/ssebroadcast/internal/sockets"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
	"github.com/stretchr/testify/require"
	sse "github.com/tmaxmax/go-sse"
	"go.uber.org/goleak"
)

// awaitTimeout bounds every wait for something the server must do; it is a
// deadline for failure, never a delay the tests sleep through.
const awaitTimeout = 10 * time.Second

func TestMain(m *testing.M) {
	code := m.Run()
	if binaryDir != "" {
		os.RemoveAll(binaryDir)
	}
	if code == 0 {
		// Whatever a single test's check could not see: goroutines of
		// streams, clients or servers that outlived every test.
		if err := goleak.Find(caddyProcessGoroutines...); err != nil {
			fmt.Fprintf(os.Stderr, "goroutines left behind after all tests: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

// plainClient makes a new connection for each request, so that no idle
// connection outlives a test and hides or fakes a leak.
var plainClient = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}

// testServer is an in-process Caddy with its HTTP and admin addresses.
type testServer struct {
	t     testing.TB
	http  string // host:port of the site
	admin string // host:port of the admin endpoint
}

// freeAddrs returns n distinct loopback addresses whose ports were free a
// moment ago; holding each listener until all are chosen keeps the kernel
// from handing out one port twice.
func freeAddrs(t testing.TB, n int) []string {
	t.Helper()
	addrs := make([]string, n)
	for i := range addrs {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		defer ln.Close()
		addrs[i] = ln.Addr().String()
	}
	return addrs
}

// newTestServer picks the addresses of an in-process Caddy.
func newTestServer(t testing.TB) *testServer {
	addrs := freeAddrs(t, 2)
	return &testServer{t: t, http: addrs[0], admin: addrs[1]}
}

// startCaddy loads a Caddyfile into the process's Caddy and stops it when the
// test ends. In the Caddyfile, {ADMIN} and {HTTP} stand for free ports, and
// the global options block must start with {GLOBAL}, which adds what every
// test server needs.
func startCaddy(t testing.TB, caddyfile string) *testServer {
	t.Helper()
	ts := newTestServer(t)
	ts.load(caddyfile)
	t.Cleanup(func() {
		require.NoError(t, caddy.Stop())
		checkNoLeaks(t)
	})
	return ts
}

// load adapts and loads a Caddyfile, as a reload does when Caddy runs, and
// waits until the old config's sockets are closed, so that a test's next
// connection cannot be queued on one that closes (see package sockets).
func (ts *testServer) load(caddyfile string) {
	ts.t.Helper()
	cfgJSON := ts.adapt(caddyfile)
	require.NoError(ts.t, caddy.Load(cfgJSON, true), "loading config")
	ts.awaitOldSocketsClosed()
}

// awaitOldSocketsClosed waits until a reload's old sockets have closed.
func (ts *testServer) awaitOldSocketsClosed() {
	ts.t.Helper()
	sockets.AwaitSingleListener(ts.t, awaitTimeout, ts.http, ts.admin)
}

func (ts *testServer) adapt(caddyfile string) []byte {
	ts.t.Helper()
	_, httpPort, _ := net.SplitHostPort(ts.http)
	global := fmt.Sprintf("admin %s\n\tpersist_config off", ts.admin)
	caddyfile = strings.NewReplacer("{GLOBAL}", global, "{HTTP}", httpPort).Replace(caddyfile)
	cfgJSON, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(caddyfile), map[string]any{"filename": "Caddyfile"})
	require.NoError(ts.t, err, "adapting Caddyfile")
	for _, w := range warnings {
		// Test Caddyfiles are written inline; their layout is not under test.
		if !strings.Contains(w.Message, "not formatted") {
			ts.t.Errorf("adapting Caddyfile: warning: %s", w)
		}
	}
	return cfgJSON
}

func (ts *testServer) url(path string) string { return "http://" + ts.http + path }

// apiResponse is an admin API answer.
type apiResponse struct {
	status int
	header http.Header
	body   []byte
}

// errorMessage returns the "error" member of a JSON error answer.
func (r apiResponse) errorMessage(t testing.TB) string {
	t.Helper()
	var body struct {
		Error string `json:"error"`
	}
	require.NoError(t, json.Unmarshal(r.body, &body), "error answer %q is not JSON", r.body)
	require.NotEmpty(t, body.Error, "error answer %q has no message", r.body)
	return body.Error
}

// adminRequest sends a request to the admin endpoint, as a script would.
//
// Each config load replaces Caddy's admin server, and the old one closes
// connections it accepted but had not begun to serve; a script sees that as
// a connection error with no answer, and the request was not processed, so
// it is sent again.
func (ts *testServer) adminRequest(method, path, contentType string, body []byte) apiResponse {
	ts.t.Helper()
	return ts.request(plainClient, method, "http://"+ts.admin+path, contentType, body)
}

// request sends a request to url with client, and sends it again while it
// fails at the connection, unanswered (see adminRequest).
func (ts *testServer) request(client *http.Client, method, url, contentType string, body []byte) apiResponse {
	ts.t.Helper()
	var lastErr error
	for range 50 {
		req, err := http.NewRequest(method, url, bytes.NewReader(body))
		require.NoError(ts.t, err)
		if contentType != "" {
			req.Header.Set("Content-Type", contentType)
		}
		resp, err := client.Do(req)
		if err != nil {
			lastErr = err
			time.Sleep(10 * time.Millisecond) // backoff before a retry, not synchronisation
			continue
		}
		defer resp.Body.Close()
		respBody, err := io.ReadAll(resp.Body)
		require.NoError(ts.t, err)
		return apiResponse{status: resp.StatusCode, header: resp.Header, body: respBody}
	}
	require.FailNow(ts.t, "server unreachable", "%s %s: %v", method, url, lastErr)
	return apiResponse{}
}

// broadcast posts a JSON body to /sse/broadcast.
func (ts *testServer) broadcast(body string) apiResponse {
	ts.t.Helper()
	return ts.adminRequest(http.MethodPost, "/sse/broadcast", "application/json", []byte(body))
}

// mustBroadcast posts one event and requires the API to accept it.
func (ts *testServer) mustBroadcast(body string) Result {
	ts.t.Helper()
	resp := ts.broadcast(body)
	require.Equal(ts.t, http.StatusOK, resp.status, "broadcast answer: %s", resp.body)
	var res Result
	require.NoError(ts.t, json.Unmarshal(resp.body, &res))
	return res
}

func (ts *testServer) stats() Stats {
	ts.t.Helper()
	resp := ts.adminRequest(http.MethodGet, "/sse/stats", "", nil)
	require.Equal(ts.t, http.StatusOK, resp.status, "stats answer: %s", resp.body)
	var st Stats
	require.NoError(ts.t, json.Unmarshal(resp.body, &st))
	return st
}

// stream is one open text/event-stream, read by go-sse's parser while its
// raw bytes are kept for byte-exact checks.
type stream struct {
	t      testing.TB
	resp   *http.Response
	cancel context.CancelFunc
	events chan sse.Event
	raw    *watchedBuffer
	ended  chan struct{} // closed when the server ends the stream
	quit   chan struct{} // closed when the test leaves the stream

	closeOnce sync.Once
}

// openStream connects to url and waits until the server has subscribed the
// client, which it shows by writing the stream's first bytes.
func openStream(t testing.TB, client *http.Client, url string) *stream {
	t.Helper()
	s := dialStream(t, client, url)
	require.Equal(t, http.StatusOK, s.resp.StatusCode)
	s.raw.awaitContains(t, "\n\n")
	return s
}

// dialStream connects to url without waiting for anything.
func dialStream(t testing.TB, client *http.Client, url string) *stream {
	t.Helper()
	if client == nil {
		client = plainClient
	}
	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	require.NoError(t, err)
	// Right after a config load, a connection can reach the old server as
	// it closes and end unanswered; a browser reconnects, and so do we.
	var resp *http.Response
	for range 50 {
		if resp, err = client.Do(req); err == nil {
			break
		}
		time.Sleep(10 * time.Millisecond) // backoff before a retry, not synchronisation
	}
	if err != nil {
		cancel()
		require.NoError(t, err)
	}
	s := &stream{
		t:      t,
		resp:   resp,
		cancel: cancel,
		events: make(chan sse.Event, 1024),
		raw:    newWatchedBuffer(),
		ended:  make(chan struct{}),
		quit:   make(chan struct{}),
	}
	go func() {
		defer close(s.ended)
		defer close(s.events)
		for ev, err := range sse.Read(io.TeeReader(resp.Body, s.raw), nil) {
			if err != nil {
				return
			}
			select {
			case s.events <- ev:
			case <-s.quit:
				return
			}
		}
	}()
	t.Cleanup(s.close)
	return s
}

// close leaves the stream, as a client that goes away does.
func (s *stream) close() {
	s.closeOnce.Do(func() { close(s.quit) })
	s.cancel()
	s.resp.Body.Close()
	<-s.ended
}

// next returns the next event the parser read.
func (s *stream) next() sse.Event {
	s.t.Helper()
	select {
	case ev, ok := <-s.events:
		require.True(s.t, ok, "stream ended while awaiting an event; it had read %q", s.raw.String())
		return ev
	case <-time.After(awaitTimeout):
		require.FailNow(s.t, "no event arrived", "the stream had read %q", s.raw.String())
		return sse.Event{}
	}
}

// awaitEnd waits until the server ends the stream.
func (s *stream) awaitEnd() {
	s.t.Helper()
	select {
	case <-s.ended:
	case <-time.After(awaitTimeout):
		require.FailNow(s.t, "the server did not end the stream")
	}
}

// watchedBuffer is a byte buffer that can be awaited for content.
type watchedBuffer struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	changed chan struct{} // closed and replaced on every write
}

func newWatchedBuffer() *watchedBuffer {
	return &watchedBuffer{changed: make(chan struct{})}
}

func (b *watchedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	n, err := b.buf.Write(p)
	close(b.changed)
	b.changed = make(chan struct{})
	return n, err
}

func (b *watchedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// awaitContains waits until the buffer holds substr, and returns its content.
func (b *watchedBuffer) awaitContains(t testing.TB, substr string) string {
	t.Helper()
	return b.awaitCount(t, substr, 1)
}

// awaitCount waits until substr occurs n times in the buffer.
func (b *watchedBuffer) awaitCount(t testing.TB, substr string, n int) string {
	t.Helper()
	deadline := time.After(awaitTimeout)
	for {
		b.mu.Lock()
		content, changed := b.buf.String(), b.changed
		b.mu.Unlock()
		if strings.Count(content, substr) >= n {
			return content
		}
		select {
		case <-changed:
		case <-deadline:
			require.FailNowf(t, "stream content not seen", "awaited %d× %q; the stream had read %q", n, substr, content)
		}
	}
}

// checkNoLeaks fails the test if a goroutine outlived the config that
// started it, Caddy's own process-wide ones aside.
func checkNoLeaks(t testing.TB) {
	t.Helper()
	require.NoError(t, goleak.Find(caddyProcessGoroutines...), "goroutines left behind")
}

// caddyProcessGoroutines are the goroutines that Caddy keeps for the whole
// process, whatever config runs: they are not the module's to end.
var caddyProcessGoroutines = []goleak.Option{
	// The admin endpoint serves until the next config replaces it.
	goleak.IgnoreAnyFunction("github.com/caddyserver/caddy/v2.replaceLocalAdminServer.func2"),
	// Storage locks are refreshed while the process lives.
	goleak.IgnoreTopFunction("github.com/caddyserver/certmagic.keepLockfileFresh"),
	goleak.IgnoreAnyFunction("github.com/caddyserver/certmagic.keepLockfileFresh"),
}
