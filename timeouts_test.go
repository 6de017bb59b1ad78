package ssebroadcast

// Tests that write_timeout bounds a write that stalls, and never a stream
// that is merely quiet, on every protocol; and that a shutdown ends every
// stream within a bound, whatever the timeouts.

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	sse "github.com/tmaxmax/go-sse"
)

// streamProtocols are the ways a client reaches a stream: each HTTP
// version, with the HTTP/1.1 stream taken over or kept by the server.
var streamProtocols = []struct {
	name      string
	tls       bool
	takeover  string // the takeover option
	transport func(t *testing.T) http.RoundTripper
	wantMajor int
}{
	{"HTTP/1.1 taken over", false, "on", overTCP(nil), 1},
	{"HTTP/1.1 kept by the server", false, "off", overTCP(nil), 1},
	{"HTTP/2 over TLS", true, "on", overTCP(protocols(func(p *http.Protocols) { p.SetHTTP2(true) })), 2},
	{"HTTP/2 cleartext", false, "on", overTCP(protocols(func(p *http.Protocols) { p.SetUnencryptedHTTP2(true) })), 2},
	{"HTTP/3", true, "on", overQUIC, 3},
}

func protocols(set func(*http.Protocols)) *http.Protocols {
	p := new(http.Protocols)
	set(p)
	return p
}

// startCaddyOn serves handlerOptions' stream at / over every protocol: the
// site's scheme and address depend on whether the protocol needs TLS.
func startCaddyOn(t *testing.T, withTLS bool, handlerOptions string) (*testServer, string) {
	t.Helper()
	return startCaddyWithServerOn(t, withTLS, "", handlerOptions)
}

// startCaddyWithServerOn is startCaddyOn with more options for the server.
func startCaddyWithServerOn(t *testing.T, withTLS bool, serverOptions, handlerOptions string) (*testServer, string) {
	t.Helper()
	scheme, site := "http", ":{HTTP}"
	if withTLS {
		scheme, site = "https", "https://127.0.0.1:{HTTP}"
	}
	ts := startCaddy(t, `{
	{GLOBAL}
	local_certs
	skip_install_trust
	auto_https disable_redirects
	servers {
		protocols h1 h2 h2c h3
		`+serverOptions+`
	}
}
`+site+` {
	sse_broadcast {
		`+handlerOptions+`
	}
}`)
	if withTLS {
		awaitTLSHandshake(t, ts.http).Close()
	}
	return ts, scheme + "://" + ts.http + "/"
}

// greetingOf reads a stream's greeting and returns the client id it names.
func greetingOf(t *testing.T, s *stream) string {
	t.Helper()
	ev := s.next()
	require.Equal(t, "connected", ev.Type)
	var hello struct{ Client string }
	require.NoError(t, json.Unmarshal([]byte(ev.Data), &hello), "greeting data %q", ev.Data)
	return hello.Client
}

func TestAQuietStreamOutlivesItsWriteTimeoutOnEveryProtocol(t *testing.T) {
	const writeTimeout = 200 * time.Millisecond
	for _, proto := range streamProtocols {
		t.Run(proto.name, func(t *testing.T) {
			ts, url := startCaddyOn(t, proto.tls, fmt.Sprintf(`write_timeout %s
		keepalive off
		greeting
		takeover %s`, writeTimeout, proto.takeover))
			s := openStream(t, &http.Client{Transport: proto.transport(t)}, url)
			require.Equal(t, proto.wantMajor, s.resp.ProtoMajor)
			id := greetingOf(t, s)
			first := ts.mustBroadcast(`{"data":"before the silence"}`)
			require.Equal(t, first.ID, s.next().LastEventID)

			// The silence under test: five write timeouts without a byte.
			time.Sleep(5 * writeTimeout)

			res := ts.mustBroadcast(`{"data":"after the silence"}`)
			ev := s.next()
			assert.Equal(t, "after the silence", ev.Data)
			assert.Equal(t, res.ID, ev.LastEventID)
			clients := ts.clients("")
			require.Len(t, clients.Clients, 1, "the stream was never replaced")
			assert.Equal(t, id, clients.Clients[0].ID, "the same client, on the same stream")
			st := ts.stats()
			assert.Zero(t, st.Disconnects.WriteTimeout, "nothing timed out")
			assert.NotContains(t, strings.TrimPrefix(s.raw.String(), ": open\n\n"), ": open", "no second stream")
		})
	}
}

