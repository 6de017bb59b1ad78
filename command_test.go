package ssebroadcast

// Tests of `caddy sse-broadcast` as a user meets it at a shell, beyond the
// basics in process_test.go. Each runs the binary built from ./cmd/caddy,
// most against a Caddy running as its own process, and checks what a
// client's stream received, the exit status and the messages.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

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

// reloadingProcessCaddyfile serves a channel whose clients reconnect 20 ms
// after a reload ends their stream.
const reloadingProcessCaddyfile = `{
	admin {ADMIN}
	persist_config off
}
:{HTTP} {
	sse_broadcast {
		channel live
		retry 20ms
		keepalive off
	}
}
`

// reloadContinuously loads the process's config again and again, each load
// replacing the admin endpoint, until the returned function is called (or
// the test ends); that function waits for the last load and returns how
// many succeeded.
func (p *caddyProcess) reloadContinuously(t *testing.T) (stop func() int64) {
	t.Helper()
	config := p.adminGet(t, "/config/")
	var loads atomic.Int64
	quit, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-quit:
				return
			default:
			}
			req, err := http.NewRequest(http.MethodPost, "http://"+p.admin+"/load", bytes.NewReader(config))
			if err != nil {
				t.Errorf("making a load request: %v", err)
				return
			}
			req.Header.Set("Content-Type", "application/json")
			// The same config again: without this Caddy would skip it.
			req.Header.Set("Cache-Control", "must-revalidate")
			resp, err := plainClient.Do(req)
			if err != nil {
				// This load met the closing admin endpoint, as the
				// command's requests are meant to; it is sent again.
				time.Sleep(time.Millisecond) // backoff before a retry, not synchronisation
				continue
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Errorf("loading the config: HTTP %d: %s", resp.StatusCode, body)
				return
			}
			loads.Add(1)
		}
	}()
	stop = sync.OnceValue(func() int64 {
		close(quit)
		<-done
		return loads.Load()
	})
	// A test that fails before it stops the loads must not leave them
	// running against a process its cleanup is about to kill.
	t.Cleanup(func() { stop() })
	return stop
}

func TestCLIPublishesEachEventOnceWhileConfigsAreReloaded(t *testing.T) {
	p := startCaddyProcess(t, reloadingProcessCaddyfile)
	client := connectBrowserLike(t, p.url("/"))
	ts := &testServer{t: t, admin: p.admin}
	require.Eventually(t, func() bool { return ts.stats().Clients == 1 }, awaitTimeout, 5*time.Millisecond)
	// Each load ends the stream; the client resumes from the last id it
	// received, so it must hold one before the loads begin.
	ts.mustBroadcast(`{"channel":"live","data":"0"}`)
	require.Eventually(t, func() bool {
		client.mu.Lock()
		defer client.mu.Unlock()
		return len(client.data) == 1
	}, awaitTimeout, time.Millisecond)

	const events = 30
	stopReloading := p.reloadContinuously(t)
	for i := 1; i <= events; i++ {
		_, stderr, err := p.command("", "sse-broadcast", "--address", p.admin, "--channel", "live", "--data", strconv.Itoa(i))
		require.NoError(t, err, "publish %d during reloads: stderr: %s", i, stderr)
	}
	loads := stopReloading()
	t.Logf("%d config loads during %d publishes", loads, events)
	require.NotZero(t, loads, "no config was loaded while the command published")

	_, stderr, err := p.command("", "sse-broadcast", "--address", p.admin, "--channel", "live", "--event", "end", "--data", "end")
	require.NoError(t, err, "stderr: %s", stderr)
	select {
	case <-client.done:
	case <-time.After(awaitTimeout):
		require.FailNow(t, "the client did not receive the end event")
	}
	client.mu.Lock()
	defer client.mu.Unlock()
	assert.Equal(t, numbers(0, events), client.data, "the client must receive every event exactly once, in order")
}

// standInAdmin stands in for an admin endpoint, to count what the command
// sends it. It records each request's body and Origin header.
type standInAdmin struct {
	url     string
	mu      sync.Mutex
	bodies  []string
	origins []string
}

// startStandInAdmin serves a standInAdmin that closes the connections of the
// first drops requests it reads, unanswered, as an admin endpoint being
// replaced does, and answers every later one with status and body.
func startStandInAdmin(t *testing.T, drops int, status int, body string) *standInAdmin {
	t.Helper()
	a := &standInAdmin{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		a.mu.Lock()
		a.bodies = append(a.bodies, string(b))
		a.origins = append(a.origins, r.Header.Get("Origin"))
		n := len(a.bodies)
		a.mu.Unlock()
		if n <= drops {
			conn, _, err := http.NewResponseController(w).Hijack()
			if err != nil {
				t.Errorf("taking over the connection: %v", err)
				return
			}
			conn.Close()
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		io.WriteString(w, body)
	}))
	t.Cleanup(srv.Close)
	a.url = srv.URL
	return a
}

// requests returns the bodies and origins of the requests received so far.
func (a *standInAdmin) requests() ([]string, []string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.bodies), slices.Clone(a.origins)
}

func TestCLISendsAgainOnlyARequestThatGotNoAnswer(t *testing.T) {
	bin, err := caddyBinary()
	require.NoError(t, err)
	publish := func(a *standInAdmin) (string, string, error) {
		return runCaddyCommand(bin, "", "", "sse-broadcast", "--address", strings.TrimPrefix(a.url, "http://"), "--channel", "news", "--data", "x")
	}
	const answer = `{"channel":"news","id":"1","clients":0}`

	t.Run("unanswered, then answered", func(t *testing.T) {
		a := startStandInAdmin(t, 2, http.StatusOK, answer)
		stdout, stderr, err := publish(a)
		require.NoError(t, err, "stderr: %s", stderr)
		assert.Equal(t, answer, stdout)
		bodies, origins := a.requests()
		require.Len(t, bodies, 3, "two requests dropped unanswered, the third answered")
		assert.Equal(t, bodies[0], bodies[1], "the same request each time")
		assert.Equal(t, bodies[0], bodies[2], "the same request each time")
		// The Origin that an admin endpoint with enforce_origin requires.
		assert.Equal(t, []string{a.url, a.url, a.url}, origins)
	})

	t.Run("answered with an error", func(t *testing.T) {
		a := startStandInAdmin(t, 0, http.StatusServiceUnavailable, `{"error":"busy"}`)
		_, stderr, err := publish(a)
		var exitErr *exec.ExitError
		require.ErrorAs(t, err, &exitErr)
		assert.Contains(t, stderr, "HTTP 503")
		bodies, _ := a.requests()
		assert.Len(t, bodies, 1, "a request that got an answer, whatever its status, may have been processed")
	})

	t.Run("never answered", func(t *testing.T) {
		a := startStandInAdmin(t, adminAttempts+1, http.StatusOK, answer)
		start := time.Now()
		_, stderr, err := publish(a)
		elapsed := time.Since(start)
		var exitErr *exec.ExitError
		require.ErrorAs(t, err, &exitErr)
		assert.Contains(t, stderr, fmt.Sprintf("no answer from the admin endpoint at %s in %d attempts", strings.TrimPrefix(a.url, "http://"), adminAttempts))
		bodies, _ := a.requests()
		assert.Len(t, bodies, adminAttempts)
		assert.Less(t, elapsed, 5*time.Second, "the retries must be brief")
	})
}
