// Package natstransport is the sse app's transport between Caddy nodes:
// the module sse.transports.nats carries every published event through a
// NATS JetStream stream to every node's fan-out, in the stream's order.
//
// An event flows like this: the node where it is published validates and
// encodes it (the core's publish), and Transport.Publish stores its frame
// in the stream under its channel's subject (subject.go), with the
// publisher's id as the message id, so that a retried publish is stored
// once. On every node, one ordered consumer per process (node.go, kept in
// a caddy.UsagePool across reloads) delivers each stored event to the
// fan-out, numbered with its stream sequence: the same id on every node,
// and a history that outlives any node, from which a restarted node
// rebuilds its replay windows. The publisher's answer waits until this
// node's consumer has delivered its event, so that it counts the clients
// here that it was queued for.
//
// It is a package of its own so that the core never imports nats.go: a
// Caddy built without it has no NATS code in it.
package natstransport

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"
	"unicode"

	"github.com/caddy-sse/ssebroadcast"
	"github.com/caddyserver/caddy/v2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
)

func init() {
	caddy.RegisterModule(Transport{})
}

// Defaults of the transport's options.
const (
	DefaultURL             = nats.DefaultURL
	DefaultStream          = "SSE"
	DefaultReplicas        = 1
	DefaultPublishTimeout  = 2 * time.Second
	DefaultDuplicateWindow = 2 * time.Minute
	// The stream's limits default to the sse app's replay defaults, so
	// that the stream keeps what a node's windows keep.
	DefaultMaxAge            = ssebroadcast.DefaultReplayTTL
	DefaultMaxMsgsPerSubject = ssebroadcast.DefaultReplayEvents
	DefaultMaxBytes          = ssebroadcast.DefaultReplayTotalBytes
)

// Transport carries events between Caddy nodes through a NATS JetStream
// stream. Every node that names the same NATS servers and stream receives
// every event published on any of them, in one order, numbered alike.
type Transport struct {
	// URLs are the NATS servers to connect to, any of one cluster; the
	// client finds the others by itself. Default: nats://127.0.0.1:4222.
	URLs []string `json:"urls,omitempty"`

	// Stream is the JetStream stream's name; the transport creates it, or
	// updates its options, at start. Its subjects are <stream>.ch.>.
	// Default: SSE.
	Stream string `json:"stream,omitempty"`

	// Replicas is how many NATS servers keep a copy of the stream (1, 3 or
	// 5 in a cluster). Default: 1.
	Replicas int `json:"replicas,omitempty"`

	// PublishTimeout bounds a publish: storing its events and this node's
	// delivery of them. Past it, a publish that NATS did not answer fails
	// with 503 and Retry-After (its events may still have been stored: a
	// retry with the same event id is stored once), and one that was
	// stored but not yet delivered here answers with 0 clients.
	// Default: 2s.
	PublishTimeout caddy.Duration `json:"publish_timeout,omitempty"`

	// MaxAge is how long the stream keeps an event, the durable
	// counterpart of the sse app's replay_ttl. Default: 1h.
	MaxAge caddy.Duration `json:"max_age,omitempty"`

	// MaxMsgsPerSubject is how many of a channel's newest events the
	// stream keeps, the counterpart of the sse app's replay. The sse app's
	// replay_max_bytes, a bound per channel that JetStream does not have,
	// is met by each node's own window. Default: 1000.
	MaxMsgsPerSubject int64 `json:"max_msgs_per_subject,omitempty"`

	// MaxBytes bounds the whole stream, in bytes, the counterpart of the
	// sse app's replay_total_bytes: over it, the oldest events go.
	// Default: 256 MiB.
	MaxBytes int64 `json:"max_bytes,omitempty"`

	// DuplicateWindow is how long the stream remembers the ids of events
	// published with an id of the publisher's own: another event with the
	// same id on the same channel within it is taken for a retry, and not
	// stored again. At most MaxAge. Default: 2m.
	DuplicateWindow caddy.Duration `json:"duplicate_window,omitempty"`

	// Creds is a NATS credentials file (a user JWT and its nkey seed).
	Creds string `json:"creds,omitempty"`

	// NKey is a file holding an nkey seed to authenticate with.
	NKey string `json:"nkey,omitempty"`

	// User and Password authenticate with a user name and password.
	User     string `json:"user,omitempty"`
	Password string `json:"password,omitempty"`

	// Token authenticates with a token.
	Token string `json:"token,omitempty"`

	// TLS, when set, connects over TLS; its files are PEM.
	TLS *TLS `json:"tls,omitempty"`

	// Node names this node in the admin API's answers: its clients in
	// GET /sse/clients, its figures in GET /sse/stats. Give each node a
	// name of its own. Default: the machine's host name.
	Node string `json:"node,omitempty"`

	node   *node
	key    string
	logger *zap.Logger
}