// Caddy's idle timeouts bound idle connections and stalled transfers, not
// a stream that is quiet: one with nothing to send for longer than every
// one of them keeps its stream, on every protocol.
func TestAQuietStreamOutlivesTheServersIdleTimeoutsOnEveryProtocol(t *testing.T) {
	const timeout = 100 * time.Millisecond
	for _, proto := range streamProtocols {
		t.Run(proto.name, func(t *testing.T) {
			ts, url := startCaddyWithServerOn(t, proto.tls, fmt.Sprintf(`timeouts {
			read_body_idle %[1]s
			read_header %[1]s
			write_idle %[1]s
			idle %[1]s
		}`, timeout), "keepalive off\n\t\tgreeting\n\t\ttakeover "+proto.takeover)
			s := openStream(t, &http.Client{Transport: proto.transport(t)}, url)
			require.Equal(t, proto.wantMajor, s.resp.ProtoMajor)
			id := greetingOf(t, s)

			// The silence under test: longer than every timeout above.
			time.Sleep(6 * timeout)

			res := ts.mustBroadcast(`{"data":"still here"}`)
			ev := s.next()
			assert.Equal(t, "still here", ev.Data)
			assert.Equal(t, res.ID, ev.LastEventID)
			clients := ts.clients("")
			require.Len(t, clients.Clients, 1)
			assert.Equal(t, id, clients.Clients[0].ID, "the same client, on the same stream")
		})
	}
}

// The twin of the quiet stream over HTTP/2: a client whose stream's window
// never opens stalls the stream's writes, which are cut within
// write_timeout, while another stream on the same connection, merely
// quiet for longer than that, keeps receiving.
func TestAStalledHTTP2StreamIsCutAndItsConnectionServesTheOthers(t *testing.T) {
	const writeTimeout = 300 * time.Millisecond
	for _, bound := range []struct{ name, server, handler string }{
		{"write_timeout", "", fmt.Sprintf("write_timeout %s", writeTimeout)},
		// With write_timeout off the server's write_idle bounds the
		// stream's writes, which Caddy's own wrapper no longer does.
		{"write_idle", fmt.Sprintf("timeouts {\n\t\t\twrite_idle %s\n\t\t}", writeTimeout), "write_timeout off"},
	} {
		t.Run(bound.name, func(t *testing.T) {
			ts, _ := startCaddyWithServerOn(t, false, bound.server, bound.handler+"\n\t\tkeepalive off")
			stalledHTTP2StreamIsCut(t, ts, writeTimeout)
		})
	}
}

func stalledHTTP2StreamIsCut(t *testing.T, ts *testServer, writeTimeout time.Duration) {
	conn := dialRawH2(t, ts.http, 0)
	reading := conn.get(1, "/", true)
	require.Equal(t, "200", <-reading.status)
	events := make(chan sse.Event, 16)
	go func() {
		defer close(events)
		for ev, err := range sse.Read(reading.Body, nil) {
			if err != nil {
				return
			}
			events <- ev
		}
	}()
	require.Eventually(t, func() bool { return ts.stats().Clients == 1 }, awaitTimeout, 5*time.Millisecond)

	stalledAt := time.Now()
	stalled := conn.get(3, "/", false) // its window stays shut
	require.Equal(t, "200", <-stalled.status, "headers are not flow-controlled")
	resetAt := stalled.awaitReset(t, awaitTimeout)
	assert.GreaterOrEqual(t, resetAt.Sub(stalledAt), writeTimeout, "cut no sooner than write_timeout")
	require.Eventually(t, func() bool { return ts.stats().Disconnects.WriteTimeout == 1 }, awaitTimeout, 5*time.Millisecond)

	// The reading stream was quiet all along, longer than write_timeout.
	res := ts.mustBroadcast(`{"data":"still here"}`)
	select {
	case ev := <-events:
		assert.Equal(t, "still here", ev.Data)
		assert.Equal(t, res.ID, ev.LastEventID)
	case <-time.After(awaitTimeout):
		require.FailNow(t, "the connection's other stream received nothing")
	}
	assert.Equal(t, 1, ts.stats().Clients)
}

