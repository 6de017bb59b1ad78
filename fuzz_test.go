package ssebroadcast

// Fuzz targets: the three places where input from outside meets the module.
// Their seed corpora are the f.Add calls below and the files under
// testdata/fuzz/<target>/; `go test` runs the seeds as ordinary tests, and
// .ci/run fuzzes each target for a few seconds.
//
//	go test -run '^$' -fuzz '^FuzzEncodedEventReadsBackAsItself$' -fuzztime 60s .

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	sse "github.com/tmaxmax/go-sse"
)

// Any event either is refused by validate or encodes to bytes that a
// third-party parser reads back as exactly that one event: no field lost,
// changed or added, and no second event.
func FuzzEncodedEventReadsBackAsItself(f *testing.F) {
	f.Add("", "", "", int64(0), false)
	f.Add("tick", "7", `{"i":1}`, int64(3*time.Second), true)
	f.Add("", "", "a\nb\r\nc\rd", int64(0), false)
	f.Add("x", "", "\n\n", int64(0), false)
	f.Add("", "", "a\r", int64(0), false)
	f.Add("", "", "\r\n\r\n\r", int64(0), false)
	f.Add(" spaced", " spaced", " spaced", int64(0), false)
	f.Add("", "", "data: not a field\nevent: not a name\n\nid: nope", int64(0), false)
	f.Add("", "", ":comment\nretry: 1", int64(0), false)
	f.Add("update", "id-1", "héllo 世界 🎉", int64(0), false)
	f.Add("", "", "\ufeffbom at the start", int64(0), false)
	f.Add("nul\x00in name", "", "nul\x00in data", int64(0), false)
	f.Add("", "1\x002", "an id with NUL is refused", int64(0), false)
	f.Add("a\nid: 9", "", "a name with LF is refused", int64(0), false)
	f.Add("", "", "\xff", int64(0), false)
	f.Add("", "", "retry below a millisecond", int64(999*time.Microsecond), true)
	f.Add("", "", "largest retry", int64(1<<63-1), true)
	f.Add("", "", "negative retry is refused", int64(-time.Millisecond), true)

	f.Fuzz(func(t *testing.T, eventType, id, data string, retry int64, hasRetry bool) {
		ev := Event{Type: eventType, ID: id, Data: data}
		if hasRetry {
			ev.Retry = durationPtr(time.Duration(retry))
		}
		if ev.validate() != nil {
			return
		}
		wire := ev.encode(nil)
		require.LessOrEqual(t, len(wire), ev.encodedSize(), "encodedSize must bound the wire form")

		// The raw bytes, read line by line as the HTML spec breaks lines.
		lines := strings.Split(normalizeLineBreaks(string(wire)), "\n")
		require.GreaterOrEqual(t, len(lines), 3, "wire %q", wire)
		require.Equal(t, []string{"", ""}, lines[len(lines)-2:], "wire %q must end with exactly one blank line", wire)
		seen := map[string]int{}
		for _, line := range lines[:len(lines)-2] {
			require.NotEmpty(t, line, "wire %q: a blank line before the end dispatches early", wire)
			name, value, _ := strings.Cut(line, ":")
			seen[name]++
			switch name {
			case "data":
			case "id", "event":
				require.Equal(t, 1, seen[name], "wire %q: the %s field twice", wire, name)
			case "retry":
				require.Equal(t, 1, seen[name], "wire %q: the retry field twice", wire)
				require.NotNil(t, ev.Retry, "wire %q: a retry field that was not asked for", wire)
				// Clients ignore a retry value that is not all digits.
				want := strconv.FormatInt(ev.Retry.Milliseconds(), 10)
				require.Equal(t, " "+want, value, "wire %q: retry in whole milliseconds", wire)
			default:
				require.Failf(t, "unexpected field", "wire %q: line %q is not an id, event, retry or data field", wire, line)
			}
		}
		assert.Equal(t, ev.Retry != nil, seen["retry"] == 1, "wire %q: retry field", wire)
		assert.Equal(t, strings.Count(normalizeLineBreaks(data), "\n")+1, seen["data"],
			"wire %q: one data field per line of data", wire)

		// The stream opens with a comment, as the handler's does, so the
		// parser's first-line handling (a BOM is dropped there) does not
		// touch the event.
		stream := append([]byte(": open\n\n"), wire...)
		var got []sse.Event
		for e, err := range sse.Read(bytes.NewReader(stream), &sse.ReadConfig{MaxEventSize: len(stream) + 1024}) {
			require.NoError(t, err, "reading %q", stream)
			got = append(got, e)
		}
		require.Len(t, got, 1, "wire %q must read back as exactly one event", wire)
		// go-sse reports an event without an "event:" field as Type "".
		assert.Equal(t, eventType, got[0].Type, "wire %q: event name", wire)
		assert.Equal(t, id, got[0].LastEventID, "wire %q: id", wire)
		assert.Equal(t, normalizeLineBreaks(data), got[0].Data, "wire %q: data", wire)
	})
}

