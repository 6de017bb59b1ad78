package natstransport

// The test harness: a NATS server with JetStream embedded in the test
// process, Caddy nodes as processes of their own (the binary built from
// ./cmd/caddy: Caddy is one per process), and streams read by a third-party
// SSE parser (github.com/tmaxmax/go-sse) alongside their raw bytes.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/stretchr/testify/require"
	sse "github.com/tmaxmax/go-sse"
)

// awaitTimeout bounds every wait for something a server must do; it is a
// deadline for failure, never a delay the tests sleep through.
const awaitTimeout = 15 * time.Second

// binaryDir holds the Caddy built for these tests; TestMain removes it.
var binaryDir string

func TestMain(m *testing.M) {
	code := m.Run()
	if binaryDir != "" {
		os.RemoveAll(binaryDir)
	}
	os.Exit(code)
}

// caddyBinary builds ./cmd/caddy, with this package in it, once per run.
var caddyBinary = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "natstransport-caddy-")
	if err != nil {
		return "", err
	}
	binaryDir = dir
	bin := filepath.Join(dir, "caddy")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/caddy-sse/ssebroadcast/cmd/caddy").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("building ./cmd/caddy: %v\n%s", err, out)
	}
	return bin, nil
})

// plainClient makes a new connection for each request, so that no idle
// connection outlives a test.
var plainClient = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}

// natsServer is a NATS server with JetStream, in this process, storing on
// a directory of the test's.
type natsServer struct {
	t    *testing.T
	dir  string
	port int
	srv  *server.Server
}

// startNATS starts a NATS server with JetStream on a free loopback port.
func startNATS(t *testing.T) *natsServer {
	t.Helper()
	n := &natsServer{t: t, dir: t.TempDir(), port: -1}
	n.start()
	n.port = n.srv.Addr().(*net.TCPAddr).Port
	t.Cleanup(n.shutdown)
	return n
}

// unstartedNATS is a NATS server that is not running yet, on a port that
// was free a moment ago.
func unstartedNATS(t *testing.T) *natsServer {
	t.Helper()
	_, port, err := net.SplitHostPort(freeAddrs(t, 1)[0])
	require.NoError(t, err)
	n := &natsServer{t: t, dir: t.TempDir()}
	n.port, err = strconv.Atoi(port)
	require.NoError(t, err)
	t.Cleanup(n.shutdown)
	return n
}

func (n *natsServer) start() {
	n.t.Helper()
	srv, err := server.NewServer(&server.Options{
		Host:      "127.0.0.1",
		Port:      n.port,
		JetStream: true,
		StoreDir:  n.dir,
		NoLog:     true,
		NoSigs:    true,
	})
	require.NoError(n.t, err)
	go srv.Start()
	require.True(n.t, srv.ReadyForConnections(awaitTimeout), "the NATS server did not start")
	n.srv = srv
}

// shutdown stops the server, as a NATS that goes down.
func (n *natsServer) shutdown() {
	if n.srv != nil {
		n.srv.Shutdown()
		n.srv.WaitForShutdown()
		n.srv = nil
	}
}

// restart starts the server again on the same port and store.
func (n *natsServer) restart() {
	n.t.Helper()
	n.shutdown()
	n.start()
}

func (n *natsServer) url() string { return fmt.Sprintf("nats://127.0.0.1:%d", n.port) }

// freeAddrs returns n distinct loopback addresses whose ports were free a
// moment ago.
func freeAddrs(t *testing.T, n int) []string {
	t.Helper()
	addrs := make([]string, n)
	for i := range addrs {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		defer ln.Close()
		addrs[i] = ln.Addr().String()
	}
	return addrs
}

// caddyNode is a Caddy running as its own process.
type caddyNode struct {
	t         *testing.T
	name      string // its node option, if the test gave one
	caddyfile string // path of its config file
	admin     string
	http      string
	cmd       *exec.Cmd
	output    *watchedBuffer
	exited    chan struct{}
}

