package natstransport

// Tests of a cluster: two Caddy nodes, each its own process, carrying
// events through one NATS JetStream server embedded in the test process.

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddy-sse/ssebroadcast/internal/sockets"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	sse "github.com/tmaxmax/go-sse"
)

// ids returns the events' ids.
func ids(events []sse.Event) []string {
	out := make([]string, len(events))
	for i, ev := range events {
		out[i] = ev.LastEventID
	}
	return out
}

// data returns the events' data.
func data(events []sse.Event) []string {
	out := make([]string, len(events))
	for i, ev := range events {
		out[i] = ev.Data
	}
	return out
}

func TestAnEventPublishedOnOneNodeReachesTheClientsOfEveryNodeWithTheSameID(t *testing.T) {
	nats := startNATS(t)
	a, b := startCaddyNode(t, nats), startCaddyNode(t, nats)
	onA, onB := openStream(t, a.url("/"), nil), openStream(t, b.url("/"), nil)

	first := a.mustBroadcast(`{"channel":"news","data":"one"}`)
	assert.Equal(t, result{Channel: "news", ID: "0000000000000001", Clients: 1}, first,
		"numbered by the stream; the answer counts the clients of the node it was published on")
	own := a.mustBroadcast(`{"channel":"news","id":"my-id","event":"tick","data":"two"}`)
	assert.Equal(t, "my-id", own.ID)

	for _, s := range []*stream{onA, onB} {
		got := s.read(2)
		assert.Equal(t, []string{"one", "two"}, data(got))
		assert.Equal(t, []string{"0000000000000001", "my-id"}, ids(got))
		assert.Equal(t, []string{"", "tick"}, []string{got[0].Type, got[1].Type})
	}
	assert.Contains(t, onB.raw.String(), "id: 0000000000000001\ndata: one\n\n", "the frame as published, its id written in")
}

func TestConcurrentPublishersOnTwoNodesGiveEveryClientOneOrder(t *testing.T) {
	nats := startNATS(t)
	a, b := startCaddyNode(t, nats), startCaddyNode(t, nats)
	var streams []*stream
	for _, node := range []*caddyNode{a, b, a, b} {
		streams = append(streams, openStream(t, node.url("/"), nil))
	}

	const perPublisher = 40
	var wg sync.WaitGroup
	for p, node := range []*caddyNode{a, b} {
		wg.Go(func() {
			for i := range perPublisher {
				resp := node.broadcast(fmt.Sprintf(`{"channel":"news","data":"%d-%d"}`, p, i))
				assert.Equal(t, http.StatusOK, resp.status, "%s", resp.body)
			}
		})
	}
	wg.Wait()

	want := streams[0].read(2 * perPublisher)
	seen := make(map[string]bool)
	for i, ev := range want {
		seen[ev.Data] = true
		if i > 0 {
			assert.Less(t, want[i-1].LastEventID, ev.LastEventID, "ids increase")
		}
	}
	assert.Len(t, seen, 2*perPublisher, "every event once")
	for _, s := range streams[1:] {
		got := s.read(2 * perPublisher)
		assert.Equal(t, data(want), data(got), "one order on every node")
		assert.Equal(t, ids(want), ids(got))
	}
}

func TestAClientThatMovesToAnotherNodeWithLastEventIDMissesNothingAndGetsNothingTwice(t *testing.T) {
	nats := startNATS(t)
	a, b := startCaddyNode(t, nats), startCaddyNode(t, nats)
	onA := openStream(t, a.url("/"), nil)
	for i := 1; i <= 3; i++ {
		a.mustBroadcast(`{"channel":"news","data":"` + strconv.Itoa(i) + `"}`)
	}
	last := onA.read(3)[2].LastEventID
	onA.close()
	for i := 4; i <= 6; i++ {
		a.mustBroadcast(`{"channel":"news","data":"` + strconv.Itoa(i) + `"}`)
	}

	onB := openStream(t, b.url("/"), http.Header{"Last-Event-Id": {last}})
	first := onB.next()
	require.Equal(t, "4", first.Data, "no reset, and nothing before; the stream had read %q", onB.raw.String())
	assert.Equal(t, []string{"5", "6"}, onB.readData(2))
	b.mustBroadcast(`{"channel":"news","data":"7"}`)
	assert.Equal(t, "7", onB.next().Data, "live events follow the replayed ones with no gap and no duplicate")
}

