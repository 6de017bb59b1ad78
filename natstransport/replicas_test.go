package natstransport

// A test of a NATS cluster: three JetStream servers, clustered by routes
// and embedded in the test process, keep the stream in three replicas, and
// one of them goes away while two Caddy nodes publish through them.

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	sse "github.com/tmaxmax/go-sse"
)

func TestAThreeNodeNATSClusterWithThreeReplicasLosesANodeDuringPublishingAndNoAcceptedEventIsLost(t *testing.T) {
	cluster := startNATSCluster(t, 3)
	a := startCaddyNodeWith(t, cluster.urls(), "replicas 3")
	b := startCaddyNodeWith(t, cluster.urls(), "replicas 3")
	onA, onB := openStream(t, a.url("/"), nil), openStream(t, b.url("/"), nil)

	leader := cluster.streamLeader(t)
	info := cluster.streamInfo(t)
	assert.Equal(t, 3, info.Config.Replicas, "the transport created the stream with the replicas it was given")
	assert.Len(t, info.Cluster.Replicas, 2, "kept by its leader and two more servers")

	// Publishers on both nodes, one at a time; the stream's leader goes
	// away part way through, while they go on. (Shutdown hands its
	// leaderships over first, as a server taken down does; a crash, which
	// a server in this process cannot play, would leave the publishers
	// 503s for the seconds of an election.)
	const (
		runLength   = 300
		lossAt      = 100
		afterLoss   = 100 // accepted publishes the run needs after the loss
		runDeadline = 4 * awaitTimeout
	)
	var (
		accepted          []publishedEvent // in the order they were answered
		refused           = make(map[string]bool)
		acceptedDuring    int // while the server was shutting down
		acceptedAfterLoss int
		lost              = make(chan struct{})
		lossDone          bool
	)
	deadline := time.Now().Add(runDeadline)
	for i := 0; i < runLength || acceptedAfterLoss < afterLoss; i++ {
		require.True(t, time.Now().Before(deadline),
			"the run did not end within %s: %d accepted, %d of them after the loss, %d refused",
			runDeadline, len(accepted), acceptedAfterLoss, len(refused))
		if i == lossAt {
			go func() {
				defer close(lost)
				leader.shutdown()
			}()
		}
		if !lossDone {
			select {
			case <-lost:
				lossDone = true
			default:
			}
		}
		node := a
		if i%3 == 2 {
			node = b
		}
		payload := fmt.Sprintf("event-%03d", i)
		resp := node.broadcast(`{"channel":"news","data":"` + payload + `"}`)
		switch resp.status {
		case http.StatusOK:
			var res result
			require.NoError(t, json.Unmarshal(resp.body, &res), "%s", resp.body)
			accepted = append(accepted, publishedEvent{data: payload, id: res.ID})
			switch {
			case lossDone:
				acceptedAfterLoss++
			case i >= lossAt:
				acceptedDuring++
			}
		case http.StatusServiceUnavailable:
			assert.Equal(t, "1", resp.header.Get("Retry-After"))
			refused[payload] = true
			time.Sleep(100 * time.Millisecond) // a publisher's backoff, not synchronisation
		default:
			require.FailNow(t, "unexpected answer", "%d %s", resp.status, resp.body)
		}
	}
	<-lost

	last := accepted[len(accepted)-1].data
	gotA, gotB := readThrough(t, onA, last), readThrough(t, onB, last)
	assertDelivered(t, "node A", gotA, accepted, refused)
	assertDelivered(t, "node B", gotB, accepted, refused)
	assert.Equal(t, data(gotA), data(gotB), "one order on both nodes")
	assert.Equal(t, ids(gotA), ids(gotB), "one numbering on both nodes")
	var stored int
	for _, ev := range gotA {
		if refused[ev.Data] {
			stored++
		}
	}
	t.Logf("%d accepted, %d of them while the leader shut down and %d after; %d refused, %d of those stored",
		len(accepted), acceptedDuring, acceptedAfterLoss, len(refused), stored)

	// A node started after the loss rebuilds its history from the servers
	// left: they kept every accepted event, in the same order and numbering.
	c := startCaddyNodeWith(t, cluster.urls(), "replicas 3")
	onC := openStream(t, c.url("/"), http.Header{"Last-Event-Id": {"earliest"}})
	gotC := readThrough(t, onC, last)
	assertDelivered(t, "a node started after the loss", gotC, accepted, refused)
	assert.Equal(t, data(gotA), data(gotC), "the history the replicas kept is what was delivered")
	assert.Equal(t, ids(gotA), ids(gotC))

	info = cluster.streamInfo(t)
	assert.Equal(t, 3, info.Config.Replicas, "the stream outlives the loss of a server")
	assert.NotEqual(t, leader.name, info.Cluster.Leader, "another server leads it")
}

