// Command ssebench puts load on a Server-Sent Events broadcaster: it holds
// many streams open, publishes numbered and timestamped events through the
// server's publish endpoint, and checks that every stream got every event
// exactly once and in order. It reports delivery latency and throughput, and,
// given the server's pid, the server's memory per idle stream and CPU time
// per delivery.
//
// One run is one workload against one server:
//
//	ssebench -stream http://127.0.0.1:8090/ -publisher admin \
//	    -publish http://localhost:2019/sse/broadcast -clients 1000 -events 1000 -pid 1234
//
//	ssebench -stream http://127.0.0.1:8080/sub/bench -publisher nchan \
//	    -publish http://127.0.0.1:8080/pub/bench -pid "$(cat nginx.pid)"
//
// or against several nodes that deliver every event to their own clients,
// such as Caddy nodes on one NATS, with comma-separated lists:
//
//	ssebench -stream http://127.0.0.1:8093/,http://127.0.0.1:8094/ -publisher admin \
//	    -publish http://localhost:2996/sse/broadcast,http://localhost:2997/sse/broadcast \
//	    -publishers 4 -pid "$node_a,$node_b" -aux-pid "$nats"
//
// Client i connects to stream URL i mod the number of stream URLs. Event i
// is published by publisher i mod -publishers, to publish URL i mod the
// number of publish URLs; each publisher publishes its events one after the
// other, and the publishers run at once. The server's figures are summed
// over the -pid processes and their descendants; the -aux-pid processes,
// such as a NATS server, are reported beside them, not in them.
//
// Streams are HTTP/1.1 (-proto h1, the default), one connection per stream,
// over TLS for an https URL. -proto h2 holds each stream on a TLS
// connection of its own speaking HTTP/2, and -proto h3 on a QUIC connection
// of its own speaking HTTP/3, as separate browsers would; both take TLS 1.3
// and do not verify the server's certificate, so that self-signed and
// internal ones serve:
//
//	ssebench -proto h2 -stream https://localhost:8443/ -publisher admin \
//	    -publish http://localhost:2019/sse/broadcast -pid 1234
//
// With one publisher, every stream must receive the events in the order
// they were published. With several, events of two publishers have no order
// relative to each other, so each stream must receive each publisher's
// events in that publisher's order.
//
// The result goes to standard output as one JSON line, so that runs can be
// appended to a file, and to standard error as one line for people, after
// the progress notes. The exit status is 0 if every delivery arrived once and
// in order, 1 if some were lost, duplicated, out of order or malformed, and 2
// if the run could not be carried out.
//
// Event i's data is "<i> <publish time in Unix nanoseconds> " padded with 'x'
// to -size bytes. The latency of a delivery is the time it was read minus
// that publish time; both come from this process's clock, and include this
// process's own scheduling delays, which grow when it competes with the
// server for CPUs.
package main

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"math"
	"mime"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

const (
	// readBufSize is each stream's read buffer, twice over: one under the
	// HTTP response and one under the SSE line parser. Lines longer than
	// that are not gathered, since only their start matters (see client.read).
	readBufSize = 4 << 10

	// headMax is how much of an event's data is kept: enough for the header
	// "<i> <nanoseconds> ", which is at most 10+1+19+1 bytes.
	headMax = 48

	// clockTicks is the unit of the CPU times in /proc/<pid>/stat: USER_HZ,
	// which is 100 on Linux for all the common architectures.
	clockTicks = 100

	// Exit statuses.
	exitFaulty = 1 // deliveries were lost, duplicated, out of order or malformed
	exitFailed = 2 // the run could not be carried out
)

// config is the run, as the flags give it.
type config struct {
	proto           string
	streamURLs      []string
	clients         int
	events          int
	rate            float64
	size            int
	publisher       string
	publishURLs     []string
	publishers      int
	channel         string
	pids            []int
	auxPIDs         []int
	label           string
	connectTimeout  time.Duration
	idleWait        time.Duration
	drainTimeout    time.Duration
	dialConcurrency int
}

func main() {
	log.SetFlags(0)
	log.SetPrefix("ssebench: ")
	cfg, err := parseFlags(os.Args[1:])
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		log.Print(err)
		os.Exit(exitFailed)
	}
	code, err := run(cfg, os.Stdout, os.Stderr)
	if err != nil {
		log.Print(err)
	}
	os.Exit(code)
}

