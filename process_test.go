package ssebroadcast

// Tests that run Caddy as users do: the binary built from ./cmd/caddy, run
// as its own process, driven by its own commands.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// binaryDir holds the Caddy built for these tests; TestMain removes it.
var binaryDir string

// caddyBinary builds ./cmd/caddy once per test run.
var caddyBinary = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "ssebroadcast-caddy-")
	if err != nil {
		return "", err
	}
	binaryDir = dir
	bin := filepath.Join(dir, "caddy")
	out, err := exec.Command("go", "build", "-o", bin, "./cmd/caddy").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("building ./cmd/caddy: %v\n%s", err, out)
	}
	return bin, nil
})

// caddyProcess is a Caddy running as its own process.
type caddyProcess struct {
	t          *testing.T
	bin        string
	caddyfile  string // path of its config file
	admin      string
	http       string
	cmd        *exec.Cmd
	output     *watchedBuffer
	exited     chan struct{}
	exitStatus error
}

// startCaddyProcess runs `caddy run` on a Caddyfile written to a temporary
// directory ({ADMIN} and {HTTP} stand for free ports) and waits until its
// site accepts connections.
func startCaddyProcess(t *testing.T, caddyfile string) *caddyProcess {
	t.Helper()
	bin, err := caddyBinary()
	require.NoError(t, err)

	dir := t.TempDir()
	addrs := freeAddrs(t, 2)
	p := &caddyProcess{
		t:         t,
		bin:       bin,
		caddyfile: filepath.Join(dir, "Caddyfile"),
		admin:     addrs[0],
		http:      addrs[1],
		output:    newWatchedBuffer(),
		exited:    make(chan struct{}),
	}
	_, httpPort, _ := net.SplitHostPort(p.http)
	caddyfile = strings.NewReplacer("{ADMIN}", p.admin, "{HTTP}", httpPort).Replace(caddyfile)
	require.NoError(t, os.WriteFile(p.caddyfile, []byte(caddyfile), 0o600))

	p.cmd = exec.Command(bin, "run", "--config", p.caddyfile, "--adapter", "caddyfile")
	p.cmd.Env = append(os.Environ(), "XDG_CONFIG_HOME="+dir, "XDG_DATA_HOME="+dir, "HOME="+dir)
	p.cmd.Stdout = p.output
	p.cmd.Stderr = p.output
	require.NoError(t, p.cmd.Start())
	go func() {
		p.exitStatus = p.cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			_ = p.cmd.Process.Kill()
			<-p.exited
		}
		if t.Failed() {
			t.Logf("caddy output:\n%s", p.output.String())
		}
	})

	p.output.awaitContains(t, `"msg":"serving initial configuration"`)
	return p
}

func (p *caddyProcess) url(path string) string { return "http://" + p.http + path }

// adminGet reads path from the process's admin endpoint.
func (p *caddyProcess) adminGet(t *testing.T, path string) []byte {
	t.Helper()
	resp, err := plainClient.Get("http://" + p.admin + path)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode, "%s", body)
	return body
}

// command runs the Caddy binary with args and stdin, and returns its
// standard output, standard error and exit error.
func (p *caddyProcess) command(stdin string, args ...string) (string, string, error) {
	return runCaddyCommand(p.bin, "", stdin, args...)
}

// runCaddyCommand runs the Caddy binary bin with args and stdin in the
// working directory dir (the test's own if dir is empty), as a user at a
// shell in dir would, and returns its standard output, standard error and
// exit error.
func runCaddyCommand(bin, dir, stdin string, args ...string) (string, string, error) {
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	cmd.Stdin = strings.NewReader(stdin)
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	err := cmd.Run()
	return stdout.String(), stderr.String(), err
}

const processCaddyfile = `{
	admin {ADMIN}
	persist_config off
}
:{HTTP} {
	sse_broadcast {
		channel news
		keepalive off
	}
}
`

func TestCLIBroadcastsToARunningCaddy(t *testing.T) {
	p := startCaddyProcess(t, processCaddyfile)
	s := openStream(t, nil, p.url("/"))

	stdout, stderr, err := p.command("", "sse-broadcast", "--address", p.admin,
		"--event", "tick", "--data", `{"i":1}`, "--id", "1", "--retry", "3000", "--channel", "news")
	require.NoError(t, err, "stderr: %s", stderr)
	var res Result
	require.NoError(t, json.Unmarshal([]byte(stdout), &res), "stdout: %s", stdout)
	assert.Equal(t, Result{Channel: "news", ID: "1", Clients: 1}, res)

	ev := s.next()
	assert.Equal(t, "tick", ev.Type)
	assert.Equal(t, `{"i":1}`, ev.Data)
	assert.Equal(t, "1", ev.LastEventID)
	assert.Equal(t, ": open\n\nid: 1\nevent: tick\nretry: 3000\ndata: {\"i\":1}\n\n", s.raw.String())

	// --data - reads standard input; --config finds the admin endpoint
	// in the config file, as `caddy reload` does.
	_, stderr, err = p.command("line one\nline two", "sse-broadcast", "--config", p.caddyfile, "--channel", "news", "--data", "-")
	require.NoError(t, err, "stderr: %s", stderr)
	ev = s.next()
	assert.Equal(t, "line one\nline two", ev.Data)
	assert.Equal(t, "", ev.Type)

	// --client sends to one client, found through the admin API.
	list := p.adminGet(t, "/sse/clients")
	var clients struct{ Clients []ClientInfo }
	require.NoError(t, json.Unmarshal(list, &clients))
	require.Len(t, clients.Clients, 1)
	stdout, stderr, err = p.command("", "sse-broadcast", "--address", p.admin, "--client", clients.Clients[0].ID, "--data", "just you")
	require.NoError(t, err, "stderr: %s", stderr)
	require.NoError(t, json.Unmarshal([]byte(stdout), &res), "stdout: %s", stdout)
	assert.Equal(t, 1, res.Clients)
	assert.Equal(t, "news", res.Channel)
	assert.Equal(t, "just you", s.next().Data)
}

