package main

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quic-go/quic-go/http3"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestFlagsOfOneServerGiveListsOfOne(t *testing.T) {
	cfg, err := parseFlags([]string{"-stream", "http://127.0.0.1:8092/", "-publish", "http://localhost:2998/sse/broadcast", "-pid", "1234"})
	require.NoError(t, err)
	assert.Equal(t, []string{"http://127.0.0.1:8092/"}, cfg.streamURLs)
	assert.Equal(t, []string{"http://localhost:2998/sse/broadcast"}, cfg.publishURLs)
	assert.Equal(t, []int{1234}, cfg.pids)
	assert.Empty(t, cfg.auxPIDs)
	assert.Equal(t, 1, cfg.publishers)
}

func TestFlagPidZeroOrEmptyMeasuresNoServer(t *testing.T) {
	for _, pid := range []string{"0", ""} {
		cfg, err := parseFlags([]string{"-stream", "http://a/", "-publish", "http://b/", "-pid", pid})
		require.NoError(t, err, "-pid %q", pid)
		assert.Empty(t, cfg.pids, "-pid %q", pid)
	}
}

func TestFlagsTakeCommaSeparatedListsOfNodes(t *testing.T) {
	cfg, err := parseFlags([]string{
		"-stream", "http://127.0.0.1:8093/,http://127.0.0.1:8094/",
		"-publish", "http://localhost:2996/sse/broadcast, http://localhost:2997/sse/broadcast",
		"-pid", "12,34", "-aux-pid", "56", "-publishers", "4",
	})
	require.NoError(t, err)
	assert.Equal(t, []string{"http://127.0.0.1:8093/", "http://127.0.0.1:8094/"}, cfg.streamURLs)
	assert.Equal(t, []string{"http://localhost:2996/sse/broadcast", "http://localhost:2997/sse/broadcast"}, cfg.publishURLs)
	assert.Equal(t, []int{12, 34}, cfg.pids)
	assert.Equal(t, []int{56}, cfg.auxPIDs)
	assert.Equal(t, 4, cfg.publishers)
}

func TestFlagsRejectListsThatCannotBeRun(t *testing.T) {
	base := []string{"-stream", "http://a/", "-publish", "http://b/", "-events", "10"}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-stream", "http://a/,,http://c/"}, "-stream"},
		{[]string{"-stream", "http://a/,"}, "empty item"},
		{[]string{"-publish", ",http://b/"}, "-publish"},
		{[]string{"-pid", "12,x"}, `"x" is not a process id`},
		{[]string{"-pid", "-3"}, `"-3" is not a process id`},
		{[]string{"-pid", "12,0"}, `"0" is not a process id`},
		{[]string{"-pid", "12,12"}, "listed twice"},
		{[]string{"-aux-pid", "nats"}, "-aux-pid"},
		{[]string{"-pid", "12,34", "-aux-pid", "34"}, "both -pid and -aux-pid"},
		{[]string{"-publishers", "0"}, "-publishers must be at least 1"},
		{[]string{"-publishers", "11"}, "must not be more than -events"},
	} {
		_, err := parseFlags(append(append([]string{}, base...), tc.args...))
		if assert.Error(t, err, "%q", tc.args) {
			assert.Contains(t, err.Error(), tc.want, "%q", tc.args)
		}
	}
}

func TestFlagProtoIsH1UnlessH2OrH3IsAskedFor(t *testing.T) {
	cfg, err := parseFlags([]string{"-stream", "http://a/", "-publish", "http://b/"})
	require.NoError(t, err)
	assert.Equal(t, "h1", cfg.proto)
	for _, proto := range []string{"h2", "h3"} {
		cfg, err := parseFlags([]string{"-proto", proto, "-stream", "https://a/,https://b:8443/", "-publish", "http://b/"})
		require.NoError(t, err, proto)
		assert.Equal(t, proto, cfg.proto)
	}
}

func TestFlagProtoRejectsUnknownProtocolsAndCleartextURLs(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-proto", "h2c", "-stream", "http://a/"}, `-proto must be "h1", "h2" or "h3", got "h2c"`},
		{[]string{"-proto", "h2", "-stream", "http://a/"}, `-stream "http://a/" must be an https URL`},
		{[]string{"-proto", "h3", "-stream", "https://a/,http://b/"}, `-stream "http://b/" must be an https URL`},
	} {
		_, err := parseFlags(append(tc.args, "-publish", "http://b/"))
		if assert.Error(t, err, "%q", tc.args) {
			assert.Contains(t, err.Error(), tc.want, "%q", tc.args)
		}
	}
}