func parseFlags(args []string) (config, error) {
	var cfg config
	var streamURLs, publishURLs, pids, auxPIDs string
	fs := flag.NewFlagSet("ssebench", flag.ContinueOnError)
	fs.StringVar(&cfg.proto, "proto", "h1", `how each stream is carried, each on its own connection: "h1" is HTTP/1.1 (over TLS for https URLs), "h2" HTTP/2 over TLS, "h3" HTTP/3 over QUIC; h2 and h3 take https URLs and do not verify the server's certificate`)
	fs.StringVar(&streamURLs, "stream", "", "URL of the SSE stream to GET (http or https), or a comma-separated list of them, one per node: client i connects to URL i mod their number")
	fs.IntVar(&cfg.clients, "clients", 1000, "number of streams to hold open, each on its own connection")
	fs.IntVar(&cfg.events, "events", 1000, "number of events to publish")
	fs.Float64Var(&cfg.rate, "rate", 0, "events per second to publish, over all publishers; 0 publishes one after the other as fast as the server answers")
	fs.IntVar(&cfg.size, "size", 100, "payload bytes per event (at least the header \"<i> <nanoseconds> \")")
	fs.StringVar(&cfg.publisher, "publisher", "admin", `how to publish: "admin" posts {"channel","data"} JSON, "nchan" posts the raw payload as text/plain`)
	fs.StringVar(&publishURLs, "publish", "", "URL to POST each event to, e.g. http://localhost:2019/sse/broadcast, or a comma-separated list of them: event i goes to URL i mod their number")
	fs.IntVar(&cfg.publishers, "publishers", 1, "number of publishers posting at once, each its events one after the other: event i is publisher i mod their number's")
	fs.StringVar(&cfg.channel, "channel", "bench", "channel to publish on (admin publisher only)")
	fs.StringVar(&pids, "pid", "", "server process id, or a comma-separated list of them (one per node), for RSS and CPU time from /proc, summed over them and their descendants (nginx workers); empty or 0 skips them")
	fs.StringVar(&auxPIDs, "aux-pid", "", "process ids of a service the server depends on, such as a NATS server, comma-separated: their CPU time, with their descendants', is reported apart from the server's")
	fs.StringVar(&cfg.label, "label", "", "text to identify the run in the result")
	fs.DurationVar(&cfg.connectTimeout, "connect-timeout", 60*time.Second, "how long all clients together may take to connect")
	fs.DurationVar(&cfg.idleWait, "idle-wait", 2*time.Second, "how long to let the server settle after all clients connect, before reading its idle RSS")
	fs.DurationVar(&cfg.drainTimeout, "drain-timeout", 30*time.Second, "how long after the last publish to wait for every delivery")
	fs.IntVar(&cfg.dialConcurrency, "dial-concurrency", 200, "connections being opened at once")
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	if fs.NArg() > 0 {
		return cfg, fmt.Errorf("unexpected arguments %q: every setting is a flag", fs.Args())
	}
	var err error
	if cfg.streamURLs, err = splitList("-stream", streamURLs); err != nil {
		return cfg, err
	}
	if cfg.publishURLs, err = splitList("-publish", publishURLs); err != nil {
		return cfg, err
	}
	// A lone 0 is what -pid took before it took lists: no server to measure.
	if pids != "0" {
		if cfg.pids, err = parsePIDs("-pid", pids); err != nil {
			return cfg, err
		}
	}
	if cfg.auxPIDs, err = parsePIDs("-aux-pid", auxPIDs); err != nil {
		return cfg, err
	}

	switch {
	case len(cfg.streamURLs) == 0:
		return cfg, errors.New("-stream is required")
	case len(cfg.publishURLs) == 0:
		return cfg, errors.New("-publish is required")
	case cfg.proto != "h1" && cfg.proto != "h2" && cfg.proto != "h3":
		return cfg, fmt.Errorf(`-proto must be "h1", "h2" or "h3", got %q`, cfg.proto)
	case cfg.publisher != "admin" && cfg.publisher != "nchan":
		return cfg, fmt.Errorf(`-publisher must be "admin" or "nchan", got %q`, cfg.publisher)
	case cfg.clients < 1:
		return cfg, fmt.Errorf("-clients must be at least 1, got %d", cfg.clients)
	case cfg.events < 1:
		return cfg, fmt.Errorf("-events must be at least 1, got %d", cfg.events)
	case cfg.size < 0:
		return cfg, fmt.Errorf("-size must not be negative, got %d", cfg.size)
	case cfg.rate < 0 || cfg.rate > 1e9 || math.IsNaN(cfg.rate):
		return cfg, fmt.Errorf("-rate must be between 0 and 1e9 events per second, got %g", cfg.rate)
	case cfg.dialConcurrency < 1:
		return cfg, fmt.Errorf("-dial-concurrency must be at least 1, got %d", cfg.dialConcurrency)
	case cfg.publishers < 1:
		return cfg, fmt.Errorf("-publishers must be at least 1, got %d", cfg.publishers)
	case cfg.publishers > cfg.events:
		return cfg, fmt.Errorf("-publishers (%d) must not be more than -events (%d): each publishes at least one", cfg.publishers, cfg.events)
	}
	for _, pid := range cfg.auxPIDs {
		if slices.Contains(cfg.pids, pid) {
			return cfg, fmt.Errorf("process %d is in both -pid and -aux-pid: its CPU time would count twice", pid)
		}
	}
	if cfg.proto != "h1" {
		for _, u := range cfg.streamURLs {
			if !strings.HasPrefix(u, "https://") {
				return cfg, fmt.Errorf("-proto %s runs over TLS: -stream %q must be an https URL", cfg.proto, u)
			}
		}
	}
	return cfg, nil
}

// splitList splits a flag's comma-separated list; an empty flag is an
// empty list, an empty item an error.
func splitList(flagName, list string) ([]string, error) {
	if list == "" {
		return nil, nil
	}
	items := strings.Split(list, ",")
	for i, item := range items {
		items[i] = strings.TrimSpace(item)
		if items[i] == "" {
			return nil, fmt.Errorf("%s %q: an empty item in the comma-separated list", flagName, list)
		}
	}
	return items, nil
}

// parsePIDs reads a flag's comma-separated process ids, each positive and
// given once.
func parsePIDs(flagName, list string) ([]int, error) {
	items, err := splitList(flagName, list)
	if err != nil {
		return nil, err
	}
	pids := make([]int, 0, len(items))
	for _, item := range items {
		pid, err := strconv.Atoi(item)
		if err != nil || pid < 1 {
			return nil, fmt.Errorf("%s: %q is not a process id (a positive whole number)", flagName, item)
		}
		if slices.Contains(pids, pid) {
			return nil, fmt.Errorf("%s: process %d is listed twice", flagName, pid)
		}
		pids = append(pids, pid)
	}
	return pids, nil
}

