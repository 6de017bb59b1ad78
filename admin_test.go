package ssebroadcast

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const adminCaddyfile = `{
	{GLOBAL}
	sse {
		max_body 1KiB
	}
}
:{HTTP} {
	sse_broadcast {
		channel news
	}
}`

func TestBadBroadcastsAreRejectedAndReachNoClient(t *testing.T) {
	ts := startCaddy(t, adminCaddyfile)
	s := openStream(t, nil, ts.url("/"))

	tests := []struct {
		name        string
		method      string
		contentType string
		body        string
		status      int
		message     string // must appear in the JSON error
	}{
		{"LF in event name", "POST", "application/json", `{"channel":"news","event":"a\nid: 9","data":"x"}`, 400, `field "event": must not contain a line break`},
		{"CR in event name", "POST", "application/json", `{"channel":"news","event":"a\rb","data":"x"}`, 400, `field "event"`},
		{"LF in id", "POST", "application/json", `{"channel":"news","id":"1\n\ndata: injected","data":"x"}`, 400, `field "id": must not contain a line break`},
		{"CR in id", "POST", "application/json", `{"channel":"news","id":"1\r","data":"x"}`, 400, `field "id"`},
		{"NUL in id", "POST", "application/json", `{"channel":"news","id":"1\u00002","data":"x"}`, 400, `field "id": must not contain NUL`},
		{"LF in channel", "POST", "application/json", `{"channel":"news\nother","data":"x"}`, 400, `field "channel"`},
		{"negative retry", "POST", "application/json", `{"channel":"news","retry":-1,"data":"x"}`, 400, `field "retry": must be a non-negative whole number`},
		{"fractional retry", "POST", "application/json", `{"channel":"news","retry":1.5,"data":"x"}`, 400, `field "retry"`},
		{"retry as a string", "POST", "application/json", `{"channel":"news","retry":"3000","data":"x"}`, 400, `field "retry"`},
		{"malformed JSON", "POST", "application/json", `{"channel":"news","data":`, 400, "invalid JSON"},
		{"trailing data", "POST", "application/json", `{"channel":"news","data":"x"} {"data":"y"}`, 400, "unexpected data after"},
		{"unknown field", "POST", "application/json", `{"channel":"news","data":"x","colour":"red"}`, 400, `field "colour": unknown field; fields are event, data, id, retry, channel, client`},
		// encoding/json alone would match field names in any case, and
		// let the last of two equal names win.
		{"field name in another case", "POST", "application/json", `{"channel":"news","Data":"x"}`, 400, `field "Data": unknown field; fields are event, data, id, retry, channel, client`},
		{"field name in capitals", "POST", "application/json", `{"CHANNEL":"news","data":"x"}`, 400, `field "CHANNEL": unknown field`},
		{"field given twice", "POST", "application/json", `{"channel":"news","data":"a","data":"b"}`, 400, `field "data": is given twice`},
		{"channel given twice", "POST", "application/json", `{"channel":"elsewhere","channel":"news","data":"x"}`, 400, `field "channel": is given twice`},
		{"field given twice, once escaped", "POST", "application/json", `{"channel":"news","id":"1","\u0069d":"2","data":"x"}`, 400, `field "id": is given twice`},
		{"field given twice in other cases", "POST", "application/json", `{"channel":"news","data":"a","Data":"b"}`, 400, `field "Data": unknown field`},
		{"field given twice in a batch", "POST", "application/json", `[{"channel":"news","data":"ok"},{"channel":"news","id":"1","id":"2"}]`, 400, `event 1: field "id": is given twice`},
		{"field name in another case in a batch", "POST", "application/json", `[{"channel":"news","data":"ok"},{"channel":"news","Event":"x"}]`, 400, `event 1: field "Event": unknown field`},
		{"wrong type for event", "POST", "application/json", `{"channel":"news","event":5,"data":"x"}`, 400, `field "event": must be a string`},
		{"wrong type for channel", "POST", "application/json", `{"channel":["news"],"data":"x"}`, 400, `field "channel"`},
		{"not an object", "POST", "application/json", `"just a string"`, 400, "expected an event object"},
		{"empty body", "POST", "application/json", ``, 400, "request body is empty"},
		{"null", "POST", "application/json", `null`, 400, "must be a JSON object, got null"},
		{"null in a batch", "POST", "application/json", `[{"channel":"news","data":"ok"},null]`, 400, "event 1: an event must be a JSON object"},
		{"empty batch", "POST", "application/json", `[]`, 400, "the batch is empty"},
		{"batch with one bad event", "POST", "application/json", `[{"channel":"news","data":"ok"},{"channel":"news","event":"a\nb"}]`, 400, `event 1: field "event"`},
		{"body over max_body", "POST", "application/json", `{"channel":"news","data":"` + strings.Repeat("x", 1100) + `"}`, 413, "larger than the limit of 1024 bytes"},
		{"wrong content type", "POST", "text/plain", `{"channel":"news","data":"x"}`, 415, "Content-Type must be application/json"},
		{"form content type", "POST", "application/x-www-form-urlencoded", `{"channel":"news","data":"x"}`, 415, "Content-Type must be application/json"},
		{"no content type", "POST", "", `{"channel":"news","data":"x"}`, 415, "Content-Type must be application/json"},
		{"GET", "GET", "", ``, 405, "method GET not allowed"},
		{"PUT", "PUT", "application/json", `{"channel":"news","data":"x"}`, 405, "method PUT not allowed"},
	}
	before := ts.stats()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp := ts.adminRequest(tt.method, "/sse/broadcast", tt.contentType, []byte(tt.body))
			assert.Equal(t, tt.status, resp.status, "answer: %s", resp.body)
			assert.Equal(t, "application/json", resp.header.Get("Content-Type"))
			assert.Contains(t, resp.errorMessage(t), tt.message)
			if tt.status == http.StatusMethodNotAllowed {
				assert.Equal(t, "POST", resp.header.Get("Allow"))
			}
		})
	}

	after := ts.stats()
	assert.Equal(t, before.EventsPublished, after.EventsPublished, "a rejected request must publish nothing")
	// Events within a channel arrive in order, so if the sentinel is the
	// first thing the client reads, nothing before it got through.
	sentinel := ts.mustBroadcast(`{"channel":"news","data":"sentinel"}`)
	ev := s.next()
	assert.Equal(t, "sentinel", ev.Data)
	assert.Equal(t, ": open\n\nid: "+sentinel.ID+"\ndata: sentinel\n\n", s.raw.String())
}