func TestAPublishRetriedWithTheSameIDIsDeliveredOnceAndBothAnswersNameIt(t *testing.T) {
	nats := startNATS(t)
	a, b := startCaddyNode(t, nats), startCaddyNode(t, nats)
	onA, onB := openStream(t, a.url("/"), nil), openStream(t, b.url("/"), nil)

	const order = `{"channel":"news","id":"order-7","data":"shipped"}`
	first := a.mustBroadcast(order)
	// The publisher did not get the answer, and retries on another node.
	retry := b.mustBroadcast(order)
	assert.Equal(t, "order-7", first.ID)
	assert.Equal(t, "order-7", retry.ID)
	// The same id on another channel is another event.
	other := a.mustBroadcast(`{"channel":"invoices","id":"order-7","data":"paid"}`)
	assert.Equal(t, "order-7", other.ID)
	a.mustBroadcast(`{"channel":"news","data":"sentinel"}`)

	for _, s := range []*stream{onA, onB} {
		assert.Equal(t, []string{"shipped", "sentinel"}, s.readData(2), "the retry is not delivered again")
	}
	info := streamInfo(t, nats)
	assert.Equal(t, uint64(3), info.State.Msgs, "stored once, the other channel's event besides")
}

func TestWhileNATSIsDownPublishesGet503AndStreamsStayOpenAndOnceItIsBackEveryAcceptedEventIsDeliveredInOrderOnce(t *testing.T) {
	nats := startNATS(t)
	a, b := startCaddyNode(t, nats), startCaddyNode(t, nats)
	onA, onB := openStream(t, a.url("/"), nil), openStream(t, b.url("/"), nil)
	var accepted []string
	for i := range 3 {
		a.mustBroadcast(`{"channel":"news","data":"before-` + strconv.Itoa(i) + `"}`)
		accepted = append(accepted, "before-"+strconv.Itoa(i))
	}

	nats.shutdown()
	for _, node := range []*caddyNode{a, b} {
		start := time.Now()
		resp := node.broadcast(`{"channel":"news","data":"while down"}`)
		elapsed := time.Since(start)
		assert.Equal(t, http.StatusServiceUnavailable, resp.status, "%s", resp.body)
		assert.Equal(t, "1", resp.header.Get("Retry-After"))
		var answer struct{ Error string }
		require.NoError(t, json.Unmarshal(resp.body, &answer), "a JSON error: %s", resp.body)
		assert.Contains(t, answer.Error, "transport unavailable")
		assert.Less(t, elapsed, publishTimeout+time.Second, "answered within publish_timeout")
	}
	// Streams stay open: keep-alives go on.
	for _, s := range []*stream{onA, onB} {
		kept := strings.Count(s.raw.String(), ": keep-alive")
		s.raw.awaitCount(t, ": keep-alive", kept+2)
	}

	nats.restart()
	// Publishers retry until NATS takes events again; each answer counts.
	deadline := time.Now().Add(awaitTimeout)
	for i := 0; len(accepted) < 6; i++ {
		require.True(t, time.Now().Before(deadline), "publishing did not work again after NATS came back")
		node := []*caddyNode{a, b}[i%2]
		payload := "after-" + strconv.Itoa(i)
		resp := node.broadcast(`{"channel":"news","data":"` + payload + `"}`)
		switch resp.status {
		case http.StatusOK:
			accepted = append(accepted, payload)
		case http.StatusServiceUnavailable:
			time.Sleep(100 * time.Millisecond) // a publisher's backoff, not synchronisation
		default:
			require.FailNow(t, "unexpected answer", "%d %s", resp.status, resp.body)
		}
	}
	a.mustBroadcast(`{"channel":"news","data":"sentinel"}`)
	accepted = append(accepted, "sentinel")

	for _, s := range []*stream{onA, onB} {
		got := s.read(len(accepted))
		assert.Equal(t, accepted, data(got), "every accepted event, in order, once")
		assert.NotContains(t, s.raw.String(), "while down", "refused events are never sent later")
	}
}