// run carries out the workload and reports it, returning the exit status.
// The result goes to out as JSON and to human as a line for people.
func run(cfg config, out, human io.Writer) (int, error) {
	if err := raiseFileLimit(uint64(cfg.clients) + 64); err != nil {
		return exitFailed, err
	}
	targets := make([]*streamTarget, len(cfg.streamURLs))
	for i, u := range cfg.streamURLs {
		var err error
		if targets[i], err = newStreamTarget(u, cfg.proto); err != nil {
			return exitFailed, err
		}
	}
	pubs := newPublishers(cfg)

	var before, idle, after, auxIdle, auxAfter procSample
	var err error
	if len(cfg.pids) > 0 {
		if before, err = sampleProcesses("-pid", cfg.pids); err != nil {
			return exitFailed, err
		}
	}

	over := ""
	if cfg.proto != "h1" {
		over = " over " + cfg.proto
	}
	log.Printf("connecting %d clients%s to %s", cfg.clients, over, strings.Join(cfg.streamURLs, ", "))
	connectStart := time.Now()
	st, err := connectAll(cfg, targets)
	if err != nil {
		return exitFailed, err
	}
	connectTime := time.Since(connectStart)
	log.Printf("connected %d clients in %.2fs", cfg.clients, connectTime.Seconds())

	time.Sleep(cfg.idleWait)
	if len(cfg.pids) > 0 {
		if idle, err = sampleProcesses("-pid", cfg.pids); err != nil {
			return exitFailed, err
		}
	}
	if len(cfg.auxPIDs) > 0 {
		if auxIdle, err = sampleProcesses("-aux-pid", cfg.auxPIDs); err != nil {
			return exitFailed, err
		}
	}

	by := ""
	if cfg.publishers > 1 {
		by = fmt.Sprintf(" by %d publishers at once", cfg.publishers)
	}
	log.Printf("publishing %d events of %d bytes%s to %s", cfg.events, cfg.size, by, strings.Join(cfg.publishURLs, ", "))
	firstPublish := time.Now()
	if err := publishAll(cfg, pubs); err != nil {
		return exitFailed, err
	}
	publishTime := time.Since(firstPublish)
	log.Printf("published in %.2fs; waiting for deliveries", publishTime.Seconds())

	drain := time.NewTimer(cfg.drainTimeout)
	select {
	case <-st.settled:
		drain.Stop()
	case <-drain.C:
		log.Printf("drain timeout: %d clients still waiting after %s", st.unsettled.Load(), cfg.drainTimeout)
	}
	if len(cfg.pids) > 0 {
		if after, err = sampleProcesses("-pid", cfg.pids); err != nil {
			return exitFailed, err
		}
	}
	if len(cfg.auxPIDs) > 0 {
		if auxAfter, err = sampleProcesses("-aux-pid", cfg.auxPIDs); err != nil {
			return exitFailed, err
		}
	}
	st.closeAll()

	res := summarize(cfg, st.clients, firstPublish)
	res.TLS = st.tls
	res.ConnectSeconds = round3(connectTime.Seconds())
	res.PublishSeconds = round3(publishTime.Seconds())
	if publishTime > 0 {
		res.PublishesPerSec = math.Round(float64(cfg.events) / publishTime.Seconds())
	}
	if len(cfg.pids) > 0 {
		res.addServer(before, idle, after)
	}
	if len(cfg.auxPIDs) > 0 {
		res.addAux(auxIdle, auxAfter)
	}
	if err := res.print(out, human); err != nil {
		return exitFailed, err
	}
	if res.StreamErrors > 0 {
		log.Printf("%d streams ended early; the first: %v", res.StreamErrors, st.firstError())
	}
	if res.Lost+res.Duplicates+res.OutOfOrder+res.Malformed > 0 {
		return exitFaulty, nil
	}
	return 0, nil
}

// raiseFileLimit makes room for a descriptor per client. Go raises the soft
// RLIMIT_NOFILE to the hard limit at start since 1.19; doing it here too
// keeps that from being an assumption, and a clear error beats a dial
// failing with "too many open files" halfway through.
func raiseFileLimit(need uint64) error {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return fmt.Errorf("reading the open file limit: %w", err)
	}
	if lim.Cur < lim.Max {
		lim.Cur = lim.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
			return fmt.Errorf("raising the open file limit to %d: %w", lim.Max, err)
		}
	}
	if lim.Cur < need {
		return fmt.Errorf("the open file limit is %d, and the clients need about %d: raise the hard limit (ulimit -Hn)", lim.Cur, need)
	}
	return nil
}

// streamTarget is what every client sends and where. For h1 the request is
// written once as bytes, and each client writes them to its own connection,
// since http.Transport would add two goroutines and two buffers per stream;
// h2 does the same with the connection's opening frames (see h2.go); h3
// goes through quic-go's client (see h3.go).
type streamTarget struct {
	proto   string
	addr    string
	tls     *tls.Config // nil for http
	req     *http.Request
	request []byte // h1: the request; h2: the connection's first flight
}

func newStreamTarget(rawURL, proto string) (*streamTarget, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("parsing -stream: %w", err)
	}
	t := &streamTarget{proto: proto}
	port := u.Port()
	switch u.Scheme {
	case "http":
		if port == "" {
			port = "80"
		}
	case "https":
		if port == "" {
			port = "443"
		}
		if proto == "h1" {
			// HTTP/1.1 only, so that each stream has a connection of its own.
			t.tls = &tls.Config{ServerName: u.Hostname(), NextProtos: []string{"http/1.1"}}
		} else {
			t.tls = browserTLS(u.Hostname(), proto)
		}
	default:
		return nil, fmt.Errorf("-stream must be an http or https URL, got %q", rawURL)
	}
	t.addr = net.JoinHostPort(u.Hostname(), port)
	if proto != "h1" {
		// Resolved once, IPv4 first as net.ResolveTCPAddr and quic-go
		// resolve, so that every client of h2 and h3 alike dials the
		// same address.
		ip, err := net.ResolveTCPAddr("tcp", t.addr)
		if err != nil {
			return nil, fmt.Errorf("resolving -stream %q: %w", rawURL, err)
		}
		t.addr = ip.String()
	}

	t.req, err = http.NewRequest(http.MethodGet, rawURL, nil)
	if err != nil {
		return nil, fmt.Errorf("making the stream request: %w", err)
	}
	t.req.Header.Set("Accept", "text/event-stream")
	t.req.Header.Set("Cache-Control", "no-cache")
	t.req.Header.Set("User-Agent", "ssebench")
	switch proto {
	case "h1":
		var buf bytes.Buffer
		if err := t.req.Write(&buf); err != nil {
			return nil, fmt.Errorf("writing the stream request: %w", err)
		}
		t.request = buf.Bytes()
	case "h2":
		t.request = h2FirstFlight(t.req)
	}
	return t, nil
}

