// Package ssebroadcast is a Caddy module that broadcasts Server-Sent Events.
//
// It has five modules, one concept a file:
//
//   - The sse app (module.go, App) is the server-wide broadcaster. Every
//     publish path goes through it. Its state lives in a caddy.UsagePool, so
//     a config reload finds the same channels and counters.
//   - The http.handlers.sse_broadcast handler (handler.go, Handler) holds a
//     client's text/event-stream open and writes it the events of its
//     channels (chosen in streamchannels.go), in id order.
//   - The sse.transports.memory transport (transport.go, MemoryTransport)
//     carries published events to the fan-out within this process; other
//     transports, in packages of their own, carry them between nodes.
//   - The admin.api.sse admin module (admin.go, AdminAPI) serves
//     POST /sse/broadcast and GET /sse/stats on Caddy's admin endpoint.
//   - The http.handlers.sse_publish handler (publish.go, PublishHandler)
//     answers a site route's POST as POST /sse/broadcast does, within the
//     channels its allow patterns match (channelpattern.go).
//
// Between publishing and the fan-out stands a transport, a module of the
// sse.transports namespace (transport.go): memory, the default, within the
// process; sse.transports.nats, in the package natstransport so that the
// core never imports nats.go, between Caddy nodes through a NATS JetStream
// stream, which numbers the events (Sink.Durable).
//
// The `caddy sse-broadcast` command (command.go) publishes through the admin
// API from a shell, and caddyfile.go adapts the sse_broadcast directive and
// the sse global option.
//
// An event flows like this: a publisher (the admin API, the CLI through it,
// or another Caddy module calling App.Broadcast) hands an Event to the app;
// the broadcaster (broadcaster.go) validates it and encodes it to its wire
// form once (event.go), and hands it to the app's transport (transport.go),
// which carries it to the fan-out of every node: the memory transport, the
// default, to this process's broadcaster at once. In one order over all
// channels (so that a stream of several channels sees ids increase), it
// numbers the event, keeps it in the channel's replay window (replay.go),
// and appends those
// same bytes to the queue of every subscriber of the channel
// (subscriber.go) without waiting on any client. Whoever writes a stream
// takes everything queued for it and writes it with one flush: for an
// HTTP/1 stream, which the handler takes over from net/http once its
// headers are out (takeover.go), a small pool of shared writers with
// non-blocking writes, and an epoll watcher that notices clients leave
// (writer.go, hangup*.go), so that an idle client holds no goroutine; for
// an HTTP/2 or HTTP/3 stream, its handler's goroutine, whose writes a
// watchdog bounds (watchdog.go). A stream that resumes with Last-Event-ID
// takes the events it missed from its channels' windows in the same order,
// so it neither misses nor doubles one, and is told with a reset where
// they cannot be all (resume.go).
//
// A stream ends when its client leaves, when the server cuts it (too slow,
// or kicked), or when its config stops: at once when Caddy stops, and on a
// reload over its handler's drain window, each stream at a moment of its
// own (drain.go), so that clients do not all reconnect in the same second.
// A stream refused over a limit is answered, for an EventSource, with a
// stream that tells it when to come back (refusal.go), since a browser
// gives up for good after a 503.
package ssebroadcast

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

func init() {
	caddy.RegisterModule(App{})
}

// DefaultMaxBody is the default limit of an admin API request body, in bytes.
const DefaultMaxBody = 1 << 20

// Defaults of the sse app's limits.
const (
	DefaultMaxChannelLength = 256
	DefaultMaxEventSize     = 1 << 20
	DefaultMaxChannels      = 100000
)

// broadcasterPool holds the process's one broadcaster across config reloads:
// each config's App takes a reference in Provision and gives it back in
// Cleanup, so the broadcaster lives as long as any config uses it.
var broadcasterPool = caddy.NewUsagePool()

const broadcasterKey = "broadcaster"