// normalizeLineBreaks turns CRLF and lone CR into LF, as an event-stream
// parser reads them.
func normalizeLineBreaks(s string) string { return lineBreaks.Replace(s) }

var lineBreaks = strings.NewReplacer("\r\n", "\n", "\r", "\n")

// Whatever body a publisher posts, POST /sse/broadcast answers 2xx with a
// JSON result, or 4xx with a JSON error that says what is wrong; never a
// 5xx, never a panic. (The endpoint's one 5xx, 503 for channels over
// max_channels, needs more new channels than a body within fuzzMaxBody can
// name to a fresh app.)
func FuzzAdminBroadcastAnswers2xxOr4xxWithJSON(f *testing.F) {
	const jsonType = "application/json"
	f.Add(jsonType, `{"channel":"news","event":"tick","id":"7","retry":3000,"data":"hello"}`)
	f.Add(jsonType, `{"data":{"nested":[1,{"deeper":null}],"s":"x"}}`)
	f.Add(jsonType, `[{"channel":"news","data":"one"},{"data":"two","event":"x"}]`)
	f.Add(jsonType, `{}`)
	f.Add(jsonType, `null`)
	f.Add(jsonType, `[null]`)
	f.Add(jsonType, `[]`)
	f.Add(jsonType, ``)
	f.Add(jsonType, " \t\r\n")
	f.Add(jsonType, `{"data":null,"retry":null,"event":null}`)
	f.Add(jsonType, `{"event":5,"channel":["news"]}`)
	f.Add(jsonType, `{"retry":18446744073709551616}`)
	f.Add(jsonType, `{"retry":-1}`)
	f.Add(jsonType, `{"retry":1e3}`)
	f.Add(jsonType, `{"retry":"3000"}`)
	f.Add(jsonType, `{"data":"x","colour":"red"}`)
	f.Add(jsonType, `{"Data":"x","CHANNEL":"news"}`)
	f.Add(jsonType, `[{"data":"a","d\u0061ta":"b"}]`)
	f.Add(jsonType, `{"data":"x"} {"data":"y"}`)
	f.Add(jsonType, `{"data":"a\r\nb\u0000c\ud800"}`)
	f.Add(jsonType, `{"id":"1\u00002"}`)
	f.Add(jsonType, `{"client":"AAAAAAAAAAAAAAAAAAAAAAAAAA","data":"x"}`)
	f.Add(jsonType, `{"client":"not an id"}`)
	f.Add(jsonType, `{"channel":"`+strings.Repeat("c", 300)+`"}`)
	f.Add(jsonType, `{"data":"`+strings.Repeat("x", fuzzMaxBody)+`"}`)
	f.Add(jsonType, `not json`)
	f.Add("application/json; charset=utf-8", `{"data":"x"}`)
	f.Add("text/plain", `{"data":"x"}`)
	f.Add("", `{"data":"x"}`)

	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	f.Cleanup(cancel)

	f.Fuzz(func(t *testing.T, contentType, body string) {
		// A fresh app for each input, so that no input's answer depends
		// on what earlier inputs left behind.
		app := &App{MaxBody: fuzzMaxBody}
		require.NoError(t, app.Provision(ctx))
		require.NoError(t, app.Validate())
		require.NoError(t, app.Start())
		defer func() {
			require.NoError(t, app.Stop())
			require.NoError(t, app.Cleanup())
		}()
		handler := adminRoute(t, &AdminAPI{app: app}, "/sse/broadcast")

		req := httptest.NewRequest(http.MethodPost, "/sse/broadcast", strings.NewReader(body))
		req.Header.Set("Content-Type", contentType)
		rec := httptest.NewRecorder()
		err := handler.ServeHTTP(rec, req)

		if err != nil {
			assert.Zero(t, rec.Body.Len(), "an error answer must not follow a body already written: %q", rec.Body)
			// Caddy's admin server treats any error that is not a
			// caddy.APIError, exactly, as a 500.
			apiErr, ok := err.(caddy.APIError)
			require.True(t, ok, "error %#v is not a caddy.APIError: Caddy answers it with 500", err)
			require.GreaterOrEqual(t, apiErr.HTTPStatus, 400, "error %v", err)
			require.Less(t, apiErr.HTTPStatus, 500, "error %v", err)
			require.Error(t, apiErr.Err, "status %d", apiErr.HTTPStatus)
			// Rendered as Caddy's admin server renders it.
			apiErr.Message = apiErr.Err.Error()
			rendered, jsonErr := json.Marshal(apiErr)
			require.NoError(t, jsonErr)
			var answer struct {
				Error string `json:"error"`
			}
			require.NoError(t, json.Unmarshal(rendered, &answer), "error answer %s", rendered)
			assert.NotEmpty(t, answer.Error, "error answer %s has no message", rendered)
			return
		}

		require.Equal(t, http.StatusOK, rec.Code, "body %q", rec.Body)
		assert.Equal(t, "application/json", rec.Header().Get("Content-Type"))
		var results []Result
		dec := json.NewDecoder(rec.Body)
		dec.DisallowUnknownFields()
		if trimmed := strings.TrimLeft(body, " \t\r\n"); strings.HasPrefix(trimmed, "[") {
			require.NoError(t, dec.Decode(&results), "a batch is answered with an array of results")
			require.NotEmpty(t, results)
		} else {
			results = make([]Result, 1)
			require.NoError(t, dec.Decode(&results[0]), "one event is answered with one result")
		}
		for _, r := range results {
			assert.NotEmpty(t, r.Channel, "result %+v names no channel", r)
			assert.NotEmpty(t, r.ID, "result %+v has no id", r)
		}
	})
}