// receiveAll hands c the events seqs, in that order, as a stream would.
func receiveAll(c *client, seqs ...int) {
	now := time.Now()
	for _, seq := range seqs {
		c.receive(payload(seq, now, 0), false)
	}
}

func TestOnePublishersEventsMustArriveInPublishOrder(t *testing.T) {
	c := newClient(4, 1)
	receiveAll(c, 0, 2, 1, 3)
	assert.Equal(t, int64(1), c.outOfOrder, "1 after 2")
	assert.Len(t, c.latencies, 4)
}

func TestEventsOfSeveralPublishersMayInterleave(t *testing.T) {
	// Publisher 0 publishes 0, 2, 4; publisher 1 publishes 1, 3, 5.
	c := newClient(6, 2)
	receiveAll(c, 1, 0, 3, 5, 2, 4)
	assert.Zero(t, c.outOfOrder)
	assert.Zero(t, c.duplicates)
	assert.Len(t, c.latencies, 6)
}

func TestEachPublishersEventsMustArriveInItsOrder(t *testing.T) {
	c := newClient(6, 2)
	receiveAll(c, 0, 4, 1, 2, 3, 5)
	assert.Equal(t, int64(1), c.outOfOrder, "publisher 0's 2 after its 4")
}

func TestAnEventOfSeveralPublishersReceivedTwiceIsADuplicate(t *testing.T) {
	c := newClient(4, 2)
	receiveAll(c, 0, 1, 1, 2, 3)
	assert.Equal(t, int64(1), c.duplicates)
	assert.Zero(t, c.outOfOrder)
	assert.Len(t, c.latencies, 4)
}

// cluster is a broadcaster of several nodes, each an HTTP server with a
// stream and a publish endpoint: an event published on any node goes to
// every node's streams, all in one order.
type cluster struct {
	mu      sync.Mutex
	streams []chan []byte
	// The streams' protocols and client addresses, under mu.
	protos, remotes map[string]int
	nodes           []*httptest.Server
	muxes           []*http.ServeMux
	// Per node: the streams it served and the events published to it.
	clients, publishes []atomic.Int64
}

func newCluster(t *testing.T, nodes int) *cluster {
	cl := &cluster{
		protos: make(map[string]int), remotes: make(map[string]int),
		clients: make([]atomic.Int64, nodes), publishes: make([]atomic.Int64, nodes),
	}
	for n := range nodes {
		mux := http.NewServeMux()
		mux.HandleFunc("GET /stream", func(w http.ResponseWriter, r *http.Request) {
			events := make(chan []byte, 1024)
			cl.mu.Lock()
			cl.streams = append(cl.streams, events)
			cl.protos[r.Proto]++
			cl.remotes[r.RemoteAddr]++
			cl.mu.Unlock()
			cl.clients[n].Add(1)
			w.Header().Set("Content-Type", "text/event-stream")
			w.WriteHeader(http.StatusOK)
			w.(http.Flusher).Flush()
			for {
				select {
				case ev := <-events:
					if _, err := w.Write(ev); err != nil {
						return
					}
					w.(http.Flusher).Flush()
				case <-r.Context().Done():
					return
				}
			}
		})
		mux.HandleFunc("POST /publish", func(w http.ResponseWriter, r *http.Request) {
			var ev adminEvent
			if err := json.NewDecoder(r.Body).Decode(&ev); err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			cl.publishes[n].Add(1)
			frame := []byte("data: " + ev.Data + "\n\n")
			cl.mu.Lock()
			for _, s := range cl.streams {
				s <- frame
			}
			cl.mu.Unlock()
			_, _ = io.WriteString(w, `{"channel":"bench","clients":0}`)
		})
		srv := httptest.NewServer(mux)
		t.Cleanup(func() {
			// Streams a failed run left open would keep Close waiting.
			srv.CloseClientConnections()
			srv.Close()
		})
		cl.nodes = append(cl.nodes, srv)
		cl.muxes = append(cl.muxes, mux)
	}
	return cl
}

