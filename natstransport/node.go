package natstransport

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/caddy-sse/ssebroadcast"
	"github.com/caddyserver/caddy/v2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
)

// nodes holds, for each NATS address and stream, the process's one
// connection and consumer: each config's Transport takes a reference in
// Open and gives it back in Close, so that a reload, which opens the new
// config's transport before it closes the old one's, neither starts a
// second consumer nor delivers an event twice.
var nodes = caddy.NewUsagePool()

// Headers of a stored event, besides Nats-Msg-Id (msgID), which is there
// when the publisher gave the event an id.
const (
	// unnamedHeader is set when the publisher gave the event no name.
	unnamedHeader = "Sse-Unnamed"
)

// recentResults is how many of the latest deliveries a node remembers for
// publishers whose answer from the stream comes after their event was
// delivered here.
const recentResults = 1024

// catchUpWait bounds how long the first Open waits for the consumer to
// deliver what the stream held, so that clients resuming on a restarted
// node find their events in its windows.
const catchUpWait = 10 * time.Second

// consumerHeartbeat is how often NATS tells an idle consumer that it is
// still there; two missed make the ordered consumer start again from the
// event after the last it delivered. The consumer lives on one NATS server:
// when that server goes, the node delivers nothing until then, 2 s rather
// than the 10 s of nats.go's default heartbeat.
const consumerHeartbeat = time.Second

// retryWait is the pause between attempts to set up the stream and the
// consumer while NATS cannot be reached.
const retryWait = time.Second

// node is this process's connection to NATS for one stream, and the one
// consumer that delivers the stream's events, in stream order, to the
// process's fan-out.
type node struct {
	conn *nats.Conn
	js   jetstream.JetStream
	// peers are the other Caddy nodes on this stream.
	peers  *peers
	stream string
	sink   ssebroadcast.Sink
	logger *zap.Logger
	// release gives the numbering of events back to the node's fan-out.
	release func()

	mu sync.Mutex
	// config is the stream's config as last set.
	config jetstream.StreamConfig
	// delivered is the stream sequence of the last event delivered.
	delivered uint64
	// recent holds the results of the latest deliveries, at seq modulo
	// its length; waiters, the publishers waiting for theirs.
	recent  [recentResults]delivery
	waiters map[uint64]chan ssebroadcast.Result
	// consuming is the running consumer, once set up.
	consuming jetstream.ConsumeContext
	// caughtUp is closed once the consumer has delivered what the stream
	// held when it started.
	caughtUp       chan struct{}
	caughtUpClosed bool

	stop chan struct{}
	done chan struct{}
}

// delivery is the result of delivering the event numbered seq.
type delivery struct {
	seq    uint64
	result ssebroadcast.Result
}

// startNode connects to NATS and starts the consumer in the background.
// NATS need not be up: the connection and the consumer keep trying, and
// publishes fail with a *ssebroadcast.TransportError meanwhile.
func startNode(t *Transport, sink ssebroadcast.Sink) (*node, error) {
	n := &node{
		stream:   t.Stream,
		sink:     sink,
		logger:   t.logger,
		config:   t.streamConfig(),
		waiters:  make(map[uint64]chan ssebroadcast.Result),
		caughtUp: make(chan struct{}),
		stop:     make(chan struct{}),
		done:     make(chan struct{}),
	}
	n.peers = newPeers(t.Stream, t.Node, sink.Answer, t.logger)
	opts, err := t.connectOptions(n)
	if err != nil {
		return nil, err
	}
	n.conn, err = nats.Connect(t.serverList(), opts...)
	if err != nil {
		return nil, fmt.Errorf("connecting to NATS at %s: %w", t.serverList(), err)
	}
	n.js, err = jetstream.New(n.conn)
	if err != nil {
		n.conn.Close()
		return nil, fmt.Errorf("setting up JetStream: %w", err)
	}
	if err := n.peers.start(n.conn); err != nil {
		n.conn.Close()
		return nil, fmt.Errorf("joining the other nodes: %w", err)
	}
	// From here on, every event is numbered by the stream.
	n.release = sink.Durable()
	go n.run()
	if n.conn.IsConnected() {
		select {
		case <-n.caughtUp:
		case <-time.After(catchUpWait):
			n.logger.Warn("serving before the consumer caught up with the stream",
				zap.String("stream", n.stream), zap.Duration("waited", catchUpWait))
		}
	} else {
		n.logger.Warn("NATS is not reachable yet; publishes fail until it is",
			zap.String("servers", t.serverList()))
	}
	return n, nil
}