// browserTLS is the TLS a browser offers for HTTP/2 or HTTP/3: TLS 1.3
// with Go's default key exchanges (X25519MLKEM768, X25519, P-256, P-384,
// as current browsers offer), the server's certificate accepted unverified.
func browserTLS(serverName, proto string) *tls.Config {
	return &tls.Config{
		ServerName: serverName,
		NextProtos: []string{proto},
		MinVersion: tls.VersionTLS13,
		// The bench's servers have self-signed and internal certificates.
		InsecureSkipVerify: true,
	}
}

// openStream is one client's open stream.
type openStream struct {
	conn io.Closer // ends the stream and its connection
	body io.Reader // the event stream
	tls  *tls.ConnectionState
}

// open connects, sends the request and waits for a 200 text/event-stream
// answer, all within ctx's deadline.
func (t *streamTarget) open(ctx context.Context) (openStream, error) {
	switch t.proto {
	case "h2":
		return t.openH2(ctx)
	case "h3":
		return t.openH3(ctx)
	}
	return t.openH1(ctx)
}

// dial opens the TCP connection, and the TLS session over it if the target
// has one, with ctx's deadline on the connection.
func (t *streamTarget) dial(ctx context.Context) (net.Conn, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", t.addr)
	if err != nil {
		return nil, fmt.Errorf("dialing: %w", err)
	}
	if deadline, ok := ctx.Deadline(); ok {
		if err := conn.SetDeadline(deadline); err != nil {
			_ = conn.Close()
			return nil, fmt.Errorf("setting the connect deadline: %w", err)
		}
	}
	if t.tls == nil {
		return conn, nil
	}
	tc := tls.Client(conn, t.tls)
	if err := tc.HandshakeContext(ctx); err != nil {
		_ = conn.Close()
		return nil, fmt.Errorf("TLS handshake: %w", err)
	}
	return tc, nil
}

func (t *streamTarget) openH1(ctx context.Context) (openStream, error) {
	conn, err := t.dial(ctx)
	if err != nil {
		return openStream{}, err
	}
	fail := func(err error) (openStream, error) {
		_ = conn.Close()
		return openStream{}, err
	}
	if _, err := conn.Write(t.request); err != nil {
		return fail(fmt.Errorf("sending the request: %w", err))
	}
	resp, err := http.ReadResponse(bufio.NewReaderSize(conn, readBufSize), t.req)
	if err != nil {
		return fail(fmt.Errorf("reading the response headers: %w", err))
	}
	if err := checkAnswer(resp.StatusCode, resp.Header.Get("Content-Type"), resp.Body); err != nil {
		return fail(err)
	}
	// The stream is idle for as long as the run wants: no deadline from now.
	if err := conn.SetDeadline(time.Time{}); err != nil {
		return fail(fmt.Errorf("clearing the connect deadline: %w", err))
	}
	return openStream{conn: conn, body: resp.Body, tls: tlsState(conn)}, nil
}

// tlsState is conn's TLS session, nil over cleartext.
func tlsState(conn net.Conn) *tls.ConnectionState {
	tc, ok := conn.(*tls.Conn)
	if !ok {
		return nil
	}
	state := tc.ConnectionState()
	return &state
}

// checkAnswer fails an answer other than 200 with text/event-stream, with
// the start of its body.
func checkAnswer(status int, contentType string, body io.Reader) error {
	if status != http.StatusOK {
		answer, _ := io.ReadAll(io.LimitReader(body, 300))
		return fmt.Errorf("the server answered %d %s: %s", status, http.StatusText(status), bytes.TrimSpace(answer))
	}
	// A 200 from the wrong URL, such as an HTML page, would otherwise show
	// up only as every event lost.
	if mt, _, _ := mime.ParseMediaType(contentType); mt != "text/event-stream" {
		return fmt.Errorf("the server answered with Content-Type %q, not text/event-stream", contentType)
	}
	return nil
}

// describeTLS names a TLS session's version, cipher suite and key exchange,
// e.g. "TLS 1.3 TLS_AES_128_GCM_SHA256 X25519".
func describeTLS(state *tls.ConnectionState) string {
	if state == nil {
		return ""
	}
	return fmt.Sprintf("%s %s %s", tls.VersionName(state.Version), tls.CipherSuiteName(state.CipherSuite), state.CurveID)
}

// streams is the set of connected clients while the run is on.
type streams struct {
	clients   []*client
	wg        sync.WaitGroup // the reading goroutines
	closing   atomic.Bool    // set before the run closes the connections
	unsettled atomic.Int64   // clients neither complete nor ended
	settled   chan struct{}  // closed when unsettled reaches 0
	tls       string         // the first stream's TLS session, described
}

// settle marks one client as done with the run, by completing or by its
// stream ending, so that the drain wait ends as soon as none is left.
func (st *streams) settle() {
	if st.unsettled.Add(-1) == 0 {
		close(st.settled)
	}
}