func TestBatchIsPublishedInOrderAndAnsweredAsAnArray(t *testing.T) {
	ts := startCaddy(t, adminCaddyfile)
	s := openStream(t, nil, ts.url("/"))

	resp := ts.broadcast(`[
		{"channel":"news","id":"a","data":"first"},
		{"channel":"elsewhere","id":"b","data":"not for us"},
		{"channel":"news","id":"c","event":"named","data":"third"}
	]`)
	require.Equal(t, http.StatusOK, resp.status, "answer: %s", resp.body)
	var results []Result
	require.NoError(t, json.Unmarshal(resp.body, &results))
	assert.Equal(t, []Result{
		{Channel: "news", ID: "a", Clients: 1},
		{Channel: "elsewhere", ID: "b", Clients: 0},
		{Channel: "news", ID: "c", Clients: 1},
	}, results)

	assert.Equal(t, "first", s.next().Data)
	ev := s.next()
	assert.Equal(t, "third", ev.Data)
	assert.Equal(t, "named", ev.Type)
	assert.Equal(t, "c", ev.LastEventID)
}

// Only the event's own fields are checked: data is any JSON value, sent as
// its compact text with whatever names it holds.
func TestDataMayHoldAnyNamesEvenTheEventFields(t *testing.T) {
	ts := startCaddy(t, adminCaddyfile)
	s := openStream(t, nil, ts.url("/"))
	ts.mustBroadcast(`{"channel":"news","data":{"Data":1, "data":2, "data":3}}`)
	assert.Equal(t, `{"Data":1,"data":2,"data":3}`, s.next().Data)
}

func TestBodyAtTheLimitIsAccepted(t *testing.T) {
	ts := startCaddy(t, adminCaddyfile)
	prefix, suffix := `{"channel":"news","data":"`, `"}`
	body := prefix + strings.Repeat("x", 1024-len(prefix)-len(suffix)) + suffix
	require.Len(t, body, 1024)
	resp := ts.broadcast(body)
	assert.Equal(t, http.StatusOK, resp.status, "answer: %s", resp.body)
}

func TestDefaultBodyLimitIsOneMebibyte(t *testing.T) {
	ts := startCaddy(t, newsCaddyfile)
	big := fmt.Sprintf(`{"data":"%s"}`, strings.Repeat("x", 1<<20))
	resp := ts.broadcast(big)
	assert.Equal(t, http.StatusRequestEntityTooLarge, resp.status)
	assert.Contains(t, resp.errorMessage(t), "1048576 bytes")

	fits := fmt.Sprintf(`{"data":"%s"}`, strings.Repeat("x", 1<<20-20))
	assert.Equal(t, http.StatusOK, ts.broadcast(fits).status)
}

func TestStatsReportClientsAndCounters(t *testing.T) {
	ts := startCaddy(t, newsCaddyfile)
	news1 := openStream(t, nil, ts.url("/events"))
	news2 := openStream(t, nil, ts.url("/events"))
	openStream(t, nil, ts.url("/any?topic=sports"))

	ts.mustBroadcast(`{"channel":"news","data":"1"}`)
	ts.mustBroadcast(`{"channel":"sports","data":"2"}`)
	ts.mustBroadcast(`{"channel":"nobody","data":"3"}`)
	news1.next()
	news2.next()

	st := ts.stats()
	assert.Positive(t, st.ReplayBytes)
	st.ReplayBytes = 0
	assert.Equal(t, Stats{
		Clients: 3,
		Channels: map[string]ChannelStats{
			"news":   {Clients: 2, Replayable: 1},
			"sports": {Clients: 1, Replayable: 1},
			"nobody": {Clients: 0, Replayable: 1},
		},
		EventsPublished: 3,
		Deliveries:      3,
	}, st)

	resp := ts.adminRequest(http.MethodPost, "/sse/stats", "application/json", []byte(`{}`))
	assert.Equal(t, http.StatusMethodNotAllowed, resp.status)
	assert.Equal(t, "GET", resp.header.Get("Allow"))
	assert.Contains(t, resp.errorMessage(t), "method POST not allowed")
}