func TestCLIReportsARejectedEventWithANonZeroExit(t *testing.T) {
	p := startCaddyProcess(t, processCaddyfile)
	s := openStream(t, nil, p.url("/"))

	_, stderr, err := p.command("", "sse-broadcast", "--address", p.admin, "--channel", "news",
		"--event", "bad\nname", "--data", "x")
	var exitErr *exec.ExitError
	require.ErrorAs(t, err, &exitErr)
	assert.NotZero(t, exitErr.ExitCode())
	assert.Contains(t, stderr, "HTTP 400")
	assert.Contains(t, stderr, "must not contain a line break")

	_, stderr, err = p.command("", "sse-broadcast", "--address", p.admin, "--channel", "news", "--retry", "-5", "--data", "x")
	require.ErrorAs(t, err, &exitErr)
	assert.Contains(t, stderr, "must be a non-negative whole number of milliseconds")

	unreachable := freeAddrs(t, 1)[0]
	_, stderr, err = p.command("", "sse-broadcast", "--address", unreachable, "--data", "x")
	require.ErrorAs(t, err, &exitErr)
	assert.Contains(t, stderr, "connection refused")

	_, _, err = p.command("", "sse-broadcast", "--address", p.admin, "--channel", "news", "--data", "sentinel")
	require.NoError(t, err)
	assert.Equal(t, "sentinel", s.next().Data, "the rejected events must not reach the client")
}

func TestCaddyStopIsPromptWithAThousandOpenStreams(t *testing.T) {
	p := startCaddyProcess(t, processCaddyfile)
	streams := make([]*stream, 1000)
	for i := range streams {
		streams[i] = openStream(t, nil, p.url("/"))
	}
	ts := &testServer{t: t, admin: p.admin}
	require.Equal(t, 1000, ts.stats().Clients)

	start := time.Now()
	_, stderr, err := p.command("", "stop", "--address", p.admin)
	require.NoError(t, err, "stderr: %s", stderr)
	select {
	case <-p.exited:
	case <-time.After(awaitTimeout):
		require.FailNow(t, "caddy did not exit after caddy stop")
	}
	elapsed := time.Since(start)
	assert.NoError(t, p.exitStatus)
	assert.Less(t, elapsed, 2*time.Second, "caddy stop with 1,000 open streams took %s", elapsed)
	for _, s := range streams {
		s.awaitEnd()
	}
}

// stop stops the process with `caddy stop` and waits for it to exit.
func (p *caddyProcess) stop() {
	p.t.Helper()
	_, stderr, err := p.command("", "stop", "--address", p.admin)
	require.NoError(p.t, err, "stderr: %s", stderr)
	select {
	case <-p.exited:
	case <-time.After(awaitTimeout):
		require.FailNow(p.t, "caddy did not exit after caddy stop")
	}
}

// broadcastWithCLI publishes one event with `caddy sse-broadcast`.
func (p *caddyProcess) broadcastWithCLI(data string) Result {
	p.t.Helper()
	stdout, stderr, err := p.command("", "sse-broadcast", "--address", p.admin, "--channel", "news", "--data", data)
	require.NoError(p.t, err, "stderr: %s", stderr)
	var res Result
	require.NoError(p.t, json.Unmarshal([]byte(stdout), &res), "stdout: %s", stdout)
	return res
}

// After a restart the window is empty, and the ids go on above those handed
// out before: a client that resumes with an id from before the restart gets
// every event published since.
func TestIdsStayOrderedAcrossARestart(t *testing.T) {
	first := startCaddyProcess(t, processCaddyfile)
	before := first.broadcastWithCLI("before restart")
	first.stop()

	second := startCaddyProcess(t, processCaddyfile)
	after := []Result{second.broadcastWithCLI("after restart 1"), second.broadcastWithCLI("after restart 2")}
	assert.Less(t, before.ID, after[0].ID, "a restarted Caddy must not hand out an id that sorts below an earlier one")
	assert.Less(t, after[0].ID, after[1].ID)

	s := openStreamWithHeader(t, second.url("/"), http.Header{"Last-Event-Id": {before.ID}})
	assert.Equal(t, resetNotice{Reason: "restart", Channels: []string{"news"}}, s.nextReset(),
		"what was published between the id and the restart is gone with the process")
	assert.Equal(t, []string{"after restart 1", "after restart 2"}, s.readData(2))
}