// connectAll opens every stream, client i to targets[i mod len(targets)],
// at most -dial-concurrency at a time, and returns once all of them have
// their response headers. Any failure fails the run: a benchmark with fewer
// clients than asked would mislead.
func connectAll(cfg config, targets []*streamTarget) (*streams, error) {
	ctx, cancel := context.WithTimeout(context.Background(), cfg.connectTimeout)
	defer cancel()

	st := &streams{clients: make([]*client, cfg.clients), settled: make(chan struct{})}
	st.unsettled.Store(int64(cfg.clients))
	ready := make(chan error, cfg.clients) // one answer per client, never blocking
	sem := make(chan struct{}, cfg.dialConcurrency)
	var tlsOnce sync.Once
	for i := range st.clients {
		c := newClient(cfg.events, cfg.publishers)
		target := targets[i%len(targets)]
		st.clients[i] = c
		st.wg.Add(1)
		go func() {
			defer st.wg.Done()
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				ready <- fmt.Errorf("client %d: waiting to dial: %w", i, ctx.Err())
				return
			}
			s, err := target.open(ctx)
			<-sem
			if err != nil {
				ready <- fmt.Errorf("client %d: %w", i, err)
				return
			}
			c.conn = s.conn
			if s.tls != nil {
				tlsOnce.Do(func() { st.tls = describeTLS(s.tls) })
			}
			ready <- nil

			err = c.read(s.body, st.settle)
			if len(c.latencies) < cfg.events {
				st.settle()
			}
			if !st.closing.Load() {
				c.err = err
			}
		}()
	}

	for connected := 0; connected < cfg.clients; connected++ {
		select {
		case err := <-ready:
			if err != nil {
				return nil, fmt.Errorf("connecting (%d of %d connected): %w", connected, cfg.clients, err)
			}
		case <-ctx.Done():
			return nil, fmt.Errorf("connecting: only %d of %d clients connected within %s", connected, cfg.clients, cfg.connectTimeout)
		}
	}
	return st, nil
}

// closeAll ends every stream and waits for the readers to stop, after which
// the clients' figures may be read.
func (st *streams) closeAll() {
	st.closing.Store(true)
	for _, c := range st.clients {
		_ = c.conn.Close()
	}
	st.wg.Wait()
}

// firstError returns the first client's reason for its stream ending early.
func (st *streams) firstError() error {
	for i, c := range st.clients {
		if c.err != nil {
			return fmt.Errorf("client %d: %w", i, c.err)
		}
	}
	return nil
}

// client is one stream and what it received. Its fields belong to its
// reading goroutine until closeAll returns. It keeps a bit and a latency per
// event, so that 10,000 clients of 1,000 events take about 40 MiB.
type client struct {
	conn      io.Closer
	events    int
	seen      []uint64 // bitset of the sequence numbers received
	latencies []uint32 // microseconds, one per first receipt of an event
	// prev holds, for each publisher p, the sequence number of p's event
	// received last; -1 before any. Event seq is publisher seq mod
	// len(prev)'s, and only one publisher's events have an order.
	prev     []int
	lastRecv int64 // Unix nanoseconds of the last first receipt

	duplicates, outOfOrder, malformed int64

	err error // why the stream ended before the run closed it
}

func newClient(events, publishers int) *client {
	c := &client{
		events:    events,
		seen:      make([]uint64, (events+63)/64),
		latencies: make([]uint32, 0, events),
		prev:      make([]int, publishers),
	}
	for p := range c.prev {
		c.prev[p] = -1
	}
	return c
}

// read parses the event stream until it fails, calling complete once every
// event has been received. It follows the SSE line rules for what it needs:
// lines end in LF or CRLF (a lone CR, which the spec also allows, is not
// recognized), a line starting with ':' is a comment, a field's value is what
// follows the first ':' less one leading space, and a blank line dispatches
// the event if it had data. Fields other than data are ignored.
//
// A line longer than the buffer is not gathered: its first piece holds the
// field name and the header, and the rest is padding, so it is skipped. That
// keeps memory per client fixed whatever -size is, and avoids allocating.
func (c *client) read(body io.Reader, complete func()) error {
	r := bufio.NewReaderSize(body, readBufSize)
	var (
		head    [headMax]byte // the start of the event's first data line
		headLen int
		hasData bool
		extra   bool // more than one data line, which this tool never sends
	)
	for {
		line, err := r.ReadSlice('\n')
		long := errors.Is(err, bufio.ErrBufferFull)
		if err != nil && !long {
			// A last line without its end is dropped, as the spec says.
			return fmt.Errorf("reading the stream: %w", err)
		}
		line = bytes.TrimSuffix(bytes.TrimSuffix(line, []byte{'\n'}), []byte{'\r'})

		switch {
		case len(line) == 0 && !long:
			if hasData && c.receive(head[:headLen], extra) {
				complete()
			}
			headLen, hasData, extra = 0, false, false
		case len(line) > 0 && line[0] == ':':
			// A comment, such as a keep-alive.
		default:
			name, value := line, []byte(nil)
			if i := bytes.IndexByte(line, ':'); i >= 0 {
				name, value = line[:i], line[i+1:]
				value = bytes.TrimPrefix(value, []byte{' '})
			}
			if string(name) == "data" {
				if hasData {
					extra = true
				} else {
					headLen = copy(head[:], value)
					hasData = true
				}
			}
		}

		for long {
			_, err = r.ReadSlice('\n')
			long = errors.Is(err, bufio.ErrBufferFull)
			if err != nil && !long {
				return fmt.Errorf("reading the stream: %w", err)
			}
		}
	}
}

// receive records one event from the start of its data, reporting whether
// it completed the client's set.
func (c *client) receive(head []byte, extra bool) bool {
	now := time.Now().UnixNano()
	seq, sent, ok := parseHeader(head)
	if !ok || extra || seq >= c.events {
		c.malformed++
		return false
	}
	word, bit := seq/64, uint64(1)<<(seq%64)
	if c.seen[word]&bit != 0 {
		// Counted as a duplicate only, not also out of order.
		c.duplicates++
		return false
	}
	c.seen[word] |= bit
	prev := &c.prev[seq%len(c.prev)]
	if seq < *prev {
		c.outOfOrder++
	}
	*prev = seq
	c.lastRecv = now
	c.latencies = append(c.latencies, micros(now-sent))
	return len(c.latencies) == c.events
}

// micros turns nanoseconds into microseconds that fit a uint32 (71 minutes).
// A negative latency, from the wall clock stepping back, counts as 0.
func micros(ns int64) uint32 {
	return uint32(min(max(ns/1000, 0), math.MaxUint32))
}