// nodeCaddyfile is a node of the cluster: every node names the same NATS.
const nodeCaddyfile = `{
	admin {ADMIN}
	persist_config off
	sse {
		transport nats {
			url {NATS}
			publish_timeout {PUBLISH_TIMEOUT}
			{OPTIONS}
		}
	}
}
:{HTTP} {
	handle /several {
		sse_broadcast {
			channel news sports
			keepalive 200ms
		}
	}
	handle /backlog {
		sse_broadcast {
			channel news
			backlog 2
			keepalive 200ms
		}
	}
	handle {
		sse_broadcast {
			channel news
			keepalive 200ms
		}
	}
}
`

// startCaddyNode runs `caddy run` on nodeCaddyfile, connected to nats, and
// waits until it serves.
func startCaddyNode(t *testing.T, nats *natsServer) *caddyNode {
	t.Helper()
	return startCaddyNodeWith(t, []string{nats.url()}, "")
}

// startCaddyNodeWith runs `caddy run` on nodeCaddyfile, connected to the
// NATS servers at urls, with more of the transport's options (Caddyfile
// lines), and waits until it serves.
func startCaddyNodeWith(t *testing.T, urls []string, options string) *caddyNode {
	t.Helper()
	bin, err := caddyBinary()
	require.NoError(t, err)
	dir := t.TempDir()
	addrs := freeAddrs(t, 2)
	c := &caddyNode{
		t:         t,
		caddyfile: filepath.Join(dir, "Caddyfile"),
		admin:     addrs[0],
		http:      addrs[1],
		output:    newWatchedBuffer(),
		exited:    make(chan struct{}),
	}
	_, httpPort, _ := net.SplitHostPort(c.http)
	config := strings.NewReplacer("{ADMIN}", c.admin, "{HTTP}", httpPort, "{NATS}", strings.Join(urls, " "),
		"{PUBLISH_TIMEOUT}", publishTimeout.String(), "{OPTIONS}", options).Replace(nodeCaddyfile)
	require.NoError(t, os.WriteFile(c.caddyfile, []byte(config), 0o600))

	c.cmd = exec.Command(bin, "run", "--config", c.caddyfile, "--adapter", "caddyfile")
	c.cmd.Env = append(os.Environ(), "XDG_CONFIG_HOME="+dir, "XDG_DATA_HOME="+dir, "HOME="+dir)
	c.cmd.Stdout = c.output
	c.cmd.Stderr = c.output
	require.NoError(t, c.cmd.Start())
	go func() {
		_ = c.cmd.Wait()
		close(c.exited)
	}()
	t.Cleanup(func() {
		c.kill()
		if t.Failed() {
			t.Logf("caddy %s output:\n%s", c.http, c.output.String())
		}
	})
	c.output.awaitContains(t, `"msg":"serving initial configuration"`)
	return c
}

// publishTimeout is the nodes' publish_timeout: short, so that the tests
// of an unreachable NATS do not wait long.
const publishTimeout = 500 * time.Millisecond

// kill ends the process at once, as a crash would.
func (c *caddyNode) kill() {
	select {
	case <-c.exited:
	default:
		_ = c.cmd.Process.Kill()
		<-c.exited
	}
}

func (c *caddyNode) url(path string) string { return "http://" + c.http + path }

// apiResponse is an admin API answer.
type apiResponse struct {
	status int
	header http.Header
	body   []byte
}

// broadcast POSTs body to the node's /sse/broadcast.
func (c *caddyNode) broadcast(body string) apiResponse {
	c.t.Helper()
	resp, err := plainClient.Post("http://"+c.admin+"/sse/broadcast", "application/json", strings.NewReader(body))
	require.NoError(c.t, err)
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	require.NoError(c.t, err)
	return apiResponse{status: resp.StatusCode, header: resp.Header, body: data}
}

// result is one event's answer of /sse/broadcast.
type result struct {
	Channel string `json:"channel"`
	ID      string `json:"id"`
	Clients int    `json:"clients"`
}