// publishedEvent is an accepted publish: its data and the id it was
// answered with.
type publishedEvent struct {
	data string
	id   string
}

// readThrough reads s's events up to and including the one whose data is
// last.
func readThrough(t *testing.T, s *stream, last string) []sse.Event {
	t.Helper()
	var events []sse.Event
	for {
		ev := s.next()
		events = append(events, ev)
		if ev.Data == last {
			return events
		}
	}
}

// assertDelivered checks what a client got against what was published:
// every accepted event, in the order it was accepted, with the id it was
// answered with; a refused one at most once, as NATS may have stored it
// before the publisher gave up; nothing else, and nothing twice; ids
// increasing.
func assertDelivered(t *testing.T, client string, got []sse.Event, accepted []publishedEvent, refused map[string]bool) {
	t.Helper()
	wasAccepted := make(map[string]bool, len(accepted))
	for _, ev := range accepted {
		wasAccepted[ev.data] = true
	}
	seen := make(map[string]bool, len(got))
	var gotAccepted []publishedEvent
	var previous uint64
	for _, ev := range got {
		if seen[ev.Data] {
			assert.Failf(t, "an event was delivered twice", "%s got %s (id %s) again", client, ev.Data, ev.LastEventID)
		}
		seen[ev.Data] = true
		if wasAccepted[ev.Data] {
			gotAccepted = append(gotAccepted, publishedEvent{data: ev.Data, id: ev.LastEventID})
		} else if !refused[ev.Data] {
			assert.Failf(t, "an event that was never published", "%s got %q (id %s)", client, ev.Data, ev.LastEventID)
		}
		seq, err := strconv.ParseUint(ev.LastEventID, 10, 64)
		if assert.NoError(t, err, "%s: the id of %s is a stream sequence", client, ev.Data) {
			assert.Less(t, previous, seq, "%s: ids increase, at %s", client, ev.Data)
			previous = seq
		}
	}
	var missing []string
	for _, ev := range accepted {
		if !seen[ev.data] {
			missing = append(missing, ev.data)
		}
	}
	assert.Empty(t, missing, "%s: accepted events that were never delivered", client)
	assert.Equal(t, accepted, gotAccepted, "%s: every accepted event, in order, once, with the id it was answered with", client)
}

// natsCluster is NATS servers with JetStream, in this process, clustered
// by routes to each other, each storing on a directory of the test's.
type natsCluster struct {
	servers []*clusterServer
}

// clusterServer is one server of a natsCluster.
type clusterServer struct {
	name string
	url  string
	srv  *server.Server
	once sync.Once
}