// parseHeader reads "<seq> <unix nanoseconds>" from the start of an event's
// data; after the time comes a space or the end of the data.
func parseHeader(data []byte) (seq int, sent int64, ok bool) {
	n, rest, ok := parseDigits(data)
	if !ok || len(rest) == 0 || rest[0] != ' ' || n > math.MaxInt32 {
		return 0, 0, false
	}
	sent, rest, ok = parseDigits(rest[1:])
	if !ok || (len(rest) > 0 && rest[0] != ' ') {
		return 0, 0, false
	}
	return int(n), sent, true
}

// parseDigits reads a non-negative decimal int64 from the start of b,
// without the allocation strconv would need for a []byte.
func parseDigits(b []byte) (n int64, rest []byte, ok bool) {
	i := 0
	for ; i < len(b) && b[i] >= '0' && b[i] <= '9'; i++ {
		d := int64(b[i] - '0')
		if n > (math.MaxInt64-d)/10 {
			return 0, nil, false
		}
		n = n*10 + d
	}
	return n, b[i:], i > 0
}

// publisher posts its share of the events to the server, one after the
// other, over one keep-alive connection per publish URL.
type publisher struct {
	client  *http.Client
	kind    string
	channel string
}

// newPublishers makes -publishers publishers, each with its own
// connections, so that they publish at once.
func newPublishers(cfg config) []*publisher {
	pubs := make([]*publisher, cfg.publishers)
	for i := range pubs {
		pubs[i] = &publisher{
			client: &http.Client{
				// No proxy from the environment: the run measures this server.
				Transport: &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 1},
				Timeout:   30 * time.Second,
			},
			kind:    cfg.publisher,
			channel: cfg.channel,
		}
	}
	return pubs
}

// publishAll publishes the -events events: event i by publisher i mod
// len(pubs), to publish URL i mod their number. The publishers run at once;
// each publishes its events one after the other, each after a tick when
// -rate is set, at its share of the rate, the publishers' ticks spread
// evenly. A ticker drops the ticks it could not deliver, so a server slower
// than the rate sets the pace, and publish_seconds shows it. The first
// failure stops every publisher and is returned.
func publishAll(cfg config, pubs []*publisher) error {
	var (
		wg       sync.WaitGroup
		failed   atomic.Bool
		errOnce  sync.Once
		firstErr error
	)
	start := time.Now()
	for p, pub := range pubs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := pub.publishShare(cfg, p, len(pubs), start, &failed)
			if err != nil {
				failed.Store(true)
				errOnce.Do(func() { firstErr = err })
			}
		}()
	}
	wg.Wait()
	return firstErr
}

// publishShare publishes events p, p+n, p+2n, … until the events run out or
// another publisher has failed.
func (pub *publisher) publishShare(cfg config, p, n int, start time.Time, failed *atomic.Bool) error {
	var tick <-chan time.Time
	if cfg.rate > 0 {
		// Publisher p's first event is p/rate after the first publisher's,
		// and each publisher ticks at rate/n: together, one event a 1/rate.
		time.Sleep(time.Until(start.Add(time.Duration(float64(p) * float64(time.Second) / cfg.rate))))
		t := time.NewTicker(max(time.Duration(float64(n)*float64(time.Second)/cfg.rate), 1))
		defer t.Stop()
		tick = t.C
	}
	for i := p; i < cfg.events; i += n {
		if failed.Load() {
			return nil
		}
		if tick != nil && i > p {
			<-tick
		}
		endpoint := cfg.publishURLs[i%len(cfg.publishURLs)]
		if err := pub.publish(endpoint, payload(i, time.Now(), cfg.size)); err != nil {
			return fmt.Errorf("publishing event %d: %w", i, err)
		}
	}
	return nil
}

// payload is event seq's data: "<seq> <sent in Unix nanoseconds> ", padded
// with 'x' to size bytes, or just the header if size is smaller.
func payload(seq int, sent time.Time, size int) []byte {
	b := make([]byte, 0, max(size, headMax))
	b = strconv.AppendInt(b, int64(seq), 10)
	b = append(b, ' ')
	b = strconv.AppendInt(b, sent.UnixNano(), 10)
	b = append(b, ' ')
	for len(b) < size {
		b = append(b, 'x')
	}
	return b
}

// adminEvent is the admin API's POST /sse/broadcast body.
type adminEvent struct {
	Channel string `json:"channel"`
	Data    string `json:"data"`
}

func (p *publisher) publish(endpoint string, data []byte) error {
	body, contentType := data, "text/plain"
	if p.kind == "admin" {
		var err error
		if body, err = json.Marshal(adminEvent{Channel: p.channel, Data: string(data)}); err != nil {
			return fmt.Errorf("encoding the event: %w", err)
		}
		contentType = "application/json"
	}
	req, err := http.NewRequest(http.MethodPost, endpoint, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("making the request: %w", err)
	}
	req.Header.Set("Content-Type", contentType)
	resp, err := p.client.Do(req)
	if err != nil {
		return fmt.Errorf("posting: %w", err)
	}
	defer resp.Body.Close()
	// Reading the answer to its end lets the connection carry the next one.
	answer, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("%s answered %s: %s", endpoint, resp.Status, bytes.TrimSpace(answer))
	}
	if err != nil {
		return fmt.Errorf("reading the answer: %w", err)
	}
	return nil
}

// procSample is the server's resident memory and CPU time at one moment,
// summed over the processes and their descendants: nginx serves nchan from
// its worker processes, and the master's own figures would miss their work;
// a cluster's figures are its nodes' together.
type procSample struct {
	rssKiB   int64
	cpuTicks int64
}

