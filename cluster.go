package ssebroadcast

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"go.uber.org/zap"
)

// Cluster is implemented by a transport that joins several nodes: besides
// carrying events, it puts this node's questions about clients to the
// other nodes, so that the admin API and the Go API reach a client on
// whichever node holds it, and list and count the clients of every node.
//
// The questions and their answers are the core's (JSON); a cluster only
// carries them, and has each node's Sink answer what it is asked.
type Cluster interface {
	// NodeName names this node in the answers of the admin API.
	NodeName() string

	// AskAll puts question to every other node the cluster knows of and
	// hands each node's answer to answered, one at a time, until answered
	// returns true (enough is known), every node has answered, or ctx
	// ends; it bounds the wait by its own timeout too. It returns the
	// names of the nodes that did not answer, or a *TransportError when
	// it cannot ask at all.
	AskAll(ctx context.Context, question []byte, answered func(node string, answer []byte) (enough bool)) (silent []string, err error)
}

// What one node asks the others.
const (
	askStats   = "stats"   // its figures
	askClients = "clients" // its clients, of Channel if set
	askClient  = "client"  // the client Client, if it holds it
	askKick    = "kick"    // disconnect the client Client, if it holds it
	askLocate  = "locate"  // whether it holds the client Client, on Channel if set
	askSend    = "send"    // queue Event for the client Client, if it holds it
)

// question is what one node asks the others, as JSON.
type question struct {
	Op      string    `json:"op"`
	Client  string    `json:"client,omitempty"`
	Channel string    `json:"channel,omitempty"`
	Event   *Envelope `json:"event,omitempty"`
}

// answer is a node's answer to a question, as JSON: what it found, if
// anything, of what it was asked.
type answer struct {
	Found   bool         `json:"found,omitempty"`
	Stats   *Stats       `json:"stats,omitempty"`
	Clients []ClientInfo `json:"clients,omitempty"`
	Client  *ClientInfo  `json:"client_info,omitempty"`
	Result  *Result      `json:"result,omitempty"`
	Error   string       `json:"error,omitempty"`
}

// ClusterStats are the figures of every node that answered, as GET
// /sse/stats reports them beside this node's own.
type ClusterStats struct {
	// Clients is the number of connected clients over every node that
	// answered, this one included.
	Clients int `json:"clients"`
	// Nodes are the nodes that answered, this one first.
	Nodes []NodeStats `json:"nodes"`
	// Unanswered names the nodes the cluster knows of that did not answer
	// in time: the totals leave them out.
	Unanswered []string `json:"unanswered"`
}

// NodeStats are one node's figures in ClusterStats.
type NodeStats struct {
	// Node is the node's name.
	Node string `json:"node"`
	// Clients is the number of clients connected to the node.
	Clients int `json:"clients"`
	// Deliveries counts events the node queued for its clients.
	Deliveries uint64 `json:"deliveries"`
}

// Answer answers a question of another node's (Sink).
func (b *broadcaster) Answer(raw []byte) []byte {
	var q question
	var a answer
	if err := json.Unmarshal(raw, &q); err != nil {
		a.Error = fmt.Sprintf("reading the question: %v", err)
	} else {
		a = b.answer(&q)
	}
	out, err := json.Marshal(a)
	if err != nil {
		// Nothing in an answer fails to encode.
		out = fmt.Appendf(nil, `{"error":%q}`, err.Error())
	}
	return out
}