// serveH2 serves node n's streams over TLS with HTTP/2 (and HTTP/1.1) as
// well, on a server of its own, and returns its URL.
func (cl *cluster) serveH2(t *testing.T, n int) string {
	srv := httptest.NewUnstartedServer(cl.muxes[n])
	srv.EnableHTTP2 = true
	srv.StartTLS()
	t.Cleanup(func() {
		srv.CloseClientConnections()
		srv.Close()
	})
	return srv.URL
}

// serveH3 serves node n's streams over HTTP/3 as well, on a server of its
// own with a self-signed certificate, and returns its URL.
func (cl *cluster) serveH3(t *testing.T, n int) string {
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	require.NoError(t, err)
	srv := &http3.Server{
		Handler:   cl.muxes[n],
		TLSConfig: http3.ConfigureTLSConfig(&tls.Config{Certificates: []tls.Certificate{selfSigned(t)}}),
	}
	go func() { _ = srv.Serve(udp) }()
	t.Cleanup(func() { _ = srv.Close() })
	return "https://" + udp.LocalAddr().String()
}

// selfSigned makes a P-256 certificate for 127.0.0.1 and localhost.
func selfSigned(t *testing.T) tls.Certificate {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "localhost"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// urls lists each node's URL at path, comma-separated.
func (cl *cluster) urls(path string) string {
	var urls []string
	for _, n := range cl.nodes {
		urls = append(urls, n.URL+path)
	}
	return strings.Join(urls, ",")
}

func TestRunSpreadsClientsAndPublishesOverNodesAndChecksEveryDelivery(t *testing.T) {
	cl := newCluster(t, 2)
	// A process of our own to stand for NATS.
	aux := exec.Command("sleep", "60")
	require.NoError(t, aux.Start())
	t.Cleanup(func() { _ = aux.Process.Kill(); _ = aux.Wait() })

	cfg, err := parseFlags([]string{
		"-stream", cl.urls("/stream"), "-publish", cl.urls("/publish"),
		"-clients", "10", "-events", "40", "-publishers", "4", "-idle-wait", "0",
		"-pid", fmt.Sprint(os.Getpid()), "-aux-pid", fmt.Sprint(aux.Process.Pid),
	})
	require.NoError(t, err)
	var out, human bytes.Buffer
	code, err := run(cfg, &out, &human)
	require.NoError(t, err)
	require.Equal(t, 0, code, human.String())

	assert.Equal(t, []int64{5, 5}, []int64{cl.clients[0].Load(), cl.clients[1].Load()}, "clients per node")
	assert.Equal(t, []int64{20, 20}, []int64{cl.publishes[0].Load(), cl.publishes[1].Load()}, "publishes per node")

	var res map[string]any
	require.NoError(t, json.Unmarshal(out.Bytes(), &res))
	assert.EqualValues(t, 400, res["deliveries_delivered"])
	assert.EqualValues(t, 0, res["lost"])
	assert.EqualValues(t, 0, res["out_of_order"])
	assert.EqualValues(t, 4, res["publishers"])
	assert.EqualValues(t, 2, res["nodes"])
	assert.Positive(t, res["publishes_per_second"])
	assert.NotNil(t, res["cpu_us_per_delivery"])
	assert.NotNil(t, res["aux_cpu_us_per_delivery"])
	assert.Contains(t, human.String(), "via 4 admin publishers on 2 nodes")
}

func TestRunOfOneServerKeepsItsResultFields(t *testing.T) {
	cl := newCluster(t, 1)
	cfg, err := parseFlags([]string{
		"-stream", cl.urls("/stream"), "-publish", cl.urls("/publish"),
		"-clients", "3", "-events", "20", "-rate", "1000", "-idle-wait", "0",
	})
	require.NoError(t, err)
	var out, human bytes.Buffer
	code, err := run(cfg, &out, &human)
	require.NoError(t, err)
	require.Equal(t, 0, code, human.String())

	var res map[string]any
	require.NoError(t, json.Unmarshal(out.Bytes(), &res))
	// What bench/table.py reads, and the rest of the fields from before
	// several nodes, in their order.
	var keys []string
	dec := json.NewDecoder(bytes.NewReader(out.Bytes()))
	_, _ = dec.Token()
	for dec.More() {
		key, _ := dec.Token()
		keys = append(keys, key.(string))
		var skip json.RawMessage
		require.NoError(t, dec.Decode(&skip))
	}
	assert.Equal(t, []string{
		"label", "publisher", "clients", "events", "size", "rate",
		"deliveries_expected", "deliveries_delivered", "deliveries_per_second",
		"latency_p50_ms", "latency_p99_ms", "latency_max_ms",
		"lost", "duplicates", "out_of_order", "malformed", "stream_errors",
		"server_cpu_seconds", "cpu_us_per_delivery", "rss_before_kib", "rss_idle_kib", "rss_per_idle_conn_kib",
		"connect_seconds", "publish_seconds",
	}, keys[:24])
	assert.EqualValues(t, 60, res["deliveries_delivered"])
	assert.Nil(t, res["cpu_us_per_delivery"], "no -pid")
	assert.Nil(t, res["aux_cpu_seconds"], "no -aux-pid")
}

func TestRunFailsWhenAPublishIsRefused(t *testing.T) {
	cl := newCluster(t, 1)
	refusing := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "no", http.StatusServiceUnavailable)
	}))
	t.Cleanup(refusing.Close)
	cfg, err := parseFlags([]string{
		"-stream", cl.urls("/stream"), "-publish", cl.urls("/publish") + "," + refusing.URL,
		"-clients", "2", "-events", "10", "-publishers", "2", "-idle-wait", "0",
	})
	require.NoError(t, err)
	code, err := run(cfg, io.Discard, io.Discard)
	assert.Equal(t, exitFailed, code)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "503")
}