// sampleProcesses sums the figures of the processes that flagName lists
// and of their descendants, each process counted once.
func sampleProcesses(flagName string, pids []int) (procSample, error) {
	var s procSample
	counted := make(map[int]bool)
	for _, pid := range pids {
		tree, err := processTree(pid)
		if err != nil {
			return s, fmt.Errorf("%s %d: %w", flagName, pid, err)
		}
		for _, p := range tree {
			if counted[p] {
				continue
			}
			counted[p] = true
			rss, err := readRSS(p)
			if err == nil {
				var cpu int64
				cpu, err = readCPUTicks(p)
				s.rssKiB += rss
				s.cpuTicks += cpu
			}
			// A descendant may exit between listing and reading; a listed
			// process may not.
			if err != nil && p == pid {
				return s, fmt.Errorf("%s %d: %w", flagName, pid, err)
			}
		}
	}
	return s, nil
}

// processTree lists pid and its descendants, from the children files of
// each thread (Linux 3.5 and later, with CONFIG_PROC_CHILDREN; without
// them, the process alone).
func processTree(pid int) ([]int, error) {
	tree := []int{pid}
	for i := 0; i < len(tree); i++ {
		taskDir := fmt.Sprintf("/proc/%d/task", tree[i])
		tasks, err := os.ReadDir(taskDir)
		if err != nil {
			if i == 0 {
				return nil, fmt.Errorf("reading the process's threads: %w", err)
			}
			continue
		}
		for _, task := range tasks {
			children, err := os.ReadFile(taskDir + "/" + task.Name() + "/children")
			if err != nil {
				continue
			}
			for _, f := range strings.Fields(string(children)) {
				if child, err := strconv.Atoi(f); err == nil {
					tree = append(tree, child)
				}
			}
		}
	}
	return tree, nil
}

// readRSS returns VmRSS from /proc/<pid>/status, in KiB; 0 for a process
// without memory of its own, such as a zombie.
func readRSS(pid int) (int64, error) {
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("reading process %d's status: %w", pid, err)
	}
	for line := range strings.Lines(string(status)) {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			fields := strings.Fields(rest) // "12345 kB"
			if len(fields) != 2 || fields[1] != "kB" {
				return 0, fmt.Errorf("process %d: unexpected VmRSS line %q", pid, strings.TrimSpace(line))
			}
			kib, err := strconv.ParseInt(fields[0], 10, 64)
			if err != nil {
				return 0, fmt.Errorf("process %d: parsing VmRSS: %w", pid, err)
			}
			return kib, nil
		}
	}
	return 0, nil
}

// readCPUTicks returns utime+stime from /proc/<pid>/stat, in clock ticks,
// over all the process's threads.
func readCPUTicks(pid int) (int64, error) {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("reading process %d's stat: %w", pid, err)
	}
	// The command name, field 2, is in parentheses and may hold spaces and
	// parentheses itself, so the fields are counted from its last ')'.
	end := bytes.LastIndexByte(stat, ')')
	if end < 0 {
		return 0, fmt.Errorf("process %d: unexpected stat %q", pid, stat)
	}
	fields := strings.Fields(string(stat[end+1:])) // from field 3, state
	const utime, stime = 14 - 3, 15 - 3
	if len(fields) <= stime {
		return 0, fmt.Errorf("process %d: stat has only %d fields", pid, len(fields)+2)
	}
	var total int64
	for _, f := range []string{fields[utime], fields[stime]} {
		ticks, err := strconv.ParseInt(f, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("process %d: parsing CPU time: %w", pid, err)
		}
		total += ticks
	}
	return total, nil
}

// result is one run's figures. The server's are null without -pid.
type result struct {
	Label              string   `json:"label"`
	Publisher          string   `json:"publisher"`
	Clients            int      `json:"clients"`
	Events             int      `json:"events"`
	Size               int      `json:"size"`
	Rate               float64  `json:"rate"`
	DeliveriesExpected int64    `json:"deliveries_expected"`
	Delivered          int64    `json:"deliveries_delivered"`
	DeliveriesPerSec   float64  `json:"deliveries_per_second"`
	LatencyP50ms       float64  `json:"latency_p50_ms"`
	LatencyP99ms       float64  `json:"latency_p99_ms"`
	LatencyMaxms       float64  `json:"latency_max_ms"`
	Lost               int64    `json:"lost"`
	Duplicates         int64    `json:"duplicates"`
	OutOfOrder         int64    `json:"out_of_order"`
	Malformed          int64    `json:"malformed"`
	StreamErrors       int      `json:"stream_errors"`
	ServerCPUSeconds   *float64 `json:"server_cpu_seconds"`
	CPUusPerDelivery   *float64 `json:"cpu_us_per_delivery"`
	RSSBeforeKiB       *int64   `json:"rss_before_kib"`
	RSSIdleKiB         *int64   `json:"rss_idle_kib"`
	RSSPerIdleConnKiB  *float64 `json:"rss_per_idle_conn_kib"`
	ConnectSeconds     float64  `json:"connect_seconds"`
	PublishSeconds     float64  `json:"publish_seconds"`
	// Publishers is -publishers; Nodes, the number of -stream URLs;
	// PublishesPerSec, the events over publish_seconds. The aux figures
	// are the -aux-pid processes' CPU time over the server's span, null
	// without -aux-pid. They come last so that a line begins as it did
	// before ssebench took several nodes.
	Publishers          int      `json:"publishers"`
	Nodes               int      `json:"nodes"`
	PublishesPerSec     float64  `json:"publishes_per_second"`
	AuxCPUSeconds       *float64 `json:"aux_cpu_seconds"`
	AuxCPUusPerDelivery *float64 `json:"aux_cpu_us_per_delivery"`
	// Proto is -proto; TLS, the first stream's TLS version, cipher suite
	// and key exchange, empty over cleartext.
	Proto string `json:"proto"`
	TLS   string `json:"tls"`
}