// TLS is how the transport connects to NATS over TLS.
type TLS struct {
	// CA is a file of the certificate authorities to trust the servers'
	// certificates by. Default: the system's.
	CA string `json:"ca,omitempty"`
	// Cert and Key are the client's certificate and private key files,
	// for servers that verify clients.
	Cert string `json:"cert,omitempty"`
	Key  string `json:"key,omitempty"`
}

// CaddyModule returns the Caddy module information.
func (Transport) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "sse.transports.nats",
		New: func() caddy.Module { return new(Transport) },
	}
}

// Provision applies the defaults.
func (t *Transport) Provision(ctx caddy.Context) error {
	t.logger = ctx.Logger()
	if len(t.URLs) == 0 {
		t.URLs = []string{DefaultURL}
	}
	if t.Stream == "" {
		t.Stream = DefaultStream
	}
	if t.Replicas == 0 {
		t.Replicas = DefaultReplicas
	}
	if t.PublishTimeout == 0 {
		t.PublishTimeout = caddy.Duration(DefaultPublishTimeout)
	}
	if t.MaxAge == 0 {
		t.MaxAge = caddy.Duration(DefaultMaxAge)
	}
	if t.MaxMsgsPerSubject == 0 {
		t.MaxMsgsPerSubject = DefaultMaxMsgsPerSubject
	}
	if t.MaxBytes == 0 {
		t.MaxBytes = DefaultMaxBytes
	}
	if t.DuplicateWindow == 0 {
		t.DuplicateWindow = caddy.Duration(DefaultDuplicateWindow)
	}
	if t.Node == "" {
		host, err := os.Hostname()
		if err != nil {
			return fmt.Errorf("naming this node after its host (give it a name with the node option): %w", err)
		}
		t.Node = host
	}
	// One connection and consumer per NATS address and stream; the other
	// options of a reload that keeps both apply to the stream in place.
	t.key = t.serverList() + " " + t.Stream
	return nil
}

