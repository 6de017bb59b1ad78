package ssebroadcast

// Tests of `caddy sse-broadcast` as a user meets it at a shell, beyond the
// basics in process_test.go. Each runs the binary built from ./cmd/caddy,
// most against a Caddy running as its own process, and checks what a
// client's stream received, the exit status and the messages.

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestCLIDropsOneTrailingLineBreakFromStandardInput(t *testing.T) {
	p := startCaddyProcess(t, processCaddyfile)
	s := openStream(t, nil, p.url("/"))

	cases := []struct {
		stdin string
		data  string // what the client's parser hands the page
		wire  string // the data lines on the stream
	}{
		// `date | caddy sse-broadcast --data -`: the line, not a final
		// empty data: line that leaves e.data ending in "\n".
		{stdin: "hello\n", data: "hello", wire: "data: hello\n"},
		// A CRLF is one line break, inside the data and at its end.
		{stdin: "a\r\nb\r\n", data: "a\nb", wire: "data: a\ndata: b\n"},
		// Exactly one is dropped: a blank last line is data.
		{stdin: "x\n\n", data: "x\n", wire: "data: x\ndata: \n"},
	}
	seen := len(s.raw.String())
	for _, c := range cases {
		stdout, stderr, err := p.command(c.stdin, "sse-broadcast", "--address", p.admin, "--channel", "news", "--data", "-")
		require.NoError(t, err, "stdin %q: stderr: %s", c.stdin, stderr)
		var res Result
		require.NoError(t, json.Unmarshal([]byte(stdout), &res), "stdout: %s", stdout)

		assert.Equal(t, c.data, s.next().Data, "stdin %q", c.stdin)
		raw := s.raw.String()
		assert.Equal(t, "id: "+res.ID+"\n"+c.wire+"\n", raw[seen:], "stdin %q", c.stdin)
		seen = len(raw)
	}
}