func TestCaddyStartsWhileNATSIsDownAndPublishesOnceItIsUp(t *testing.T) {
	nats := unstartedNATS(t)
	a := startCaddyNode(t, nats)
	s := openStream(t, a.url("/"), nil)
	resp := a.broadcast(`{"channel":"news","data":"too early"}`)
	assert.Equal(t, http.StatusServiceUnavailable, resp.status, "%s", resp.body)
	assert.Equal(t, "1", resp.header.Get("Retry-After"))

	nats.start()
	deadline := time.Now().Add(awaitTimeout)
	for {
		resp := a.broadcast(`{"channel":"news","data":"once it is up"}`)
		if resp.status == http.StatusOK {
			break
		}
		require.Equal(t, http.StatusServiceUnavailable, resp.status, "%s", resp.body)
		require.True(t, time.Now().Before(deadline), "publishing did not work once NATS was up")
		time.Sleep(100 * time.Millisecond) // a publisher's backoff, not synchronisation
	}
	assert.Equal(t, "once it is up", s.next().Data)
	assert.NotContains(t, s.raw.String(), "too early")
}

func TestARestartedNodeServesResumesFromTheStream(t *testing.T) {
	nats := startNATS(t)
	a, b := startCaddyNode(t, nats), startCaddyNode(t, nats)
	onB := openStream(t, b.url("/"), nil)
	for i := 1; i <= 5; i++ {
		a.mustBroadcast(`{"channel":"news","data":"` + strconv.Itoa(i) + `"}`)
	}
	seen := onB.read(2)
	onB.close()
	b.kill()

	restarted := startCaddyNode(t, nats)
	resumed := openStream(t, restarted.url("/"), http.Header{"Last-Event-Id": {seen[1].LastEventID}})
	first := resumed.next()
	require.Equal(t, "3", first.Data, "no reset: the history outlives the node; the stream had read %q", resumed.raw.String())
	assert.Equal(t, []string{"4", "5"}, resumed.readData(2))
}

func TestAReloadKeepsOneConsumerPerNodeAndDeliversEachEventOnce(t *testing.T) {
	nats := startNATS(t)
	a := startCaddyNode(t, nats)
	a.mustBroadcast(`{"channel":"news","data":"before the reload"}`)
	require.Equal(t, 1, streamInfo(t, nats).State.Consumers)

	// A reload that keeps the servers and the stream, with another option.
	config, err := os.ReadFile(a.caddyfile)
	require.NoError(t, err)
	reloaded := strings.Replace(string(config), "publish_timeout", "max_age 30m\n\t\t\tpublish_timeout", 1)
	require.NoError(t, os.WriteFile(a.caddyfile, []byte(reloaded), 0o600))
	resp, err := plainClient.Post("http://"+a.admin+"/load", "text/caddyfile", strings.NewReader(reloaded))
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	// A connection the kernel queues on a socket of the old config as it
	// closes is reset, as package sockets says.
	sockets.AwaitSingleListener(t, awaitTimeout, a.http, a.admin)

	s := openStream(t, a.url("/"), http.Header{"Last-Event-Id": {"earliest"}})
	assert.Equal(t, "before the reload", s.next().Data)
	a.mustBroadcast(`{"channel":"news","data":"after the reload"}`)
	a.mustBroadcast(`{"channel":"news","data":"sentinel"}`)
	assert.Equal(t, []string{"after the reload", "sentinel"}, s.readData(2))
	info := streamInfo(t, nats)
	assert.Equal(t, 1, info.State.Consumers, "the reload took over the node's consumer")
	assert.Equal(t, 30*time.Minute, info.Config.MaxAge, "and applied the new stream options in place")
}