// App is the sse app: the server-wide broadcaster. Handlers subscribe their
// clients to it, and every publish path goes through it.
type App struct {
	// MaxBody is the largest request body, in bytes, that the admin API's
	// POST /sse/broadcast accepts; larger ones get 413. Default: 1 MiB.
	MaxBody int64 `json:"max_body,omitempty"`

	// Replay is how many of a channel's most recent events it keeps for
	// clients that reconnect with Last-Event-ID. 0 turns replay off.
	// Default: 1000.
	Replay *int `json:"replay,omitempty"`

	// ReplayMaxBytes bounds one channel's replay window, in bytes.
	// Default: 4 MiB.
	ReplayMaxBytes int64 `json:"replay_max_bytes,omitempty"`

	// ReplayTTL is how long an event stays in its channel's replay window.
	// Default: 1h.
	ReplayTTL caddy.Duration `json:"replay_ttl,omitempty"`

	// ReplayTotalBytes bounds all replay windows together, in bytes. Over
	// it, the channel being published to gives up its oldest events.
	// Default: 256 MiB.
	ReplayTotalBytes int64 `json:"replay_total_bytes,omitempty"`

	// MaxClients bounds the streams open at once over the whole server;
	// further stream requests are refused as over a handler's max_clients
	// (a stream that ends with a retry for an EventSource, else 503 with
	// Retry-After). Default: 0, no limit.
	MaxClients int `json:"max_clients,omitempty"`

	// MaxChannelLength bounds a channel's name, in bytes: a longer one is
	// refused to publishers (400) and to streams (400). Default: 256.
	MaxChannelLength int `json:"max_channel_length,omitempty"`

	// MaxEventSize bounds one event's id, name and data together, in
	// bytes; a larger one is refused with 413. Default: 1 MiB.
	MaxEventSize int `json:"max_event_size,omitempty"`

	// MaxChannels bounds how many channels exist at once (a channel exists
	// while it has clients or events to replay: one with no client counts
	// until its last event is older than ReplayTTL). A publish that would
	// make a new channel over it is refused with 503; so is a stream, or,
	// for an EventSource, answered with a stream that sets a retry and
	// ends. Default: 100000.
	MaxChannels int `json:"max_channels,omitempty"`

	// TransportRaw is the transport that carries published events to
	// every node's clients, a module of the sse.transports namespace,
	// named by its "module" field. Default: memory, within this process.
	TransportRaw json.RawMessage `json:"transport,omitempty" caddy:"namespace=sse.transports inline_key=module"`

	transport   Transport
	broadcaster *broadcaster
	streams     *configStreams
	logger      *zap.Logger
	// ctx is the config's, to tell a reload from a stop; drains, the
	// process's drains under way (drain.go).
	ctx    caddy.Context
	drains *drains

	// limits and previousLimits let Stop undo Start when this config
	// does not take over: Caddy stops the apps that started when another
	// app of the config fails to, and keeps the old config running.
	limits, previousLimits *broadcastLimits
}

// configStreams is the set of streams one config serves, so that stopping
// the config ends them: Caddy's default grace period never expires, and a
// stream never ends by itself. Each open stream maps to its handler's drain
// window.
type configStreams struct {
	mu       sync.Mutex
	stopping bool
	open     map[*subscriber]time.Duration
}

// CaddyModule returns the Caddy module information.
func (App) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "sse",
		New: func() caddy.Module { return new(App) },
	}
}

// Provision takes the process's broadcaster, creating it on first use.
func (a *App) Provision(ctx caddy.Context) error {
	a.logger = ctx.Logger()
	a.ctx = ctx
	if a.MaxBody == 0 {
		a.MaxBody = DefaultMaxBody
	}
	if a.Replay == nil {
		events := DefaultReplayEvents
		a.Replay = &events
	}
	if a.ReplayMaxBytes == 0 {
		a.ReplayMaxBytes = DefaultReplayMaxBytes
	}
	if a.ReplayTTL == 0 {
		a.ReplayTTL = caddy.Duration(DefaultReplayTTL)
	}
	if a.ReplayTotalBytes == 0 {
		a.ReplayTotalBytes = DefaultReplayTotalBytes
	}
	if a.MaxChannelLength == 0 {
		a.MaxChannelLength = DefaultMaxChannelLength
	}
	if a.MaxEventSize == 0 {
		a.MaxEventSize = DefaultMaxEventSize
	}
	if a.MaxChannels == 0 {
		a.MaxChannels = DefaultMaxChannels
	}
	a.streams = &configStreams{open: make(map[*subscriber]time.Duration)}
	val, _, err := broadcasterPool.LoadOrNew(broadcasterKey, func() (caddy.Destructor, error) {
		return newBroadcaster(a.broadcastLimits()), nil
	})
	if err != nil {
		return fmt.Errorf("loading broadcaster: %w", err)
	}
	a.broadcaster = val.(*broadcaster)
	if a.TransportRaw != nil {
		mod, err := ctx.LoadModule(a, "TransportRaw")
		if err != nil {
			return fmt.Errorf("loading transport: %w", err)
		}
		a.transport = mod.(Transport)
	} else {
		a.transport = new(MemoryTransport)
	}
	if err := a.transport.Open(a.broadcaster); err != nil {
		return fmt.Errorf("opening transport: %w", err)
	}
	val, _, err = drainsPool.LoadOrNew(drainsKey, func() (caddy.Destructor, error) {
		return newDrains(), nil
	})
	if err != nil {
		return fmt.Errorf("loading drains: %w", err)
	}
	a.drains = val.(*drains)
	// Each config has its own registry: registering on it is what keeps
	// the metrics across reloads.
	if registry := ctx.GetMetricsRegistry(); registry != nil {
		err := registry.Register(metricsCollector{broadcaster: a.broadcaster})
		if already := (prometheus.AlreadyRegisteredError{}); err != nil && !errors.As(err, &already) {
			return fmt.Errorf("registering metrics: %w", err)
		}
	}
	return nil
}