// run sets up the stream and the consumer, trying again until it can or
// the node stops. Once it runs, the ordered consumer recreates itself
// after a lost connection, from the event after the last it delivered.
func (n *node) run() {
	defer close(n.done)
	for {
		err := n.consume()
		if err == nil {
			return
		}
		n.logger.Warn("setting up the NATS stream and consumer; trying again",
			zap.String("stream", n.stream), zap.Error(err))
		select {
		case <-n.stop:
			return
		case <-time.After(retryWait):
		}
	}
}

// consume creates or updates the stream and starts the consumer, from the
// stream's first event: its history rebuilds this node's replay windows.
func (n *node) consume() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	n.mu.Lock()
	config := n.config
	n.mu.Unlock()
	stream, err := n.js.CreateOrUpdateStream(ctx, config)
	if err != nil {
		return fmt.Errorf("creating or updating stream %s: %w", n.stream, err)
	}
	if stream.CachedInfo().State.Msgs == 0 {
		n.markCaughtUp()
	}
	consumer, err := stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{channelsWildcard(n.stream)},
		DeliverPolicy:  jetstream.DeliverAllPolicy,
	})
	if err != nil {
		return fmt.Errorf("creating a consumer of stream %s: %w", n.stream, err)
	}
	consuming, err := consumer.Consume(n.deliver, jetstream.ConsumeErrHandler(n.consumeError),
		jetstream.PullHeartbeat(consumerHeartbeat))
	if err != nil {
		return fmt.Errorf("consuming stream %s: %w", n.stream, err)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	select {
	case <-n.stop:
		consuming.Stop()
	default:
		n.consuming = consuming
	}
	return nil
}

// consumeError logs what the consumer meets; it recovers by itself.
func (n *node) consumeError(_ jetstream.ConsumeContext, err error) {
	n.logger.Debug("NATS consumer", zap.String("stream", n.stream), zap.Error(err))
}

// deliver hands one stored event to the fan-out, and its result to the
// publisher waiting for it on this node, if any.
func (n *node) deliver(msg jetstream.Msg) {
	meta, err := msg.Metadata()
	if err != nil {
		n.logger.Error("reading a NATS message's metadata", zap.String("subject", msg.Subject()), zap.Error(err))
		return
	}
	seq := meta.Sequence.Stream
	result, err := n.deliverEvent(seq, msg)
	if err != nil {
		// Not an event this module stored: nobody waits for it.
		n.logger.Error("skipping a message of the stream",
			zap.String("stream", n.stream), zap.Uint64("seq", seq), zap.Error(err))
	}
	n.mu.Lock()
	n.delivered = seq
	n.recent[seq%recentResults] = delivery{seq: seq, result: result}
	if waiter, ok := n.waiters[seq]; ok {
		waiter <- result
		delete(n.waiters, seq)
	}
	n.mu.Unlock()
	if meta.NumPending == 0 {
		n.markCaughtUp()
	}
}

// deliverEvent reads the event that msg holds and delivers it.
func (n *node) deliverEvent(seq uint64, msg jetstream.Msg) (ssebroadcast.Result, error) {
	channel, err := channelOfSubject(n.stream, msg.Subject())
	if err != nil {
		return ssebroadcast.Result{}, err
	}
	headers := msg.Headers()
	env := ssebroadcast.Envelope{
		Channel: channel,
		Unnamed: headers.Get(unnamedHeader) != "",
		// Each message's data is its own copy: the fan-out keeps it.
		Frame: msg.Data(),
	}
	if value := headers.Get(jetstream.MsgIDHeader); value != "" {
		if env.ID, err = idOfMsgID(value); err != nil {
			return ssebroadcast.Result{}, err
		}
	}
	result := n.sink.Deliver(seq, env)
	result.Channel = channel
	return result, nil
}