// startNATSCluster starts n clustered NATS servers on free loopback ports,
// and waits until they have formed a JetStream cluster with a leader.
func startNATSCluster(t *testing.T, n int) *natsCluster {
	t.Helper()
	routeAddrs := freeAddrs(t, n)
	routes := make([]string, n)
	for i, addr := range routeAddrs {
		routes[i] = "nats-route://" + addr
	}
	c := &natsCluster{}
	for i, addr := range routeAddrs {
		host, port, err := net.SplitHostPort(addr)
		require.NoError(t, err)
		clusterPort, err := strconv.Atoi(port)
		require.NoError(t, err)
		srv, err := server.NewServer(&server.Options{
			ServerName: fmt.Sprintf("nats-%d", i+1),
			Host:       "127.0.0.1",
			Port:       -1,
			JetStream:  true,
			StoreDir:   t.TempDir(),
			Cluster:    server.ClusterOpts{Name: "sse", Host: host, Port: clusterPort},
			Routes:     server.RoutesFromStr(strings.Join(routes, ",")),
			NoLog:      true,
			NoSigs:     true,
		})
		require.NoError(t, err)
		s := &clusterServer{name: srv.Name(), srv: srv}
		t.Cleanup(s.shutdown)
		go srv.Start()
		c.servers = append(c.servers, s)
	}
	for _, s := range c.servers {
		require.True(t, s.srv.ReadyForConnections(awaitTimeout), "NATS server %s did not start", s.name)
		s.url = "nats://" + s.srv.Addr().String()
	}
	awaitCondition(t, "the NATS servers to form a JetStream cluster with a leader", c.formed)
	return c
}

// formed reports whether the servers have a JetStream meta leader that
// counts them all as peers, and every one is current with it.
func (c *natsCluster) formed() bool {
	var leader *server.Server
	for _, s := range c.servers {
		if !s.srv.JetStreamIsCurrent() {
			return false
		}
		if s.srv.JetStreamIsLeader() {
			leader = s.srv
		}
	}
	return leader != nil && len(leader.JetStreamClusterPeers()) == len(c.servers)
}

// urls are the client URLs of all the servers, running or not.
func (c *natsCluster) urls() []string {
	urls := make([]string, len(c.servers))
	for i, s := range c.servers {
		urls[i] = s.url
	}
	return urls
}

// streamLeader waits until the SSE stream has a leader, as the JetStream
// API and the leading server itself tell, and returns that server.
func (c *natsCluster) streamLeader(t *testing.T) *clusterServer {
	t.Helper()
	var leader *clusterServer
	awaitCondition(t, "the SSE stream to have a leader", func() bool {
		info, err := c.fetchStreamInfo()
		if err != nil || info.Cluster == nil {
			return false
		}
		for _, s := range c.servers {
			if s.name == info.Cluster.Leader && s.srv.JetStreamIsStreamLeader(server.DEFAULT_GLOBAL_ACCOUNT, DefaultStream) {
				leader = s
				return true
			}
		}
		return false
	})
	return leader
}

// streamInfo asks the cluster about the SSE stream, waiting until a
// server that leads it answers.
func (c *natsCluster) streamInfo(t *testing.T) *jetstream.StreamInfo {
	t.Helper()
	var info *jetstream.StreamInfo
	var err error
	awaitCondition(t, "the SSE stream's info", func() bool {
		info, err = c.fetchStreamInfo()
		return err == nil
	})
	return info
}

// fetchStreamInfo asks the JetStream API of the running servers about the
// SSE stream once.
func (c *natsCluster) fetchStreamInfo() (*jetstream.StreamInfo, error) {
	var urls []string
	for _, s := range c.servers {
		if s.srv.Running() {
			urls = append(urls, s.url)
		}
	}
	conn, err := nats.Connect(strings.Join(urls, ","))
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	js, err := jetstream.New(conn)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	stream, err := js.Stream(ctx, DefaultStream)
	if err != nil {
		return nil, err
	}
	return stream.CachedInfo(), nil
}

// shutdown stops the server, as a NATS server that goes down; it is safe
// to call more than once, and from another goroutine than the test's.
func (s *clusterServer) shutdown() {
	s.once.Do(func() {
		s.srv.Shutdown()
		s.srv.WaitForShutdown()
	})
}

// awaitCondition polls cond until it holds, failing the test if it does not
// within awaitTimeout.
func awaitCondition(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(awaitTimeout)
	for !cond() {
		if !time.Now().Before(deadline) {
			require.FailNow(t, "timed out", "awaited %s for %s", what, awaitTimeout)
		}
		time.Sleep(20 * time.Millisecond) // the poll's interval
	}
}