// Validate rejects options that cannot work.
func (a *App) Validate() error {
	switch {
	case a.MaxBody < 0:
		return fmt.Errorf("max_body must not be negative, got %d", a.MaxBody)
	case *a.Replay < 0:
		return fmt.Errorf("replay must not be negative, got %d", *a.Replay)
	case a.ReplayMaxBytes < 0:
		return fmt.Errorf("replay_max_bytes must not be negative, got %d", a.ReplayMaxBytes)
	case a.ReplayTTL < 0:
		return fmt.Errorf("replay_ttl must not be negative, got %s", time.Duration(a.ReplayTTL))
	case a.ReplayTotalBytes < 0:
		return fmt.Errorf("replay_total_bytes must not be negative, got %d", a.ReplayTotalBytes)
	case a.MaxClients < 0:
		return fmt.Errorf("max_clients must not be negative, got %d", a.MaxClients)
	case a.MaxChannelLength < 1:
		return fmt.Errorf("max_channel_length must be at least 1, got %d", a.MaxChannelLength)
	case a.MaxEventSize < 1:
		return fmt.Errorf("max_event_size must be at least 1, got %d", a.MaxEventSize)
	case a.MaxChannels < 1:
		return fmt.Errorf("max_channels must be at least 1, got %d", a.MaxChannels)
	}
	return nil
}

func (a *App) broadcastLimits() broadcastLimits {
	return broadcastLimits{
		events:     *a.Replay,
		bytes:      int(min(a.ReplayMaxBytes, math.MaxInt)),
		ttl:        time.Duration(a.ReplayTTL),
		totalBytes: a.ReplayTotalBytes,

		maxChannelLength: a.MaxChannelLength,
		maxEventSize:     a.MaxEventSize,
		maxChannels:      a.MaxChannels,
	}
}

// Start applies this config's replay limits to the broadcaster, which a
// reload keeps: windows shrink or grow in place.
func (a *App) Start() error {
	limits := a.broadcastLimits()
	a.limits = &limits
	a.previousLimits = a.broadcaster.setLimits(a.limits)
	return nil
}

// Stop ends every stream this config serves, so that neither a reload nor
// `caddy stop` waits on them: at once, or on a reload over their handlers'
// drain windows. Clients reconnect to the new config.
func (a *App) Stop() error {
	a.endStreams()
	if a.limits != nil {
		// A no-op once a newer config has set its own limits.
		a.broadcaster.restoreLimits(a.limits, a.previousLimits)
	}
	return nil
}

// Cleanup gives back this config's references to the drains and the
// broadcaster. The last config to go ends what is left of any drain first,
// since the broadcaster goes with it.
func (a *App) Cleanup() error {
	if a.drains != nil {
		if _, err := drainsPool.Delete(drainsKey); err != nil {
			return fmt.Errorf("releasing drains: %w", err)
		}
	}
	if a.broadcaster == nil {
		return nil
	}
	if a.transport != nil {
		if err := a.transport.Close(); err != nil {
			return fmt.Errorf("closing transport: %w", err)
		}
	}
	if _, err := broadcasterPool.Delete(broadcasterKey); err != nil {
		return fmt.Errorf("releasing broadcaster: %w", err)
	}
	return nil
}

