package ssebroadcast

import (
	"bufio"
	"bytes"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// accessEntries reads the JSON access log entries in path.
func accessEntries(t *testing.T, path string) []map[string]any {
	t.Helper()
	raw, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return nil
	}
	require.NoError(t, err)
	var entries []map[string]any
	lines := bufio.NewScanner(bytes.NewReader(raw))
	for lines.Scan() {
		var entry map[string]any
		require.NoError(t, json.Unmarshal(lines.Bytes(), &entry), "log line %q", lines.Text())
		entries = append(entries, entry)
	}
	return entries
}

// A stream's access log entry is written when the stream ends, with how
// long it lasted and how many events it sent, whether the stream was taken
// over from the server or stayed with it, and whether its client left or
// the admin API disconnected it.
func TestAStreamsAccessLogEntryShowsItsDurationAndEventsSent(t *testing.T) {
	h2c := protocols(func(p *http.Protocols) { p.SetUnencryptedHTTP2(true) })
	for _, proto := range []struct {
		name, takeover string
		transport      func(t *testing.T) http.RoundTripper
	}{
		{"HTTP/1.1 taken over", "on", overTCP(nil)},
		{"HTTP/1.1 kept by the server", "off", overTCP(nil)},
		{"HTTP/2", "on", overTCP(h2c)},
	} {
		for _, end := range []string{"client leaves", "kicked"} {
			t.Run(proto.name+", "+end, func(t *testing.T) {
				logFile := filepath.Join(t.TempDir(), "access.log")
				ts := startCaddy(t, `{
	{GLOBAL}
	servers {
		protocols h1 h2c
	}
}
:{HTTP} {
	log {
		output file `+logFile+` {
			roll_disabled
		}
		format json
	}
	sse_broadcast {
		keepalive 50ms
		takeover `+proto.takeover+`
	}
}`)
				s := openStream(t, &http.Client{Transport: proto.transport(t)}, ts.url("/"))
				for range 3 {
					ts.mustBroadcast(`{"data":"logged"}`)
					s.next()
				}
				// Two keep-alives: the stream has lived at least 100ms.
				s.raw.awaitCount(t, ": keep-alive\n\n", 2)
				if end == "kicked" {
					clients := ts.clients("")
					require.Len(t, clients.Clients, 1)
					res := ts.adminRequest(http.MethodDelete, "/sse/clients/"+clients.Clients[0].ID, "", nil)
					require.Equal(t, http.StatusOK, res.status, "%s", res.body)
					s.awaitEnd()
				} else {
					s.close()
				}

				var entry map[string]any
				require.Eventually(t, func() bool {
					for _, e := range accessEntries(t, logFile) {
						if e["msg"] == "handled request" {
							entry = e
							return true
						}
					}
					return false
				}, awaitTimeout, 5*time.Millisecond, "no access log entry for the stream")
				assert.EqualValues(t, 3, entry["events_sent"])
				assert.EqualValues(t, 200, entry["status"])
				duration, ok := entry["duration"].(float64)
				require.True(t, ok, "duration %v", entry["duration"])
				assert.GreaterOrEqual(t, duration, 0.1, "the entry must cover the stream's life, in seconds")
			})
		}
	}
}