// Validate rejects options that cannot work.
func (t *Transport) Validate() error {
	switch {
	case !validStreamName(t.Stream):
		return fmt.Errorf("stream %q is not a JetStream stream name: it must not be empty or hold '.', '*', '>', a path separator or whitespace", t.Stream)
	case t.Replicas < 1 || t.Replicas > 5:
		return fmt.Errorf("replicas must be between 1 and 5, got %d", t.Replicas)
	case t.PublishTimeout < 0:
		return fmt.Errorf("publish_timeout must not be negative, got %s", time.Duration(t.PublishTimeout))
	case t.MaxAge < 0:
		return fmt.Errorf("max_age must not be negative, got %s", time.Duration(t.MaxAge))
	case t.MaxMsgsPerSubject < 0:
		return fmt.Errorf("max_msgs_per_subject must not be negative, got %d", t.MaxMsgsPerSubject)
	case t.MaxBytes < 0:
		return fmt.Errorf("max_bytes must not be negative, got %d", t.MaxBytes)
	case t.DuplicateWindow < caddy.Duration(100*time.Millisecond):
		return fmt.Errorf("duplicate_window must be at least 100ms, got %s", time.Duration(t.DuplicateWindow))
	case t.DuplicateWindow > t.MaxAge:
		return fmt.Errorf("duplicate_window (%s) must not be longer than max_age (%s)",
			time.Duration(t.DuplicateWindow), time.Duration(t.MaxAge))
	case t.NKey != "" && t.Creds != "":
		return errors.New("creds and nkey are two ways to authenticate: give one")
	case t.TLS != nil && (t.TLS.Cert == "") != (t.TLS.Key == ""):
		return errors.New("tls needs both cert and key, or neither")
	}
	if len(t.Node) > 128 || strings.ContainsFunc(t.Node, unicode.IsControl) {
		return fmt.Errorf("node %q: a node's name is at most 128 characters, none of them control characters", t.Node)
	}
	for _, u := range t.URLs {
		if strings.ContainsAny(u, ", \t") {
			return fmt.Errorf("url %q: give each NATS server as a url of its own", u)
		}
	}
	return nil
}

// validStreamName reports whether name can name a JetStream stream and
// lead its subjects.
func validStreamName(name string) bool {
	return name != "" && !strings.ContainsAny(name, ".*>/\\ \t\r\n")
}

// serverList is the URLs as nats.Connect takes them.
func (t *Transport) serverList() string { return strings.Join(t.URLs, ",") }

// streamConfig is the stream as the options describe it.
func (t *Transport) streamConfig() jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:              t.Stream,
		Description:       "Server-Sent Events carried between Caddy nodes by the sse app",
		Subjects:          []string{channelsWildcard(t.Stream)},
		Storage:           jetstream.FileStorage,
		Replicas:          t.Replicas,
		Retention:         jetstream.LimitsPolicy,
		Discard:           jetstream.DiscardOld,
		MaxAge:            time.Duration(t.MaxAge),
		MaxMsgsPerSubject: t.MaxMsgsPerSubject,
		MaxBytes:          t.MaxBytes,
		Duplicates:        time.Duration(t.DuplicateWindow),
	}
}

// connectOptions are the options of the connection to NATS.
func (t *Transport) connectOptions(n *node) ([]nats.Option, error) {
	name := "caddy sse"
	if host, err := os.Hostname(); err == nil {
		name += " " + host
	}
	opts := []nats.Option{
		nats.Name(fmt.Sprintf("%s pid %d", name, os.Getpid())),
		// Caddy starts, and keeps serving streams, while NATS is down.
		nats.RetryOnFailedConnect(true),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(time.Second),
		// No buffering while reconnecting: a publish that gets 503 must
		// not be sent later behind the publisher's back.
		nats.ReconnectBufSize(-1),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			n.logger.Warn("disconnected from NATS", zap.Error(err))
		}),
		nats.ReconnectHandler(func(c *nats.Conn) {
			n.logger.Info("reconnected to NATS", zap.String("server", c.ConnectedUrlRedacted()))
			n.peers.sayHello()
		}),
		nats.ConnectHandler(func(c *nats.Conn) {
			n.logger.Info("connected to NATS", zap.String("server", c.ConnectedUrlRedacted()))
			n.peers.sayHello()
		}),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			n.logger.Warn("NATS", zap.Error(err))
		}),
	}
	switch {
	case t.Creds != "":
		opts = append(opts, nats.UserCredentials(t.Creds))
	case t.NKey != "":
		opt, err := nats.NkeyOptionFromSeed(t.NKey)
		if err != nil {
			return nil, fmt.Errorf("reading nkey seed %s: %w", t.NKey, err)
		}
		opts = append(opts, opt)
	}
	if t.User != "" {
		opts = append(opts, nats.UserInfo(t.User, t.Password))
	}
	if t.Token != "" {
		opts = append(opts, nats.Token(t.Token))
	}
	if t.TLS != nil {
		opts = append(opts, nats.Secure())
		if t.TLS.CA != "" {
			opts = append(opts, nats.RootCAs(t.TLS.CA))
		}
		if t.TLS.Cert != "" {
			opts = append(opts, nats.ClientCert(t.TLS.Cert, t.TLS.Key))
		}
	}
	return opts, nil
}