func (b *broadcaster) answer(q *question) answer {
	switch q.Op {
	case askStats:
		st := b.stats()
		return answer{Found: true, Stats: &st}
	case askClients:
		return answer{Found: true, Clients: b.clientList(q.Channel)}
	case askClient:
		if info, ok := b.clientInfo(q.Client); ok {
			return answer{Found: true, Client: &info}
		}
	case askKick:
		if s, err := b.kick(q.Client); err == nil {
			return answer{Found: true, Client: &ClientInfo{ID: s.id, Channels: s.channels}}
		}
	case askLocate:
		if _, err := b.client(q.Client, q.Channel); err == nil {
			return answer{Found: true}
		}
	case askSend:
		if q.Event == nil {
			return answer{Error: "a send needs an event"}
		}
		s, err := b.client(q.Client, q.Channel)
		if err != nil {
			return answer{}
		}
		env := *q.Event
		if env.Channel == "" {
			env.Channel = s.channels[0]
		}
		b.orderMu.Lock()
		result := b.sendTo(s, env)
		b.orderMu.Unlock()
		result.Channel = env.Channel
		return answer{Found: true, Result: &result}
	default:
		return answer{Error: fmt.Sprintf("unknown question %q", q.Op)}
	}
	return answer{}
}

// clientInfo describes the connected client with the given id.
func (b *broadcaster) clientInfo(id string) (ClientInfo, bool) {
	s, err := b.client(id, "")
	if err != nil {
		return ClientInfo{}, false
	}
	for _, info := range b.clientList(s.channels[0]) {
		if info.ID == id {
			return info, true
		}
	}
	return ClientInfo{}, false
}

// cluster is the app's transport as a Cluster, or nil on a single node.
func (a *App) cluster() Cluster {
	c, _ := a.transport.(Cluster)
	return c
}

// askAll puts q to every other node and hands each answer to answered.
func askAll(ctx context.Context, c Cluster, q question, answered func(node string, a *answer) (enough bool)) ([]string, error) {
	raw, err := json.Marshal(q)
	if err != nil {
		return nil, fmt.Errorf("encoding a question to the other nodes: %w", err)
	}
	return c.AskAll(ctx, raw, func(node string, body []byte) bool {
		var a answer
		if err := json.Unmarshal(body, &a); err != nil {
			a.Error = fmt.Sprintf("reading node %s's answer: %v", node, err)
		}
		return answered(node, &a)
	})
}

// askFirst asks the other nodes q and returns the first answer that found
// what q asks for, with the node that gave it; found is false when no
// node did.
func askFirst(ctx context.Context, c Cluster, q question) (node string, a *answer, found bool, err error) {
	_, err = askAll(ctx, c, q, func(from string, got *answer) bool {
		if got.Found {
			node, a, found = from, got, true
		}
		return found
	})
	if found {
		return node, a, true, nil
	}
	return "", nil, false, err
}

// clusterStats collects every node's figures; nil on a single node.
func (a *App) clusterStats(ctx context.Context, local *Stats) *ClusterStats {
	c := a.cluster()
	if c == nil {
		return nil
	}
	cs := &ClusterStats{
		Clients: local.Clients,
		Nodes:   []NodeStats{{Node: c.NodeName(), Clients: local.Clients, Deliveries: local.Deliveries}},
	}
	var others []NodeStats
	var failed []string
	silent, err := askAll(ctx, c, question{Op: askStats}, func(node string, got *answer) bool {
		if got.Stats == nil {
			failed = append(failed, node)
			return false
		}
		others = append(others, NodeStats{Node: node, Clients: got.Stats.Clients, Deliveries: got.Stats.Deliveries})
		cs.Clients += got.Stats.Clients
		return false
	})
	if err != nil {
		a.logger.Warn("asking the other nodes for their figures", zap.Error(err))
	}
	slices.SortFunc(others, func(x, y NodeStats) int { return strings.Compare(x.Node, y.Node) })
	cs.Nodes = append(cs.Nodes, others...)
	cs.Unanswered = append(append([]string{}, silent...), failed...)
	slices.Sort(cs.Unanswered)
	return cs
}

