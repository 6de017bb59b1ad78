package natstransport

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/caddy-sse/ssebroadcast"
	"github.com/nats-io/nats.go"
	"go.uber.org/zap"
)

// The nodes of a cluster find each other, and put the admin API's
// questions to each other, over core NATS on subjects beside the stream's
// (<stream>.nodes.*), which the stream does not keep: a question is about
// now, and nobody asks it again later.
const (
	// helloInterval is how often a node says it is there; a node not heard
	// from for peerExpiry is taken for gone (a node that stops says so).
	helloInterval = 2 * time.Second
	peerExpiry    = 3*helloInterval + time.Second

	// Headers of a question and of its answers.
	nodeIDHeader   = "Sse-Node-Id"
	nodeNameHeader = "Sse-Node"
)

// peers is this process's place among the Caddy nodes on the same NATS
// and stream: it keeps track of the others, answers their questions with
// its sink's answers, and asks them its own (ssebroadcast.Cluster).
type peers struct {
	conn    *nats.Conn
	subject string
	// id tells this process apart from every other, whatever its name.
	id     string
	answer func(question []byte) []byte
	logger *zap.Logger

	mu   sync.Mutex
	name string
	// known are the other nodes heard from, by id.
	known map[string]peer
	subs  []*nats.Subscription

	stop chan struct{}
	done chan struct{}
}

// peer is another node as last heard from.
type peer struct {
	name string
	seen time.Time
}

// hello is what a node says on <stream>.nodes.hello, and, as it stops, on
// <stream>.nodes.bye.
type hello struct {
	ID   string `json:"id"`
	Name string `json:"name"`
}

func newPeers(stream, name string, answer func([]byte) []byte, logger *zap.Logger) *peers {
	return &peers{
		subject: stream + ".nodes",
		id:      rand.Text(),
		name:    name,
		answer:  answer,
		logger:  logger,
		known:   make(map[string]peer),
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
	}
}

// start subscribes to the other nodes' greetings and questions, and says
// hello now and every helloInterval until close.
func (p *peers) start(conn *nats.Conn) error {
	p.mu.Lock()
	p.conn = conn
	p.mu.Unlock()
	for subject, handle := range map[string]nats.MsgHandler{
		p.subject + ".hello": p.onHello,
		p.subject + ".bye":   p.onBye,
		p.subject + ".ask":   p.onAsk,
	} {
		sub, err := conn.Subscribe(subject, handle)
		if err != nil {
			p.unsubscribe()
			return fmt.Errorf("subscribing to %s: %w", subject, err)
		}
		p.subs = append(p.subs, sub)
	}
	p.sayHello()
	go p.greet()
	return nil
}

// greet says hello every helloInterval, and forgets the nodes not heard
// from for peerExpiry.
func (p *peers) greet() {
	defer close(p.done)
	tick := time.NewTicker(helloInterval)
	defer tick.Stop()
	for {
		select {
		case <-p.stop:
			return
		case now := <-tick.C:
			p.sayHello()
			p.mu.Lock()
			maps.DeleteFunc(p.known, func(_ string, q peer) bool { return now.Sub(q.seen) > peerExpiry })
			p.mu.Unlock()
		}
	}
}

// sayHello tells the other nodes that this one is there. It is also said
// on every reconnection to NATS, by the node's reconnect handler.
func (p *peers) sayHello() { p.say(".hello") }

func (p *peers) say(suffix string) {
	p.mu.Lock()
	body, _ := json.Marshal(hello{ID: p.id, Name: p.name})
	// The connection's handlers may say hello before start has the
	// connection: start says it then.
	conn := p.conn
	p.mu.Unlock()
	if conn == nil {
		return
	}
	if err := conn.Publish(p.subject+suffix, body); err != nil && !errors.Is(err, nats.ErrConnectionClosed) {
		p.logger.Debug("greeting the other nodes", zap.Error(err))
	}
}

// setName renames this node, as a newer config names it.
func (p *peers) setName(name string) {
	p.mu.Lock()
	changed := p.name != name
	p.name = name
	p.mu.Unlock()
	if changed {
		p.sayHello()
	}
}

func (p *peers) nodeName() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.name
}