// summarize adds up the clients' figures; their readers must have stopped.
func summarize(cfg config, clients []*client, firstPublish time.Time) *result {
	res := &result{
		Label:              cfg.label,
		Publisher:          cfg.publisher,
		Clients:            cfg.clients,
		Events:             cfg.events,
		Size:               cfg.size,
		Rate:               cfg.rate,
		DeliveriesExpected: int64(cfg.clients) * int64(cfg.events),
		Publishers:         cfg.publishers,
		Nodes:              len(cfg.streamURLs),
		Proto:              cfg.proto,
	}
	var lastRecv int64
	for _, c := range clients {
		res.Delivered += int64(len(c.latencies))
		res.Duplicates += c.duplicates
		res.OutOfOrder += c.outOfOrder
		res.Malformed += c.malformed
		if c.err != nil {
			res.StreamErrors++
		}
		lastRecv = max(lastRecv, c.lastRecv)
	}
	res.Lost = res.DeliveriesExpected - res.Delivered
	if res.Delivered == 0 {
		return res
	}

	all := make([]uint32, 0, res.Delivered)
	for _, c := range clients {
		all = append(all, c.latencies...)
	}
	slices.Sort(all)
	res.LatencyP50ms = percentileMs(all, 0.50)
	res.LatencyP99ms = percentileMs(all, 0.99)
	res.LatencyMaxms = percentileMs(all, 1)
	if window := time.Duration(lastRecv - firstPublish.UnixNano()); window > 0 {
		res.DeliveriesPerSec = math.Round(float64(res.Delivered) / window.Seconds())
	}
	return res
}

// percentileMs returns the nearest-rank percentile p of sorted microseconds,
// in milliseconds.
func percentileMs(sorted []uint32, p float64) float64 {
	rank := max(int(math.Ceil(p*float64(len(sorted))))-1, 0)
	return float64(sorted[rank]) / 1000
}

// addServer fills in the server's figures from its three samples.
func (res *result) addServer(before, idle, after procSample) {
	cpu := float64(after.cpuTicks-idle.cpuTicks) / clockTicks
	perIdleConn := round3(float64(idle.rssKiB-before.rssKiB) / float64(res.Clients))
	res.ServerCPUSeconds = &cpu
	res.RSSBeforeKiB = &before.rssKiB
	res.RSSIdleKiB = &idle.rssKiB
	res.RSSPerIdleConnKiB = &perIdleConn
	if res.Delivered > 0 {
		perDelivery := round3(cpu * 1e6 / float64(res.Delivered))
		res.CPUusPerDelivery = &perDelivery
	}
}

// addAux fills in the auxiliary processes' figures from two samples, over
// the same span as the server's CPU time.
func (res *result) addAux(idle, after procSample) {
	cpu := float64(after.cpuTicks-idle.cpuTicks) / clockTicks
	res.AuxCPUSeconds = &cpu
	if res.Delivered > 0 {
		perDelivery := round3(cpu * 1e6 / float64(res.Delivered))
		res.AuxCPUusPerDelivery = &perDelivery
	}
}

// print writes the JSON line to out and the line for people to human.
func (res *result) print(out, human io.Writer) error {
	line, err := json.Marshal(res)
	if err != nil {
		return fmt.Errorf("encoding the result: %w", err)
	}
	if _, err := fmt.Fprintf(out, "%s\n", line); err != nil {
		return fmt.Errorf("writing the result: %w", err)
	}

	rate := "max"
	if res.Rate > 0 {
		rate = strconv.FormatFloat(res.Rate, 'g', -1, 64) + "/s"
	}
	server := "server not measured (no -pid)"
	if res.ServerCPUSeconds != nil {
		perDelivery := "-"
		if res.CPUusPerDelivery != nil {
			perDelivery = strconv.FormatFloat(*res.CPUusPerDelivery, 'f', 3, 64)
		}
		server = fmt.Sprintf("server cpu %.2fs (%s µs/delivery), rss %d -> %d KiB (%.2f KiB/idle conn)",
			*res.ServerCPUSeconds, perDelivery, *res.RSSBeforeKiB, *res.RSSIdleKiB, *res.RSSPerIdleConnKiB)
	}
	if res.AuxCPUSeconds != nil {
		perDelivery := "-"
		if res.AuxCPUusPerDelivery != nil {
			perDelivery = strconv.FormatFloat(*res.AuxCPUusPerDelivery, 'f', 3, 64)
		}
		server += fmt.Sprintf(", aux cpu %.2fs (%s µs/delivery)", *res.AuxCPUSeconds, perDelivery)
	}
	via := res.Publisher
	if res.Publishers > 1 {
		via = fmt.Sprintf("%d %s publishers", res.Publishers, res.Publisher)
	}
	if res.Nodes > 1 {
		via += fmt.Sprintf(" on %d nodes", res.Nodes)
	}
	clients := fmt.Sprintf("%d clients", res.Clients)
	if res.Proto != "h1" {
		clients = fmt.Sprintf("%d %s clients (%s)", res.Clients, res.Proto, res.TLS)
	}
	_, err = fmt.Fprintf(human, "%s: %s x %d events of %d B at rate %s via %s: delivered %d/%d (%.0f/s), "+
		"latency p50 %.3f ms p99 %.3f ms max %.3f ms, lost %d dup %d out-of-order %d malformed %d, %s, "+
		"connect %.2fs, publish %.2fs (%.0f events/s)\n",
		cmp.Or(res.Label, "ssebench"), clients, res.Events, res.Size, rate, via,
		res.Delivered, res.DeliveriesExpected, res.DeliveriesPerSec,
		res.LatencyP50ms, res.LatencyP99ms, res.LatencyMaxms,
		res.Lost, res.Duplicates, res.OutOfOrder, res.Malformed, server,
		res.ConnectSeconds, res.PublishSeconds, res.PublishesPerSec)
	if err != nil {
		return fmt.Errorf("writing the result: %w", err)
	}
	return nil
}

// round3 rounds to three decimals, which is all the figures mean.
func round3(x float64) float64 {
	return math.Round(x*1000) / 1000
}