// clusterClients lists the clients of every node that answered, of one
// channel if channel is set, each with its node's name, and the nodes that
// did not answer; on a single node, this node's.
func (a *App) clusterClients(ctx context.Context, channel string) (list []ClientInfo, unanswered []string) {
	local := a.broadcaster.clientList(channel)
	c := a.cluster()
	if c == nil {
		return local, nil
	}
	for i := range local {
		local[i].Node = c.NodeName()
	}
	var others []ClientInfo
	var failed []string
	silent, err := askAll(ctx, c, question{Op: askClients, Channel: channel}, func(node string, got *answer) bool {
		if got.Error != "" {
			a.logger.Warn("a node could not list its clients", zap.String("node", node), zap.String("error", got.Error))
			failed = append(failed, node)
			return false
		}
		for _, info := range got.Clients {
			info.Node = node
			others = append(others, info)
		}
		return false
	})
	if err != nil {
		a.logger.Warn("asking the other nodes for their clients", zap.Error(err))
	}
	list = append(local, others...)
	sortClients(list)
	unanswered = append(append(unanswered, silent...), failed...)
	slices.Sort(unanswered)
	return list, unanswered
}

// clusterClient describes the client with the given id on whichever node
// holds it.
func (a *App) clusterClient(ctx context.Context, id string) (ClientInfo, error) {
	c := a.cluster()
	if info, ok := a.broadcaster.clientInfo(id); ok {
		if c != nil {
			info.Node = c.NodeName()
		}
		return info, nil
	}
	if c == nil {
		return ClientInfo{}, unknownClient(id)
	}
	return askForClient(ctx, c, askClient, id)
}

// clusterKick disconnects the client with the given id on whichever node
// holds it, and returns it as that node described it.
func (a *App) clusterKick(ctx context.Context, id string) (ClientInfo, error) {
	c := a.cluster()
	s, err := a.broadcaster.kick(id)
	if err == nil {
		info := ClientInfo{ID: s.id, Channels: s.channels}
		if c != nil {
			info.Node = c.NodeName()
		}
		return info, nil
	}
	if c == nil {
		return ClientInfo{}, err
	}
	return askForClient(ctx, c, askKick, id)
}

// askForClient puts op about the client id to the other nodes, and returns
// the client as the node that holds it describes it.
func askForClient(ctx context.Context, c Cluster, op, id string) (ClientInfo, error) {
	node, got, found, err := askFirst(ctx, c, question{Op: op, Client: id})
	if !found || got.Client == nil {
		return ClientInfo{}, notFoundInCluster(id, err)
	}
	info := *got.Client
	info.Node = node
	return info, nil
}

// remoteTarget is a client that another node holds, as a publish finds it.
type remoteTarget struct {
	client, channel string
}

// locate reports whether some node of the cluster holds the client id (on
// channel, if set).
func locate(ctx context.Context, c Cluster, id, channel string) error {
	_, _, found, err := askFirst(ctx, c, question{Op: askLocate, Client: id, Channel: channel})
	if !found {
		return notFoundInCluster(id, err)
	}
	return nil
}

// sendRemote has the node that holds the client queue env for it.
func sendRemote(ctx context.Context, c Cluster, target remoteTarget, env Envelope) (Result, error) {
	_, got, found, err := askFirst(ctx, c, question{Op: askSend, Client: target.client, Channel: target.channel, Event: &env})
	if !found || got.Result == nil {
		return Result{}, notFoundInCluster(target.client, err)
	}
	return *got.Result, nil
}

// unknownClient is the error for a client no node holds.
func unknownClient(id string) error {
	return fmt.Errorf("%w %q: no such client is connected", errUnknownClient, id)
}

// notFoundInCluster is the error for a client that no node that answered
// holds: unknown, or, when the other nodes could not be asked, the
// transport's error.
func notFoundInCluster(id string, err error) error {
	if transportErr := (*TransportError)(nil); errors.As(err, &transportErr) {
		return fmt.Errorf("client %q is not on this node, and the other nodes cannot be asked: %w", id, err)
	}
	return fmt.Errorf("%w %q: no node of the cluster holds it", errUnknownClient, id)
}
