package ssebroadcast

// Tests that a config which could never serve a stream is refused when it
// is loaded, with a message naming the option, rather than loaded and then
// answering 400 to every request.

import (
	"encoding/json"
	"maps"
	"net/http"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// loadJSON loads a JSON config with one sse_broadcast handler, configured
// by handler, and the sse app configured by app, into the process's Caddy,
// as `caddy load` or a POST /load does. It returns the load's error; a
// config that loads is stopped when the test ends.
func loadJSON(t *testing.T, handler, app map[string]any) (*testServer, error) {
	t.Helper()
	handle := map[string]any{"handler": "sse_broadcast", "keepalive": -1}
	maps.Copy(handle, handler)
	return loadHandlerJSON(t, handle, app)
}

// loadHandlerJSON loads, as loadJSON does, a JSON config whose one route
// handles every request with handle.
func loadHandlerJSON(t *testing.T, handle, app map[string]any) (*testServer, error) {
	t.Helper()
	ts := newTestServer(t)
	if app == nil {
		app = map[string]any{}
	}
	cfg, err := json.Marshal(map[string]any{
		"admin": map[string]any{"listen": ts.admin, "config": map[string]any{"persist": false}},
		"apps": map[string]any{
			"sse": app,
			"http": map[string]any{"servers": map[string]any{"srv0": map[string]any{
				"listen": []string{ts.http},
				"routes": []any{map[string]any{"handle": []any{handle}}},
			}}},
		},
	})
	require.NoError(t, err)
	err = caddy.Load(cfg, true)
	t.Cleanup(func() {
		require.NoError(t, caddy.Stop())
		checkNoLeaks(t)
	})
	return ts, err
}

func TestALiteralChannelThatCanNeverServeFailsTheLoad(t *testing.T) {
	tests := []struct {
		name    string
		channel string
		app     map[string]any
		message string
	}{
		{"line feed", "a\nb", nil, `channel "a\nb": must not contain a line break (CR or LF)`},
		{"carriage return", "a\rb", nil, `channel "a\rb": must not contain a line break (CR or LF)`},
		{"over max_channel_length", "eleven-long", map[string]any{"max_channel_length": 10},
			`channel "eleven-long": is 11 bytes long, longer than the sse app's max_channel_length of 10`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := loadJSON(t, map[string]any{"channels": []string{tt.channel}}, tt.app)
			require.Error(t, err, "a config whose every stream request would get 400 loaded")
			assert.Contains(t, err.Error(), tt.message)
			assert.Contains(t, err.Error(), "sse_broadcast")
		})
	}
}

// A channel with placeholders is checked per request, once they are
// resolved: its template says nothing of the names it resolves to.
func TestAChannelWithPlaceholdersIsCheckedPerRequest(t *testing.T) {
	ts, err := loadJSON(t, map[string]any{"channels": []string{"{http.request.uri.query.c}"}}, map[string]any{"max_channel_length": 4})
	require.NoError(t, err, "the template is longer than max_channel_length; the names it resolves to need not be")

	openStream(t, nil, ts.url("/?c=abcd"))
	for _, query := range []string{"c=abcde", "c=a%0Ab", ""} {
		resp, err := plainClient.Get(ts.url("/?" + query))
		require.NoError(t, err)
		resp.Body.Close()
		assert.Equal(t, http.StatusBadRequest, resp.StatusCode, "?%s", query)
	}
}