func (p *peers) onHello(msg *nats.Msg) {
	var h hello
	if json.Unmarshal(msg.Data, &h) != nil || h.ID == "" || h.ID == p.id {
		return
	}
	p.mu.Lock()
	_, wasKnown := p.known[h.ID]
	p.known[h.ID] = peer{name: h.Name, seen: time.Now()}
	sameName := h.Name == p.name
	p.mu.Unlock()
	if !wasKnown {
		// A node that has just come learns of this one at once, not at
		// its next hello.
		p.sayHello()
		if sameName {
			p.logger.Warn("another node of the cluster has this node's name: give each its own with the transport's node option",
				zap.String("node", h.Name))
		}
	}
}

func (p *peers) onBye(msg *nats.Msg) {
	var h hello
	if json.Unmarshal(msg.Data, &h) != nil {
		return
	}
	p.mu.Lock()
	delete(p.known, h.ID)
	p.mu.Unlock()
}

// onAsk answers another node's question.
func (p *peers) onAsk(msg *nats.Msg) {
	if msg.Reply == "" || msg.Header.Get(nodeIDHeader) == p.id {
		return
	}
	reply := nats.NewMsg(msg.Reply)
	reply.Header.Set(nodeIDHeader, p.id)
	reply.Header.Set(nodeNameHeader, p.nodeName())
	reply.Data = p.answer(msg.Data)
	if limit := p.conn.MaxPayload(); int64(len(reply.Data)) > limit-1024 {
		// Too long for one message (a list of many clients, say):
		// answered with what went wrong rather than left unanswered.
		reply.Data, _ = json.Marshal(map[string]string{"error": fmt.Sprintf(
			"the answer's %d bytes are more than the NATS server's max_payload of %d", len(reply.Data), limit)})
	}
	if err := msg.RespondMsg(reply); err != nil {
		p.logger.Debug("answering another node", zap.Error(err))
	}
}

// askAll implements ssebroadcast.Cluster.AskAll, within timeout.
func (p *peers) askAll(ctx context.Context, timeout time.Duration, question []byte,
	answered func(node string, answer []byte) bool) ([]string, error) {
	p.mu.Lock()
	pending := make(map[string]string, len(p.known))
	for id, q := range p.known {
		pending[id] = q.name
	}
	p.mu.Unlock()
	if len(pending) == 0 {
		return nil, nil
	}
	if !p.conn.IsConnected() {
		return names(pending), &ssebroadcast.TransportError{Err: errors.New("not connected to NATS: the other nodes cannot be asked")}
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	inbox := p.conn.NewRespInbox()
	sub, err := p.conn.SubscribeSync(inbox)
	if err != nil {
		return names(pending), &ssebroadcast.TransportError{Err: fmt.Errorf("asking the other nodes: %w", err)}
	}
	defer func() { _ = sub.Unsubscribe() }()
	msg := nats.NewMsg(p.subject + ".ask")
	msg.Reply = inbox
	msg.Header.Set(nodeIDHeader, p.id)
	msg.Data = question
	if err := p.conn.PublishMsg(msg); err != nil {
		return names(pending), &ssebroadcast.TransportError{Err: fmt.Errorf("asking the other nodes: %w", err)}
	}
	heard := make(map[string]bool)
	for len(pending) > 0 {
		reply, err := sub.NextMsgWithContext(ctx)
		if err != nil {
			break
		}
		id := reply.Header.Get(nodeIDHeader)
		if heard[id] {
			continue
		}
		// A node that answers before its hello reached this one counts
		// all the same.
		heard[id] = true
		delete(pending, id)
		if answered(reply.Header.Get(nodeNameHeader), reply.Data) {
			return nil, nil
		}
	}
	return names(pending), nil
}

// names are the names of the nodes in byID, sorted.
func names(byID map[string]string) []string {
	return slices.Sorted(maps.Values(byID))
}

// unsubscribe ends the subscriptions.
func (p *peers) unsubscribe() {
	for _, sub := range p.subs {
		_ = sub.Unsubscribe()
	}
	p.subs = nil
}

// close says goodbye, so that the other nodes stop asking this one at
// once, and stops greeting.
func (p *peers) close() {
	if p.conn == nil {
		return
	}
	p.unsubscribe()
	p.say(".bye")
	_ = p.conn.Flush()
	close(p.stop)
	<-p.done
}