// runOK runs ssebench with args and returns its JSON result, failing the
// test unless every delivery arrived.
func runOK(t *testing.T, args ...string) map[string]any {
	t.Helper()
	cfg, err := parseFlags(append([]string{"-idle-wait", "0"}, args...))
	require.NoError(t, err)
	var out, human bytes.Buffer
	code, err := run(cfg, &out, &human)
	require.NoError(t, err)
	require.Equal(t, 0, code, human.String())
	var res map[string]any
	require.NoError(t, json.Unmarshal(out.Bytes(), &res))
	return res
}

func TestRunOverH2AndH3GivesEachClientAConnectionOfItsOwn(t *testing.T) {
	for _, proto := range []struct {
		name, wantProto string
		serve           func(cl *cluster, t *testing.T) string
	}{
		{"h2", "HTTP/2.0", func(cl *cluster, t *testing.T) string { return cl.serveH2(t, 0) }},
		// One QUIC connection, and one UDP socket, per client.
		{"h3", "HTTP/3.0", func(cl *cluster, t *testing.T) string { return cl.serveH3(t, 0) }},
	} {
		t.Run(proto.name, func(t *testing.T) {
			cl := newCluster(t, 1)
			res := runOK(t, "-proto", proto.name, "-stream", proto.serve(cl, t)+"/stream", "-publish", cl.urls("/publish"),
				"-clients", "5", "-events", "30")

			assert.EqualValues(t, 150, res["deliveries_delivered"])
			assert.EqualValues(t, 0, res["out_of_order"])
			assert.Equal(t, proto.name, res["proto"])
			assert.Contains(t, res["tls"], "TLS 1.3 ")
			assert.Equal(t, map[string]int{proto.wantProto: 5}, cl.protos)
			assert.Len(t, cl.remotes, 5, "one connection per client")
		})
	}
}

func TestRunOverH2GivesTheWindowBackOnALongStream(t *testing.T) {
	// 400 events of 20 kB are 8 MB, more than the 6 MiB the stream's
	// window starts with: without the window given back, the server stops.
	cl := newCluster(t, 1)
	res := runOK(t, "-proto", "h2", "-stream", cl.serveH2(t, 0)+"/stream", "-publish", cl.urls("/publish"),
		"-clients", "1", "-events", "400", "-size", "20000", "-drain-timeout", "10s")
	assert.EqualValues(t, 400, res["deliveries_delivered"])
}

func TestRunOverH2FailsWhenTheAnswerIsNotAnEventStream(t *testing.T) {
	cl := newCluster(t, 1)
	cfg, err := parseFlags([]string{"-proto", "h2", "-stream", cl.serveH2(t, 0) + "/nothing", "-publish", cl.urls("/publish"),
		"-clients", "2", "-events", "1", "-idle-wait", "0"})
	require.NoError(t, err)
	code, err := run(cfg, io.Discard, io.Discard)
	assert.Equal(t, exitFailed, code)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "the server answered 404 Not Found: 404 page not found")
}
