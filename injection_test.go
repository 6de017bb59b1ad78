package ssebroadcast

// Tests that no input lets anyone inject a field or an event into a
// client's stream: not the event's name, id, channel, data or target
// client, not a placeholder in the stream's channel. Each is tried against
// a real Caddy, and the stream, read by go-sse and byte for byte, must hold
// exactly what was published and nothing else.

import (
	"bufio"
	"encoding/json"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const injectionCaddyfile = `{
	{GLOBAL}
}
:{HTTP} {
	route /events {
		sse_broadcast {query.channel} {
			keepalive off
		}
	}
	route /by-header {
		sse_broadcast "h-{http.request.header.X-Room}" {
			keepalive off
		}
	}
}`

// injections are payloads that would add a field or an event if a value
// reached the stream unescaped.
var injections = []string{
	"x\nevent: evil",
	"x\rdata: evil",
	"x\r\nid: 666",
	"x\n\ndata: evil\n\n",
	"x\u2028data: evil", // a Unicode line separator is not an SSE line break
}

// assertNothingInjected publishes a sentinel and checks that it is the
// next and only thing the victim's stream holds after what it had.
func assertNothingInjected(t *testing.T, ts *testServer, victim *stream, channel string) {
	t.Helper()
	before := victim.raw.String()
	res := ts.mustBroadcast(`{"channel":"` + channel + `","data":"sentinel"}`)
	ev := victim.next()
	assert.Equal(t, "sentinel", ev.Data, "the victim received something else first")
	assert.Equal(t, "", ev.Type)
	want := before + "id: " + res.ID + "\ndata: sentinel\n\n"
	assert.Equal(t, want, victim.raw.awaitContains(t, "data: sentinel\n\n"))
}

func TestEventNamesIdsAndChannelsCannotInjectIntoAStream(t *testing.T) {
	ts := startCaddy(t, injectionCaddyfile)
	victim := openStream(t, nil, ts.url("/events?channel=room"))
	for _, payload := range injections {
		for _, field := range []string{"event", "id", "channel"} {
			body := map[string]string{"channel": "room", "data": "x", field: payload}
			res := ts.broadcast(jsonBody(t, body))
			if strings.ContainsAny(payload, "\r\n") {
				require.Equal(t, http.StatusBadRequest, res.status, "%s %q", field, payload)
				assert.Contains(t, res.errorMessage(t), `field "`+field+`"`)
				continue
			}
			// Without an SSE line break the value is sent as it is, on its
			// own line: a field's value, nothing more.
			require.Equal(t, http.StatusOK, res.status, "%s %q: %s", field, payload, res.body)
			if field != "channel" {
				ev := victim.next()
				switch field {
				case "event":
					assert.Equal(t, payload, ev.Type)
				case "id":
					assert.Equal(t, payload, ev.LastEventID)
				}
				assert.Equal(t, "x", ev.Data)
			}
		}
	}
	assertNothingInjected(t, ts, victim, "room")
}

func TestDataCannotInjectFieldsOrEvents(t *testing.T) {
	ts := startCaddy(t, injectionCaddyfile)
	victim := openStream(t, nil, ts.url("/events?channel=room"))
	for _, payload := range injections {
		ts.mustBroadcast(jsonBody(t, map[string]string{"channel": "room", "data": payload}))
		ev := victim.next()
		// Every line of the data comes back as data, in one event; the
		// line breaks read back as LF, as the spec says.
		want := strings.NewReplacer("\r\n", "\n", "\r", "\n").Replace(payload)
		assert.Equal(t, want, ev.Data)
		assert.Equal(t, "", ev.Type, "no event name was injected by %q", payload)
	}
	assertNothingInjected(t, ts, victim, "room")
}

func TestATargetClientIdCannotInjectOrReachAnotherClient(t *testing.T) {
	ts := startCaddy(t, injectionCaddyfile)
	victim := openStream(t, nil, ts.url("/events?channel=room"))
	for _, payload := range append(injections, "", "../", strings.Repeat("A", 25)+"a", "*") {
		res := ts.broadcast(jsonBody(t, map[string]string{"client": payload, "data": "x"}))
		if payload == "" {
			// No client: a broadcast to the default channel.
			require.Equal(t, http.StatusOK, res.status)
			continue
		}
		require.Equal(t, http.StatusBadRequest, res.status, "client %q", payload)
		assert.Contains(t, res.errorMessage(t), `field "client"`)
		del := ts.adminRequest(http.MethodDelete, "/sse/clients/"+url.PathEscape(payload), "", nil)
		assert.Equal(t, http.StatusNotFound, del.status, "DELETE client %q", payload)
	}
	assert.Equal(t, 1, ts.stats().Clients, "no client was disconnected")
	assertNothingInjected(t, ts, victim, "room")
}

func TestPlaceholdersInAStreamsChannelCannotInject(t *testing.T) {
	ts := startCaddy(t, injectionCaddyfile)
	victim := openStream(t, nil, ts.url("/events?channel=room"))
	for _, payload := range injections {
		if !strings.ContainsAny(payload, "\r\n") {
			continue
		}
		// From the query string: a line break resolves into the channel
		// name, which is refused.
		s := dialStream(t, nil, ts.url("/events?channel="+url.QueryEscape(payload)))
		assert.Equal(t, http.StatusBadRequest, s.resp.StatusCode, "channel %q", payload)
		s.close()
	}
	// From a header: a CR inside a header value (a CRLF would only end the
	// header) is refused by the server before any handler sees it. Go's
	// client refuses to send one, so the request goes raw.
	status := rawRequest(t, ts.http, "GET /by-header HTTP/1.1\r\nHost: x\r\nX-Room: a\rdata: evil\r\n\r\n")
	assert.Equal(t, http.StatusBadRequest, status)
	assertNothingInjected(t, ts, victim, "room")
	for name := range ts.stats().Channels {
		assert.NotContains(t, name, "\n")
		assert.NotContains(t, name, "\r")
	}
}

// jsonBody encodes fields as a JSON object.
func jsonBody(t *testing.T, fields map[string]string) string {
	t.Helper()
	body, err := json.Marshal(fields)
	require.NoError(t, err)
	return string(body)
}

// rawRequest sends request bytes as they are and returns the answer's
// status, or 0 if the server closed the connection without one.
func rawRequest(t *testing.T, addr, request string) int {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer conn.Close()
	require.NoError(t, conn.SetDeadline(time.Now().Add(awaitTimeout)))
	_, err = conn.Write([]byte(request))
	require.NoError(t, err)
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}