// Open takes the process's connection and consumer for these servers and
// stream, starting them on first use; a reload's Open finds those of the
// config it replaces.
func (t *Transport) Open(sink ssebroadcast.Sink) error {
	val, loaded, err := nodes.LoadOrNew(t.key, func() (caddy.Destructor, error) {
		return startNode(t, sink)
	})
	if err != nil {
		return err
	}
	t.node = val.(*node)
	if loaded {
		t.node.updateStream(t.streamConfig())
		t.node.peers.setName(t.Node)
	}
	return nil
}

// NodeName implements ssebroadcast.Cluster.
func (t *Transport) NodeName() string { return t.node.peers.nodeName() }

// AskAll implements ssebroadcast.Cluster: it asks the other nodes on the
// same NATS and stream, over core NATS, and waits for them at most
// PublishTimeout.
func (t *Transport) AskAll(ctx context.Context, question []byte, answered func(node string, answer []byte) bool) ([]string, error) {
	return t.node.peers.askAll(ctx, time.Duration(t.PublishTimeout), question, answered)
}

// Publish stores events in the stream, in order, each once NATS has
// answered for the one before, and waits until this node has delivered
// them, all within PublishTimeout.
func (t *Transport) Publish(ctx context.Context, events []ssebroadcast.Envelope, results []ssebroadcast.Result) error {
	parent := ctx
	ctx, cancel := context.WithTimeout(ctx, time.Duration(t.PublishTimeout))
	defer cancel()
	seqs := make([]uint64, len(events))
	delivered := make([]<-chan ssebroadcast.Result, len(events))
	for i := range events {
		seq, ch, err := t.node.publish(ctx, &events[i])
		if err != nil {
			for _, seq := range seqs[:i] {
				t.node.forget(seq)
			}
			if parent.Err() != nil {
				// The publisher is gone: nobody to tell to try again.
				return fmt.Errorf("publishing to NATS: %w", parent.Err())
			}
			if errors.Is(err, nats.ErrMaxPayload) {
				return fmt.Errorf("the event's %d bytes are more than the NATS server's max_payload: %w", len(events[i].Frame), err)
			}
			return transportError(t.Stream, err)
		}
		seqs[i], delivered[i] = seq, ch
	}
	for i, seq := range seqs {
		select {
		case results[i] = <-delivered[i]:
		case <-ctx.Done():
			// Stored: it reaches this node's clients once the consumer
			// gets to it.
			t.node.forget(seq)
			results[i] = ssebroadcast.Result{}
			t.logger.Warn("event stored, but not delivered on this node within publish_timeout",
				zap.Uint64("seq", seq), zap.Duration("publish_timeout", time.Duration(t.PublishTimeout)))
		}
		if results[i].ID == "" {
			results[i].ID = events[i].ID
		}
		if results[i].ID == "" {
			// As the fan-out writes the stream's sequence in.
			results[i].ID = fmt.Sprintf("%016d", seq)
		}
	}
	return nil
}

// Close gives back this config's reference to the connection and
// consumer; the last one stops them.
func (t *Transport) Close() error {
	if t.node == nil {
		return nil
	}
	t.node = nil
	if _, err := nodes.Delete(t.key); err != nil {
		return fmt.Errorf("releasing the NATS connection: %w", err)
	}
	return nil
}

// Interface guards
var (
	_ ssebroadcast.Transport = (*Transport)(nil)
	_ ssebroadcast.Cluster   = (*Transport)(nil)
	_ caddy.Provisioner      = (*Transport)(nil)
	_ caddy.Validator        = (*Transport)(nil)
)
