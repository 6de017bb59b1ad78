package ssebroadcast

// Tests of writes blocked on a client that stopped reading, on the
// protocols where a stream's window, not a socket, fills: HTTP/3 cuts such
// a stream within write_timeout while its connection's other streams go
// on, and on every protocol a drop interrupts the blocked write at once.
// (HTTP/2's stalled stream is in timeouts_test.go, beside its quiet twin.)

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// stallWindow is the flow-control window of a stalling HTTP/3 client's
// streams: small, so that a few events fill it.
const stallWindow = 16 << 10

// overSmallQUICWindows is an HTTP/3 client whose streams take stallWindow
// bytes until their reader reads, on a connection whose own window is
// large: a stream that is not read stalls alone.
func overSmallQUICWindows(t *testing.T) *http.Client {
	transport := &http3.Transport{
		TLSClientConfig: insecureTLS(),
		QUICConfig: &quic.Config{
			InitialStreamReceiveWindow:     stallWindow,
			MaxStreamReceiveWindow:         stallWindow,
			InitialConnectionReceiveWindow: 16 << 20,
			MaxConnectionReceiveWindow:     16 << 20,
		},
	}
	t.Cleanup(func() { assert.NoError(t, transport.Close(), "closing the HTTP/3 transport") })
	return &http.Client{Transport: transport}
}

// The twin of TestAQuietStreamOutlivesItsWriteTimeoutOnEveryProtocol's
// HTTP/3 case: a stream whose reader stopped reading fills its window, and
// its blocked write is cut within write_timeout, while another stream of
// the same connection, read all along, receives every event.
func TestAStalledHTTP3StreamIsCutAndItsConnectionServesTheOthers(t *testing.T) {
	const writeTimeout = 300 * time.Millisecond
	ts, url := startCaddyOn(t, true, fmt.Sprintf(`write_timeout %s
		keepalive off
		max_queue 100000
		max_queue_bytes 64MiB`, writeTimeout))
	client := overSmallQUICWindows(t)
	reading := openStream(t, client, url)
	require.Equal(t, 3, reading.resp.ProtoMajor)
	stalledResp, err := client.Get(url) // its body is never read
	require.NoError(t, err)
	t.Cleanup(func() { stalledResp.Body.Close() })
	require.Equal(t, 3, stalledResp.ProtoMajor)
	require.Eventually(t, func() bool { return ts.stats().Clients == 2 }, awaitTimeout, 5*time.Millisecond)

	// Four windows' worth: more than the stalled stream takes.
	const events = 4 * stallWindow / 1024
	data := strings.Repeat("x", 1024)
	stalledAt := time.Now()
	for range events {
		ts.mustBroadcast(`{"data":"` + data + `"}`)
	}
	require.Eventually(t, func() bool { return ts.stats().Disconnects.WriteTimeout == 1 }, awaitTimeout, 5*time.Millisecond,
		"the stalled stream was not cut")
	assert.GreaterOrEqual(t, time.Since(stalledAt), writeTimeout, "cut no sooner than write_timeout")

	for i := range events {
		require.Equal(t, data, reading.next().Data, "event %d on the stream that reads", i)
	}
	res := ts.mustBroadcast(`{"data":"still here"}`)
	ev := reading.next()
	assert.Equal(t, "still here", ev.Data)
	assert.Equal(t, res.ID, ev.LastEventID)
	assert.Equal(t, 1, ts.stats().Clients)
}

// A client whose writes are blocked, because it stopped reading, is
// disconnected at once by DELETE /sse/clients/{id}, long before its
// write_timeout, on every protocol: the drop interrupts the write in
// flight.
func TestADropInterruptsABlockedWriteOnEveryProtocol(t *testing.T) {
	const writeTimeout = time.Hour // never the bound that ends the stream
	for _, proto := range []struct {
		name     string
		tls      bool
		takeover string
		// stall opens a stream that is never read.
		stall func(t *testing.T, ts *testServer, url string)
	}{
		{"HTTP/1.1 taken over", false, "on", stallHTTP1Stream},
		{"HTTP/1.1 kept by the server", false, "off", stallHTTP1Stream},
		{"HTTP/2", false, "on", func(t *testing.T, ts *testServer, _ string) {
			conn := dialRawH2(t, ts.http, 0)
			require.Equal(t, "200", <-conn.get(1, "/", false).status) // its window stays shut
		}},
		{"HTTP/3", true, "on", func(t *testing.T, _ *testServer, url string) {
			resp, err := overSmallQUICWindows(t).Get(url)
			require.NoError(t, err)
			t.Cleanup(func() { resp.Body.Close() })
		}},
	} {
		t.Run(proto.name, func(t *testing.T) {
			ts, url := startCaddyOn(t, proto.tls, fmt.Sprintf(`write_timeout %s
		keepalive off
		takeover %s
		send_buffer 16KiB
		max_queue 100000
		max_queue_bytes 64MiB`, writeTimeout, proto.takeover))
			proto.stall(t, ts, url)
			require.Eventually(t, func() bool { return ts.stats().Clients == 1 }, awaitTimeout, 5*time.Millisecond)
			id := ts.clients("").Clients[0].ID

			// Events until some wait in its queue: the stream is busy
			// with a write that does not end.
			data := strings.Repeat("x", 1024)
			blocked := false
			for range 10000 {
				ts.mustBroadcast(`{"data":"` + data + `"}`)
				if list := ts.clients(""); len(list.Clients) == 1 && list.Clients[0].Queued > 0 {
					blocked = true
					break
				}
			}
			require.True(t, blocked, "the client's writes never blocked")

			res := ts.adminRequest(http.MethodDelete, "/sse/clients/"+id, "", nil)
			require.Equal(t, http.StatusOK, res.status, "%s", res.body)
			require.Eventually(t, func() bool { return ts.stats().Clients == 0 }, awaitTimeout, 5*time.Millisecond,
				"the stream blocked in a write did not end")
			st := ts.stats()
			assert.Equal(t, uint64(1), st.Disconnects.Kicked)
			assert.Zero(t, st.Disconnects.WriteTimeout+st.Disconnects.Slow)
		})
	}
}

// stallHTTP1Stream opens a stream over a raw TCP connection with a small
// receive buffer that is never read.
func stallHTTP1Stream(t *testing.T, ts *testServer, _ string) { stalledClient(t, ts.http, "/") }