// markCaughtUp records that the consumer has delivered what the stream held.
func (n *node) markCaughtUp() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if !n.caughtUpClosed {
		n.caughtUpClosed = true
		close(n.caughtUp)
	}
}

// publish stores one event in the stream and returns its sequence number,
// and a channel that brings its result once this node has delivered it.
func (n *node) publish(ctx context.Context, env *ssebroadcast.Envelope) (uint64, <-chan ssebroadcast.Result, error) {
	msg := &nats.Msg{
		Subject: channelSubject(n.stream, env.Channel),
		Data:    env.Frame,
		Header:  nats.Header{},
	}
	var opts []jetstream.PublishOpt
	if env.ID != "" {
		opts = append(opts, jetstream.WithMsgID(msgID(env.Channel, env.ID)))
	}
	if env.Unnamed {
		msg.Header.Set(unnamedHeader, "1")
	}
	ack, err := n.js.PublishMsg(ctx, msg, opts...)
	if err != nil {
		return 0, nil, err
	}
	return ack.Sequence, n.await(ack.Sequence), nil
}

// await returns a channel that brings the result of delivering the event
// numbered seq: at once if it was delivered already (a duplicate names an
// event delivered before; one delivered too long ago to be remembered
// answers with no clients), else when it is.
func (n *node) await(seq uint64) <-chan ssebroadcast.Result {
	ch := make(chan ssebroadcast.Result, 1)
	n.mu.Lock()
	defer n.mu.Unlock()
	if seq <= n.delivered {
		if recent := n.recent[seq%recentResults]; recent.seq == seq {
			ch <- recent.result
		} else {
			ch <- ssebroadcast.Result{}
		}
		return ch
	}
	n.waiters[seq] = ch
	return ch
}

// forget stops waiting for the delivery of the event numbered seq.
func (n *node) forget(seq uint64) {
	n.mu.Lock()
	delete(n.waiters, seq)
	n.mu.Unlock()
}

// updateStream applies a newer config's stream options, if they differ.
// It is best effort: without NATS the next setup applies them.
func (n *node) updateStream(config jetstream.StreamConfig) {
	n.mu.Lock()
	same := sameStreamConfig(n.config, config)
	n.config = config
	n.mu.Unlock()
	if same || !n.conn.IsConnected() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := n.js.UpdateStream(ctx, config); err != nil {
		n.logger.Error("updating the NATS stream's options", zap.String("stream", n.stream), zap.Error(err))
	}
}

func sameStreamConfig(a, b jetstream.StreamConfig) bool {
	return a.Replicas == b.Replicas && a.MaxAge == b.MaxAge && a.MaxMsgsPerSubject == b.MaxMsgsPerSubject &&
		a.MaxBytes == b.MaxBytes && a.Duplicates == b.Duplicates
}

// Destruct implements caddy.Destructor: the last config using the node is
// gone. It stops the consumer, closes the connection and gives the
// numbering of events back to the fan-out.
func (n *node) Destruct() error {
	n.mu.Lock()
	close(n.stop)
	consuming := n.consuming
	n.mu.Unlock()
	if consuming != nil {
		consuming.Stop()
		<-consuming.Closed()
	}
	n.peers.close()
	n.conn.Close()
	<-n.done
	n.release()
	return nil
}

// transportError says that NATS cannot take events for now.
func transportError(stream string, err error) error {
	return &ssebroadcast.TransportError{Err: fmt.Errorf("publishing to NATS stream %s: %w", stream, err)}
}

// Interface guard
var _ caddy.Destructor = (*node)(nil)
