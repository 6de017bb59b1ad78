package natstransport

// Tests of the admin API's reach over a cluster: a client is sent to,
// described and disconnected through any node, and every node's clients
// are listed and counted.

import (
	"encoding/json"
	"io"
	"net/http"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// clusterStats is the cluster part of GET /sse/stats.
type clusterStats struct {
	Node    string `json:"node"`
	Clients int    `json:"clients"`
	Cluster *struct {
		Clients int `json:"clients"`
		Nodes   []struct {
			Node    string `json:"node"`
			Clients int    `json:"clients"`
		} `json:"nodes"`
		Unanswered []string `json:"unanswered"`
	} `json:"cluster"`
}

// clientInfo is a client as GET /sse/clients describes it.
type clientInfo struct {
	ID       string   `json:"id"`
	Channels []string `json:"channels"`
	Node     string   `json:"node"`
}

// request sends a request to the node's admin API.
func (c *caddyNode) request(method, path string) apiResponse {
	c.t.Helper()
	req, err := http.NewRequest(method, "http://"+c.admin+path, nil)
	require.NoError(c.t, err)
	resp, err := plainClient.Do(req)
	require.NoError(c.t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(c.t, err)
	return apiResponse{status: resp.StatusCode, header: resp.Header, body: body}
}

// decode reads a 200 answer's JSON body into v.
func (r apiResponse) decode(t *testing.T, v any) {
	t.Helper()
	require.Equal(t, http.StatusOK, r.status, "%s", r.body)
	require.NoError(t, json.Unmarshal(r.body, v), "%s", r.body)
}

func (c *caddyNode) stats() clusterStats {
	c.t.Helper()
	var st clusterStats
	c.request(http.MethodGet, "/sse/stats").decode(c.t, &st)
	return st
}

// nodesAnswering are the names of the nodes whose figures c's stats hold.
func (st clusterStats) nodesAnswering() []string {
	var names []string
	if st.Cluster != nil {
		for _, n := range st.Cluster.Nodes {
			names = append(names, n.Node)
		}
	}
	return names
}

// awaitNodes waits until node c's stats hold exactly the named nodes, as
// nodes learn of each other once they are up.
func (c *caddyNode) awaitNodes(names ...string) clusterStats {
	c.t.Helper()
	var st clusterStats
	require.Eventually(c.t, func() bool {
		st = c.stats()
		return assert.ObjectsAreEqual(names, st.nodesAnswering())
	}, awaitTimeout, 20*time.Millisecond, "node %s never counted nodes %v", c.http, names)
	return st
}

// onlyClient is the one client connected to node c.
func (c *caddyNode) onlyClient() clientInfo {
	c.t.Helper()
	var list struct {
		Clients []clientInfo `json:"clients"`
	}
	require.Eventually(c.t, func() bool {
		list.Clients = nil
		c.request(http.MethodGet, "/sse/clients").decode(c.t, &list)
		mine := list.Clients[:0]
		for _, info := range list.Clients {
			if info.Node == c.name {
				mine = append(mine, info)
			}
		}
		list.Clients = mine
		return len(mine) == 1
	}, awaitTimeout, 20*time.Millisecond)
	return list.Clients[0]
}

func startNamedNodes(t *testing.T, nats *natsServer, names ...string) []*caddyNode {
	t.Helper()
	nodes := make([]*caddyNode, len(names))
	for i, name := range names {
		nodes[i] = startCaddyNodeWith(t, []string{nats.url()}, "node "+name)
		nodes[i].name = name
	}
	return nodes
}

func TestATargetedSendReachesTheClientOnWhicheverNodeHoldsIt(t *testing.T) {
	nats := startNATS(t)
	nodes := startNamedNodes(t, nats, "a", "b")
	a, b := nodes[0], nodes[1]
	a.awaitNodes("a", "b")
	onA, onB := openStream(t, a.url("/"), nil), openStream(t, b.url("/"), nil)
	target := b.onlyClient()

	sent := a.mustBroadcast(`{"client":"` + target.ID + `","data":"for b's client alone"}`)
	assert.Equal(t, result{Channel: "news", Clients: 1}, sent,
		"queued on node b; no id, the stream's ids being the NATS stream's")
	after := a.mustBroadcast(`{"channel":"news","data":"for all"}`)

	got := onB.read(2)
	assert.Equal(t, []string{"for b's client alone", "for all"}, data(got))
	assert.NotContains(t, onB.raw.String(), "id: 0000000000000000", "no placeholder id went out")
	assert.Equal(t, []string{"", after.ID}, ids(got), "the targeted event carries no id; the next event's is the stream's")
	assert.Equal(t, []string{"for all"}, onA.readData(1), "the client on a got only the channel's event")

	// A batch whose target no node holds is refused whole.
	resp := a.broadcast(`[{"channel":"news","data":"never"},{"client":"` + target.ID + `","data":"never either"},` +
		`{"client":"AAAAAAAAAAAAAAAAAAAAAAAAAA","data":"nobody"}]`)
	assert.Equal(t, http.StatusNotFound, resp.status, "%s", resp.body)
	assert.Contains(t, string(resp.body), "event 2: unknown client")
	// And one whose targets are all there goes, in order.
	resp = a.broadcast(`[{"client":"` + target.ID + `","data":"first"},{"channel":"news","data":"second"}]`)
	require.Equal(t, http.StatusOK, resp.status, "%s", resp.body)
	assert.Equal(t, []string{"first", "second"}, onB.readData(2), "nothing of the refused batch came before")
	assert.Equal(t, []string{"second"}, onA.readData(1))

	resp = a.broadcast(`{"client":"AAAAAAAAAAAAAAAAAAAAAAAAAA","data":"nobody"}`)
	assert.Equal(t, http.StatusNotFound, resp.status, "%s", resp.body)
	assert.JSONEq(t, `{"error":"unknown client \"AAAAAAAAAAAAAAAAAAAAAAAAAA\": no node of the cluster holds it"}`, string(resp.body))
}

func TestAClientOnAnotherNodeIsDescribedAndDisconnectedThroughAnyNode(t *testing.T) {
	nats := startNATS(t)
	nodes := startNamedNodes(t, nats, "a", "b")
	a, b := nodes[0], nodes[1]
	a.awaitNodes("a", "b")
	onB := openStream(t, b.url("/"), nil)
	target := b.onlyClient()

	var described clientInfo
	a.request(http.MethodGet, "/sse/clients/"+target.ID).decode(t, &described)
	assert.Equal(t, clientInfo{ID: target.ID, Channels: []string{"news"}, Node: "b"}, described)

	var kicked struct {
		Disconnected string   `json:"disconnected"`
		Channels     []string `json:"channels"`
		Node         string   `json:"node"`
	}
	a.request(http.MethodDelete, "/sse/clients/"+target.ID).decode(t, &kicked)
	assert.Equal(t, target.ID, kicked.Disconnected)
	assert.Equal(t, []string{"news"}, kicked.Channels)
	assert.Equal(t, "b", kicked.Node)
	select {
	case <-onB.ended:
	case <-time.After(awaitTimeout):
		t.Fatal("the client on node b was not disconnected")
	}

	for _, method := range []string{http.MethodGet, http.MethodDelete} {
		resp := a.request(method, "/sse/clients/"+target.ID)
		assert.Equal(t, http.StatusNotFound, resp.status, "%s %s", method, resp.body)
		assert.Contains(t, string(resp.body), "no node of the cluster holds it")
	}
}

func TestEveryNodesClientsAreListedAndCountedWithTheirNodesName(t *testing.T) {
	nats := startNATS(t)
	nodes := startNamedNodes(t, nats, "a", "b")
	a, b := nodes[0], nodes[1]
	a.awaitNodes("a", "b")
	openStream(t, a.url("/"), nil)
	for range 2 {
		openStream(t, b.url("/"), nil)
	}

	var list struct {
		Clients []clientInfo `json:"clients"`
	}
	a.request(http.MethodGet, "/sse/clients?channel=news").decode(t, &list)
	perNode := map[string]int{}
	for _, info := range list.Clients {
		perNode[info.Node]++
		assert.Len(t, info.ID, 26)
	}
	assert.Equal(t, map[string]int{"a": 1, "b": 2}, perNode)

	st := a.stats()
	assert.Equal(t, "a", st.Node)
	assert.Equal(t, 1, st.Clients, "this node's own figures stay its own")
	require.NotNil(t, st.Cluster)
	assert.Equal(t, 3, st.Cluster.Clients)
	assert.Equal(t, []string{"a", "b"}, st.nodesAnswering())
	assert.Empty(t, st.Cluster.Unanswered)

	// A node that vanishes without a word is named as not answering
	// until the others take it for gone.
	b.kill()
	st = a.stats()
	assert.Equal(t, []string{"b"}, st.Cluster.Unanswered)
	assert.Equal(t, []string{"a"}, st.nodesAnswering())
	assert.Equal(t, 1, st.Cluster.Clients, "the totals are of the nodes that answered")
	require.Eventually(t, func() bool { return len(a.stats().Cluster.Unanswered) == 0 },
		awaitTimeout, 100*time.Millisecond, "a node not heard from for a while is forgotten")
}

func TestANodeThatStopsIsForgottenAtOnce(t *testing.T) {
	nats := startNATS(t)
	nodes := startNamedNodes(t, nats, "a", "b")
	a, b := nodes[0], nodes[1]
	a.awaitNodes("a", "b")
	require.NoError(t, b.cmd.Process.Signal(os.Interrupt))
	<-b.exited
	st := a.stats()
	assert.Equal(t, []string{"a"}, st.nodesAnswering())
	assert.Empty(t, st.Cluster.Unanswered, "it said goodbye")
}