// fuzzMaxBody keeps the admin API's body limit within the fuzzer's reach,
// so that inputs over it are tried too.
const fuzzMaxBody = 4096

// adminRoute returns the handler that api registers for pattern, as Caddy's
// admin server would route to it.
func adminRoute(t *testing.T, api caddy.AdminRouter, pattern string) caddy.AdminHandler {
	t.Helper()
	for _, route := range api.Routes() {
		if route.Pattern == pattern {
			return route.Handler
		}
	}
	require.FailNow(t, "no admin route", "pattern %s", pattern)
	return nil
}

// Whatever text follows the sse_broadcast directive or the sse global
// option, adapting the Caddyfile ends in a config or an error, never a
// panic.
func FuzzCaddyfileParsingNeverPanics(f *testing.F) {
	f.Add("")
	f.Add("news")
	f.Add("news extra")
	f.Add("{query.channel}")
	f.Add("{\n\t\tchannel news\n\t\tkeepalive off\n\t\tretry 3s\n\t\twrite_timeout 10s\n\t\tmax_queue 1024\n\t\tmax_queue_bytes 4MiB\n\t\tmax_clients 10\n\t\tsend_buffer off\n\t\tflush_interval 0\n\t\ttakeover off\n\t\tgreeting\n\t}")
	f.Add("{\n\t\tmax_body 1KiB\n\t\treplay 0\n\t\treplay_max_bytes 4MiB\n\t\treplay_ttl 1h\n\t\treplay_total_bytes 256MiB\n\t\tmax_clients 1\n\t}")
	f.Add("{\n\t\tretry\n\t}")
	f.Add("{\n\t\tretry 0.5ms\n\t}")
	f.Add("{\n\t\tmax_queue 99999999999999999999\n\t}")
	f.Add("{\n\t\tmax_queue_bytes 18446744073709551615\n\t}")
	f.Add("{\n\t\tkeepalive -1s extra\n\t}")
	f.Add("{\n\t\tunknown\n\t}")
	f.Add("{\n\t\tchannel\n\t}")
	f.Add("{")
	f.Add("}")
	f.Add("{\n}\n}\n{")
	f.Add("\"quoted arg\" `backtick`")
	f.Add("<<EOF\nheredoc\nEOF")
	f.Add("{$UNSET_ENV_VAR}")

	adapter := caddyconfig.GetAdapter("caddyfile")
	f.Fuzz(func(t *testing.T, text string) {
		if strings.Contains(text, "import") {
			// import reads files and globs from the disk: the outcome
			// would depend on the machine, and a glob such as "/**"
			// could walk the whole filesystem.
			t.Skip("import reads files")
		}
		for _, caddyfile := range []string{
			":8080 {\n\tsse_broadcast " + text + "\n}\n",
			"{\n\tsse " + text + "\n}\n:8080 {\n\tsse_broadcast\n}\n",
		} {
			out, _, err := adapter.Adapt([]byte(caddyfile), map[string]any{"filename": "Caddyfile"})
			if err == nil {
				assert.True(t, json.Valid(out), "adapted %q to invalid JSON %s", caddyfile, out)
			}
		}
	})
}
