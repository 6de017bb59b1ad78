package ssebroadcast

// Tests of `caddy sse-broadcast` as a user meets it at a shell, beyond the
// basics in process_test.go. Each runs the binary built from ./cmd/caddy,
// most against a Caddy running as its own process, and checks what a
// client's stream received, the exit status and the messages.

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/caddyserver/caddy/v2"
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

// writeCaddyfile writes a Caddyfile into a new temporary directory and
// returns the directory.
func writeCaddyfile(t *testing.T, caddyfile string) string {
	t.Helper()
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "Caddyfile"), []byte(caddyfile), 0o600))
	return dir
}

func TestCLIFindsTheAdminEndpointInTheAdjacentCaddyfile(t *testing.T) {
	p := startCaddyProcess(t, processCaddyfile)
	// Were the test's Caddy on the default address, a command that ignored
	// the Caddyfile would reach it all the same.
	_, defaultPort, err := net.SplitHostPort(caddy.DefaultAdminListen)
	require.NoError(t, err)
	_, adminPort, err := net.SplitHostPort(p.admin)
	require.NoError(t, err)
	require.NotEqual(t, defaultPort, adminPort)
	s := openStream(t, nil, p.url("/"))

	// As `caddy reload` run there would, with no --config: the Caddyfile in
	// the working directory names the admin endpoint.
	dir := writeCaddyfile(t, fmt.Sprintf("{\n\tadmin %s\n}\n", p.admin))
	stdout, stderr, err := runCaddyCommand(p.bin, dir, "", "sse-broadcast", "--channel", "news", "--data", "next door")
	require.NoError(t, err, "stderr: %s", stderr)
	var res Result
	require.NoError(t, json.Unmarshal([]byte(stdout), &res), "stdout: %s", stdout)
	assert.Equal(t, 1, res.Clients)
	assert.Equal(t, "next door", s.next().Data)
}

func TestCLIRefusesAConfigWhoseAdminEndpointIsOff(t *testing.T) {
	bin, err := caddyBinary()
	require.NoError(t, err)
	dir := writeCaddyfile(t, "{\n\tadmin off\n}\n")

	for _, args := range [][]string{
		{"sse-broadcast", "--data", "x"}, // the adjacent Caddyfile
		{"sse-broadcast", "--config", filepath.Join(dir, "Caddyfile"), "--data", "x"},
	} {
		_, stderr, err := runCaddyCommand(bin, dir, "", args...)
		var exitErr *exec.ExitError
		require.ErrorAs(t, err, &exitErr, "%q", args)
		assert.NotZero(t, exitErr.ExitCode(), "%q", args)
		assert.Contains(t, stderr, "admin endpoint is off", "%q", args)
		// Not tried, and failed, at the default address instead.
		assert.NotContains(t, stderr, caddy.DefaultAdminListen, "%q", args)
	}
}