// mustBroadcast publishes body and returns its answer, failing on anything
// but 200.
func (c *caddyNode) mustBroadcast(body string) result {
	c.t.Helper()
	resp := c.broadcast(body)
	require.Equal(c.t, http.StatusOK, resp.status, "%s", resp.body)
	var res result
	require.NoError(c.t, json.Unmarshal(resp.body, &res), "%s", resp.body)
	return res
}

// stream is one open text/event-stream, read by go-sse's parser while its
// raw bytes are kept.
type stream struct {
	t      *testing.T
	resp   *http.Response
	cancel context.CancelFunc
	events chan sse.Event
	raw    *watchedBuffer
	ended  chan struct{}
	quit   chan struct{}
	once   sync.Once
}

// openStream connects to url with header and waits until the server has
// subscribed the client, which it shows by writing the stream's first
// bytes.
func openStream(t *testing.T, url string, header http.Header) *stream {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	require.NoError(t, err)
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := plainClient.Do(req)
	if err != nil {
		cancel()
		require.NoError(t, err)
	}
	s := &stream{
		t:      t,
		resp:   resp,
		cancel: cancel,
		events: make(chan sse.Event, 1024),
		raw:    newWatchedBuffer(),
		ended:  make(chan struct{}),
		quit:   make(chan struct{}),
	}
	go func() {
		defer close(s.ended)
		defer close(s.events)
		for ev, err := range sse.Read(io.TeeReader(resp.Body, s.raw), nil) {
			if err != nil {
				return
			}
			select {
			case s.events <- ev:
			case <-s.quit:
				return
			}
		}
	}()
	t.Cleanup(s.close)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	s.raw.awaitContains(t, "\n\n")
	return s
}

// close leaves the stream, as a client that goes away does.
func (s *stream) close() {
	s.once.Do(func() { close(s.quit) })
	s.cancel()
	s.resp.Body.Close()
	<-s.ended
}

// next returns the next event the parser read.
func (s *stream) next() sse.Event {
	s.t.Helper()
	select {
	case ev, ok := <-s.events:
		require.True(s.t, ok, "stream ended while awaiting an event; it had read %q", s.raw.String())
		return ev
	case <-time.After(awaitTimeout):
		require.FailNow(s.t, "no event arrived", "the stream had read %q", s.raw.String())
		return sse.Event{}
	}
}

// read returns the next n events.
func (s *stream) read(n int) []sse.Event {
	s.t.Helper()
	events := make([]sse.Event, n)
	for i := range events {
		events[i] = s.next()
	}
	return events
}

// readData returns the data of the next n events.
func (s *stream) readData(n int) []string {
	s.t.Helper()
	data := make([]string, n)
	for i, ev := range s.read(n) {
		data[i] = ev.Data
	}
	return data
}

// watchedBuffer is a byte buffer that can be awaited for content.
type watchedBuffer struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	changed chan struct{} // closed and replaced on every write
}

func newWatchedBuffer() *watchedBuffer {
	return &watchedBuffer{changed: make(chan struct{})}
}

func (b *watchedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	n, err := b.buf.Write(p)
	close(b.changed)
	b.changed = make(chan struct{})
	return n, err
}

func (b *watchedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// awaitContains waits until the buffer holds substr.
func (b *watchedBuffer) awaitContains(t *testing.T, substr string) {
	t.Helper()
	b.awaitCount(t, substr, 1)
}

// awaitCount waits until substr occurs n times in the buffer.
func (b *watchedBuffer) awaitCount(t *testing.T, substr string, n int) {
	t.Helper()
	deadline := time.After(awaitTimeout)
	for {
		b.mu.Lock()
		content, changed := b.buf.String(), b.changed
		b.mu.Unlock()
		if strings.Count(content, substr) >= n {
			return
		}
		select {
		case <-changed:
		case <-deadline:
			require.FailNowf(t, "content not seen", "awaited %d× %q; had read %q", n, substr, content)
		}
	}
}