// With write_timeout off and the server's write_idle off, nothing bounds a
// write to a client that stopped reading but a shutdown's own limit: a
// reload ends the stalled stream within it, on every protocol the handler
// serves it with, and nothing is left behind.
func TestAShutdownEndsAStalledStreamWhateverTheTimeouts(t *testing.T) {
	caddyfile := func(takeover string) string { return unboundedStallCaddyfile(takeover, "") }
	stalls := []struct {
		name     string
		takeover string
		stall    func(t *testing.T, ts *testServer) (awaitEnd func())
	}{
		{"HTTP/1.1 taken over", "on", stallHTTP1},
		{"HTTP/1.1 kept by the server", "off", stallHTTP1},
		{"HTTP/2", "on", func(t *testing.T, ts *testServer) func() {
			conn := dialRawH2(t, ts.http, 0)
			s := conn.get(1, "/", false)
			require.Equal(t, "200", <-s.status)
			return func() {
				select {
				case <-s.ended:
				case <-time.After(awaitTimeout):
					require.FailNow(t, "the stalled stream did not end")
				}
			}
		}},
	}
	for _, tt := range stalls {
		t.Run(tt.name, func(t *testing.T) {
			ts := startCaddy(t, caddyfile(tt.takeover))
			awaitEnd := tt.stall(t, ts)
			require.Eventually(t, func() bool { return ts.stats().Clients == 1 }, awaitTimeout, 5*time.Millisecond)
			// Far more than the socket buffers and windows hold: the
			// stream's write blocks.
			payload := strings.Repeat("x", 64<<10)
			for range 32 {
				ts.mustBroadcast(fmt.Sprintf(`{"data":%q}`, payload))
			}

			cfgJSON := ts.adapt(caddyfile(tt.takeover))
			reloaded := make(chan error, 1)
			began := time.Now()
			go func() { reloaded <- caddy.Load(cfgJSON, true) }()
			select {
			case err := <-reloaded:
				require.NoError(t, err)
			case <-time.After(awaitTimeout):
				require.FailNow(t, "the reload waits on the stalled stream")
			}
			ts.awaitOldSocketsClosed()
			awaitEnd()
			require.Eventually(t, func() bool { return ts.stats().Clients == 0 }, awaitTimeout, 5*time.Millisecond)
			t.Logf("the stalled stream ended %s after the reload began", time.Since(began))
			assert.Equal(t, uint64(1), ts.stats().Disconnects.Shutdown, "counted as ended by the shutdown")
		})
	}
}

// unboundedStallCaddyfile serves a stream that nothing but a shutdown bounds:
// write_timeout off, the server's write_idle off, queues far larger than
// the socket buffers; more holds more handler options.
func unboundedStallCaddyfile(takeover, more string) string {
	return `{
	{GLOBAL}
	servers {
		protocols h1 h2c
		timeouts {
			write_idle -1s
		}
	}
}
:{HTTP} {
	sse_broadcast {
		write_timeout off
		takeover ` + takeover + `
		send_buffer 16KiB
		keepalive off
		max_queue 100000
		max_queue_bytes 64MiB
		` + more + `
	}
}`
}

// stallHTTP1 opens a stream over a raw TCP connection that never reads,
// and returns what waits until the server has closed the connection.
func stallHTTP1(t *testing.T, ts *testServer) (awaitEnd func()) {
	conn := stalledClient(t, ts.http, "/")
	return func() {
		t.Helper()
		// Reading now no longer unstalls anything: the stream ended.
		require.NoError(t, conn.(*net.TCPConn).SetReadBuffer(1<<20))
		require.NoError(t, conn.SetReadDeadline(time.Now().Add(3*awaitTimeout)))
		_, err := io.Copy(io.Discard, conn)
		assert.NoError(t, err, "the server must close the stalled connection")
	}
}

// Keep-alives go after keepalive of silence on every protocol, streams kept
// by the server included: none sooner after an event than the interval.
func TestKeepAlivesFollowSilenceOnEveryProtocol(t *testing.T) {
	const keepAlive = 300 * time.Millisecond
	for _, proto := range streamProtocols {
		t.Run(proto.name, func(t *testing.T) {
			ts, url := startCaddyOn(t, proto.tls, fmt.Sprintf(`keepalive %s
		takeover %s`, keepAlive, proto.takeover))
			s := openStream(t, &http.Client{Transport: proto.transport(t)}, url)
			require.Equal(t, proto.wantMajor, s.resp.ProtoMajor)
			s.raw.awaitCount(t, ": keep-alive\n\n", 2)

			// Half an interval after a keep-alive, an event: the next
			// keep-alive waits a whole interval from the event.
			time.Sleep(keepAlive / 2) // the silence under test
			publishedAt := time.Now()
			ts.mustBroadcast(`{"data":"x"}`)
			require.Equal(t, "x", s.next().Data)
			s.raw.awaitContains(t, "data: x\n\n: keep-alive\n\n")
			assert.GreaterOrEqual(t, time.Since(publishedAt), keepAlive, "a keep-alive came sooner than the interval after an event")
		})
	}
}