// Broadcast sends one event to every client connected to its channel. It
// returns once the event is queued for each of them; it never waits for a
// client to read. An invalid event is rejected with a *FieldError.
func (a *App) Broadcast(ctx context.Context, ev Event) (Result, error) {
	results, err := a.BroadcastBatch(ctx, []Event{ev})
	if err != nil {
		return Result{}, err
	}
	return results[0], nil
}

// BroadcastBatch sends events in order. It is all or nothing: if any event
// is invalid, none is sent.
func (a *App) BroadcastBatch(ctx context.Context, events []Event) ([]Result, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return a.broadcaster.publish(ctx, a.transport, events)
}

// Stats returns a snapshot of this node's figures.
func (a *App) Stats() Stats {
	st := a.broadcaster.stats()
	if c := a.cluster(); c != nil {
		st.Node = c.NodeName()
	}
	return st
}

// Errors that refuse a stream.
var (
	errStopping       = errors.New("the server is stopping")
	errTooManyClients = errors.New("too many clients")
)

// streamOptions are a handler's settings for one stream.
type streamOptions struct {
	maxQueue      int
	maxQueueBytes int
	nameByChannel bool
	start         resumeRequest
	remoteAddr    string
	// drain is the handler's drain window.
	drain time.Duration
}

// attach subscribes a new stream to its channels.
func (a *App) attach(channels []string, opts *streamOptions) (*subscriber, error) {
	b := a.broadcaster
	if n := b.connected.Add(1); a.MaxClients > 0 && n > int64(a.MaxClients) {
		b.connected.Add(-1)
		b.rejected.Add(1)
		return nil, errTooManyClients
	}
	s := newSubscriber(channels, opts.maxQueue, opts.maxQueueBytes)
	s.remoteAddr = opts.remoteAddr
	s.nameByChannel = opts.nameByChannel
	cs := a.streams
	cs.mu.Lock()
	if cs.stopping {
		cs.mu.Unlock()
		b.connected.Add(-1)
		return nil, errStopping
	}
	cs.open[s] = opts.drain
	cs.mu.Unlock()
	if err := b.subscribe(s, &opts.start); err != nil {
		a.detach(s)
		return nil, err
	}
	return s, nil
}

// detach removes a stream that has ended.
func (a *App) detach(s *subscriber) {
	a.broadcaster.unsubscribe(s)
	a.broadcaster.connected.Add(-1)
	a.streams.mu.Lock()
	delete(a.streams.open, s)
	a.streams.mu.Unlock()
}

// endStreams ends every stream of this config and refuses new ones. On a
// reload, the streams of handlers with a drain window end over it
// (drain.go), the others at once; when Caddy stops, every stream ends at
// once, and so do those that earlier reloads are still draining.
func (a *App) endStreams() {
	replaced := replacedByAnotherConfig(a.ctx)
	cs := a.streams
	cs.mu.Lock()
	if cs.stopping {
		// Both a server's shutdown and the app's Stop end the streams.
		cs.mu.Unlock()
		return
	}
	cs.stopping = true
	streams := make([]*subscriber, 0, len(cs.open))
	var draining []drainingStream
	for s, window := range cs.open {
		if replaced && window > 0 {
			draining = append(draining, drainingStream{sub: s, window: window})
			continue
		}
		streams = append(streams, s)
	}
	if len(draining) > 0 {
		// Under the lock, so that the other caller of endStreams returns
		// once the drain is known: a stop right after the reload must
		// find it.
		a.drains.start(a.broadcaster, a.logger, draining)
	}
	cs.mu.Unlock()
	for _, s := range streams {
		a.broadcaster.drop(s, dropShutdown)
	}
	if len(streams) > 0 {
		a.logger.Info("ended open streams", zap.Int("streams", len(streams)))
	}
	if !replaced {
		a.drains.hurryAll()
	}
}

// Interface guards
var (
	_ caddy.App          = (*App)(nil)
	_ caddy.Provisioner  = (*App)(nil)
	_ caddy.Validator    = (*App)(nil)
	_ caddy.CleanerUpper = (*App)(nil)
)