// streamInfo asks the NATS server about the SSE stream.
func streamInfo(t *testing.T, server *natsServer) *jetstream.StreamInfo {
	t.Helper()
	conn, err := nats.Connect(server.url())
	require.NoError(t, err)
	defer conn.Close()
	js, err := jetstream.New(conn)
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), awaitTimeout)
	defer cancel()
	stream, err := js.Stream(ctx, DefaultStream)
	require.NoError(t, err)
	return stream.CachedInfo()
}

func TestAStreamOfSeveralChannelsSeesStrictlyIncreasingIdsWhicheverNodeTheirPublishersUse(t *testing.T) {
	nats := startNATS(t)
	a, b := startCaddyNode(t, nats), startCaddyNode(t, nats)
	onA, onB := openStream(t, a.url("/several"), nil), openStream(t, b.url("/several"), nil)
	const each = 100
	var publishers sync.WaitGroup
	for _, p := range []struct {
		node    *caddyNode
		channel string
	}{{a, "news"}, {b, "sports"}, {a, "sports"}, {b, "news"}} {
		publishers.Go(func() {
			for i := range each {
				p.node.mustBroadcast(`{"channel":"` + p.channel + `","data":"` + strconv.Itoa(i) + `"}`)
			}
		})
	}
	publishers.Wait()
	got := [2][]string{ids(onA.read(4 * each)), ids(onB.read(4 * each))}
	for _, seen := range got {
		for i := 1; i < len(seen); i++ {
			require.Less(t, seen[i-1], seen[i], "ids strictly increase, over both channels")
		}
	}
	assert.Equal(t, got[0], got[1], "one order on both nodes")
}

func TestANodeServesResumesBacklogsAndResetsFromWhatTheStreamKept(t *testing.T) {
	nats := startNATS(t)
	a := startCaddyNodeWith(t, []string{nats.url()}, "max_msgs_per_subject 3")
	var published []result
	for i := 1; i <= 6; i++ {
		published = append(published, a.mustBroadcast(`{"channel":"news","data":"`+strconv.Itoa(i)+`"}`))
	}
	a.mustBroadcast(`{"channel":"sports","data":"other"}`)

	// A node started now has only what the stream kept: 4, 5 and 6 of news.
	late := startCaddyNodeWith(t, []string{nats.url()}, "max_msgs_per_subject 3")
	behind := openStream(t, late.url("/"), http.Header{"Last-Event-Id": {published[1].ID}})
	first := behind.next()
	assert.Equal(t, "reset", first.Type, "the stream let 3 go: the gap cannot be filled; read %q", behind.raw.String())
	assert.JSONEq(t, `{"reason":"expired","channels":["news"]}`, first.Data)
	assert.Equal(t, []string{"4", "5", "6"}, behind.readData(3))

	complete := openStream(t, late.url("/"), http.Header{"Last-Event-Id": {published[3].ID}})
	assert.Equal(t, []string{"5", "6"}, complete.readData(2), "a resume the stream can fill has no reset")
	assert.NotContains(t, complete.raw.String(), "event: reset")

	assert.Equal(t, []string{"5", "6"}, openStream(t, late.url("/backlog"), nil).readData(2), "backlog 2")
	earliest := openStream(t, late.url("/"), http.Header{"Last-Event-Id": {"earliest"}})
	got := earliest.read(3)
	assert.Equal(t, []string{"4", "5", "6"}, data(got))
	assert.Equal(t, []string{published[3].ID, published[4].ID, published[5].ID}, ids(got), "the ids the publisher was answered with")
}
