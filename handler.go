package ssebroadcast

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"mime"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

func init() {
	caddy.RegisterModule(Handler{})
}

// Defaults of the stream handler.
const (
	DefaultKeepAlive    = 15 * time.Second
	DefaultWriteTimeout = 10 * time.Second
	DefaultSendBuffer   = 64 << 10

	DefaultMaxStreamChannels = 32
	DefaultResetEvent        = "reset"
)

// Handler streams the events of one or more channels to each client as
// text/event-stream, in id order. It answers GET only; the stream stays
// open until the client leaves or the config stops.
type Handler struct {
	// Channels are the channels whose events every stream receives. Caddy
	// placeholders are resolved per request, e.g. "{query.topic}" or
	// "user-{http.auth.user.id}"; a request whose channel resolves to an
	// empty name, or one with a line break, gets 400. Default:
	// ["default"], or none when QueryChannels is set.
	Channels []string `json:"channels,omitempty"`

	// QueryChannels names a query parameter, which may repeat
	// (?topic=a&topic=b), whose values are channels the stream receives
	// too: the client's choice, each of which must match one of Allow (a
	// request for another gets 403). Requires Allow. Default: none.
	QueryChannels string `json:"query_channels,omitempty"`

	// Allow lists the channels a client may ask for with QueryChannels, as
	// glob patterns: "*" matches any run of characters, and placeholders
	// are resolved per request ("user-{http.auth.user.id}"); a pattern
	// whose placeholder is unknown or empty matches nothing.
	Allow []string `json:"allow,omitempty"`

	// MaxStreamChannels bounds how many channels one stream receives,
	// duplicates collapsed; a request for more gets 400. Default: 32.
	MaxStreamChannels int `json:"max_stream_channels,omitempty"`

	// NameByChannel sends each event whose publisher gave it no name with
	// its channel as its name ("event: news"), so that a page tells the
	// channels of one stream apart with addEventListener("news", …).
	// Default: off (such events fire "message").
	NameByChannel bool `json:"name_by_channel,omitempty"`

	// ResetEvent names the event a stream sends first when it cannot send
	// every event after the client's Last-Event-ID (see README, "Resets").
	// Default: "reset".
	ResetEvent string `json:"reset_event,omitempty"`

	// NoReset turns the reset event off: such a stream then starts with
	// what is kept, as if it had been complete.
	NoReset bool `json:"no_reset,omitempty"`

	// Backlog is how many of the newest kept events of its channels, in id
	// order, a client that gives no Last-Event-ID receives first: a chat
	// page's last messages. Default: 0.
	Backlog int `json:"backlog,omitempty"`

	// KeepAlive is the idle time after which the stream sends a comment
	// line, so that proxies and clients see the connection alive. A
	// negative value turns keep-alives off. Default: 15s.
	KeepAlive caddy.Duration `json:"keepalive,omitempty"`

	// Retry, when set, is sent once as the "retry:" field when the stream
	// opens: how long a browser waits before it reconnects. Sent in whole
	// milliseconds. Default: not sent (browsers use their own, about 3s).
	Retry caddy.Duration `json:"retry,omitempty"`

	// WriteTimeout is how long a write to the client may stall: a client
	// that takes no 32 KiB of what is sent to it in this time is
	// disconnected. On Linux it also bounds how long what a taken-over
	// HTTP/1.1 stream sent may go unacknowledged (TCP_USER_TIMEOUT), so
	// that a client gone without a FIN or an RST is disconnected within it
	// and a keep-alive interval (see README, "Clients that vanish"). A
	// negative value turns the timeout off. Default: 10s.
	WriteTimeout caddy.Duration `json:"write_timeout,omitempty"`

	// MaxQueue is how many events may wait for one client; a client that
	// falls further behind is disconnected. Default: 1024.
	MaxQueue int `json:"max_queue,omitempty"`

	// MaxQueueBytes is how many bytes of events may wait for one client.
	// Default: 4 MiB.
	MaxQueueBytes int `json:"max_queue_bytes,omitempty"`

	// MaxClients bounds the streams this handler holds open at once.
	// Further requests are refused: one whose Accept names
	// text/event-stream (an EventSource's) gets 200 with a stream that
	// sets a retry (the backoff, with jitter) and ends, so that a browser
	// comes back; any other gets 503 with Retry-After. Default: 0, no
	// limit.
	MaxClients int `json:"max_clients,omitempty"`

	// FlushInterval is the least time between two writes to one client.
	// Events published sooner after a write wait for the next one and
	// share it: under a high publish rate each client then costs one
	// system call per interval instead of one per event, at the price of
	// at most this much latency; an event after a quiet spell is written at
	// once. 0 writes every event at once. Default: 0.
	FlushInterval caddy.Duration `json:"flush_interval,omitempty"`

	// SendBuffer sets the kernel's send buffer, in bytes, of each HTTP/1.1
	// stream's connection. It bounds how much a client that stopped
	// reading holds in the kernel, so that its writes block, and the write
	// timeout and queue bounds disconnect it, after that much rather than
	// after the several megabytes the kernel would otherwise allow. A
	// negative value leaves the kernel's own sizing. Default: 64 KiB.
	SendBuffer int `json:"send_buffer,omitempty"`

	// Greeting, when set, opens each stream with a "connected" event whose
	// data is {"client":"<id>","channel":"<channel>"}: the client's id, by
	// which the admin API lists it, sends to it alone and disconnects it.
	// The event has no id field, so it does not move the client's
	// Last-Event-ID. Default: false.
	Greeting bool `json:"greeting,omitempty"`

	// Takeover, on by default, takes each HTTP/1 stream's connection over
	// from Caddy's HTTP server once the response headers and the stream's
	// first bytes are out. An idle client then holds no goroutine and no
	// buffers, only its socket and a few hundred bytes, and a few shared
	// writers (one fewer than CPUs) write to every client, each client's
	// queued events in one system call. The response is sent without chunked
	// encoding and ends when the connection closes, as the SSE spec
	// suggests. On a server that keeps access logs, the handler stays
	// parked (one goroutine) until the stream ends, so that the stream's
	// entry has its real duration and events sent. Streams whose response
	// is compressed (encode), and HTTP/2 and
	// HTTP/3 streams, stay with the server in any case. Set false to keep
	// every stream with the server. Default: true.
	Takeover *bool `json:"takeover,omitempty"`

	// Drain is the window over which a config reload ends this handler's
	// open streams: each ends at a moment of its own, spread evenly and at
	// random over the window, so that its clients reconnect to the new
	// config spread over it too rather than all in the same second. Until
	// then a stream receives every event published, and keep-alives; its
	// client then resumes with Last-Event-ID and misses nothing. The old
	// config lingers for that long after the reload, and its streams keep
	// its options meanwhile: a reload that tightens access reaches a
	// draining client only when it reconnects. Keep it below the http
	// app's grace_period, if one is set: HTTP/3 connections are closed
	// when that passes. Stopping Caddy ends streams at once, whatever the
	// drain. 0 ends every stream at the reload, as Caddy's reverse_proxy
	// ends its streams by default: set a few seconds (e.g. 10s) where a
	// reload would otherwise bring thousands of clients back at once.
	// Default: 0.
	Drain caddy.Duration `json:"drain,omitempty"`

	allow   channelPatterns
	app     *App
	server  *caddyhttp.Server // nil outside an HTTP server
	clients *atomic.Int64
	logger  *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.sse_broadcast",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision applies defaults and finds the sse app.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	h.clients = new(atomic.Int64)
	if len(h.Channels) == 0 && h.QueryChannels == "" {
		h.Channels = []string{DefaultChannel}
	}
	if h.MaxStreamChannels == 0 {
		h.MaxStreamChannels = DefaultMaxStreamChannels
	}
	if h.ResetEvent == "" {
		h.ResetEvent = DefaultResetEvent
	}
	allow, err := newChannelPatterns(h.Allow)
	if err != nil {
		return err
	}
	h.allow = allow
	if h.KeepAlive == 0 {
		h.KeepAlive = caddy.Duration(DefaultKeepAlive)
	}
	if h.WriteTimeout == 0 {
		h.WriteTimeout = caddy.Duration(DefaultWriteTimeout)
	}
	if h.MaxQueue == 0 {
		h.MaxQueue = DefaultMaxQueue
	}
	if h.MaxQueueBytes == 0 {
		h.MaxQueueBytes = DefaultMaxQueueBytes
	}
	if h.SendBuffer == 0 {
		h.SendBuffer = DefaultSendBuffer
	}
	app, err := ctx.App("sse")
	if err != nil {
		return fmt.Errorf("loading sse app: %w", err)
	}
	h.app = app.(*App)
	// Streams end as soon as their server begins to shut down: when Caddy
	// exits, the http app waits for open requests before the sse app is
	// sure to have stopped, so ending streams in App.Stop alone could come
	// too late. The hook of the HTTP/1 and HTTP/2 server ends every stream
	// of the config, HTTP/3 ones included.
	if srv, ok := ctx.Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server); ok {
		h.server = srv
		srv.RegisterOnShutdown(h.app.endStreams)
		// Caddy's way for a handler to reach the connection.
		srv.RegisterConnContext(func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, connCtxKey{}, c)
		})
	}
	return nil
}

// connCtxKey holds a request's net.Conn in its context.
type connCtxKey struct{}

// prepareConn readies an HTTP/1.1 stream's connection, which carries
// nothing else: it bounds the kernel's send buffer, so that a client that
// stopped reading blocks the stream's writes after that much. An HTTP/2
// connection carries other streams too, and is left alone.
func (h *Handler) prepareConn(r *http.Request) {
	if r.ProtoMajor != 1 || h.SendBuffer <= 0 {
		return
	}
	conn, _ := r.Context().Value(connCtxKey{}).(net.Conn)
	if conn == nil {
		return
	}
	for c := conn; c != nil; {
		if buffered, ok := c.(interface{ SetWriteBuffer(int) error }); ok {
			if err := buffered.SetWriteBuffer(h.SendBuffer); err != nil {
				h.logger.Debug("setting send buffer", zap.Error(err))
			}
			return
		}
		wrapper, ok := c.(interface{ NetConn() net.Conn })
		if !ok {
			return
		}
		c = wrapper.NetConn()
	}
}

// Validate rejects options that cannot work.
func (h *Handler) Validate() error {
	switch {
	case h.Retry < 0 || (h.Retry > 0 && h.Retry < caddy.Duration(time.Millisecond)):
		return fmt.Errorf("retry must be at least 1ms, got %s", time.Duration(h.Retry))
	case h.KeepAlive > 0 && h.KeepAlive < caddy.Duration(time.Millisecond):
		return fmt.Errorf("keepalive must be at least 1ms, or negative to turn it off, got %s", time.Duration(h.KeepAlive))
	case h.WriteTimeout > 0 && h.WriteTimeout < caddy.Duration(time.Millisecond):
		return fmt.Errorf("write_timeout must be at least 1ms, or negative to turn it off, got %s", time.Duration(h.WriteTimeout))
	case h.MaxQueue < 0:
		return fmt.Errorf("max_queue must not be negative, got %d", h.MaxQueue)
	case h.MaxQueueBytes < 0:
		return fmt.Errorf("max_queue_bytes must not be negative, got %d", h.MaxQueueBytes)
	case h.MaxClients < 0:
		return fmt.Errorf("max_clients must not be negative, got %d", h.MaxClients)
	case h.FlushInterval < 0:
		return fmt.Errorf("flush_interval must not be negative, got %s", time.Duration(h.FlushInterval))
	case h.QueryChannels != "" && len(h.Allow) == 0:
		return fmt.Errorf("query_channels %q needs allow: the patterns of the channels a client may ask for", h.QueryChannels)
	case h.QueryChannels == "" && len(h.Allow) > 0:
		return errors.New("allow bounds the channels of query_channels, which is not set")
	case h.MaxStreamChannels < 1:
		return fmt.Errorf("max_stream_channels must be at least 1, got %d", h.MaxStreamChannels)
	case len(h.Channels) > h.MaxStreamChannels:
		return fmt.Errorf("%d channels are more than max_stream_channels, %d", len(h.Channels), h.MaxStreamChannels)
	case h.Drain < 0:
		return fmt.Errorf("drain must not be negative, got %s", time.Duration(h.Drain))
	case h.Backlog < 0:
		return fmt.Errorf("backlog must not be negative, got %d", h.Backlog)
	}
	if err := validateLine("reset_event", h.ResetEvent); err != nil {
		return err
	}
	// A channel without placeholders is the same for every request: one
	// that cannot be a channel would have every request answered 400. A
	// channel with placeholders is checked per request, once resolved.
	for _, channel := range h.Channels {
		if strings.Contains(channel, "{") {
			continue
		}
		limits := broadcastLimits{maxChannelLength: h.app.MaxChannelLength}
		err := validateChannel(channel)
		if err == nil {
			err = limits.checkChannel(channel)
		}
		if err != nil {
			// The reason alone: the field is the handler's option here,
			// not the admin API's.
			if fieldErr := (*FieldError)(nil); errors.As(err, &fieldErr) {
				err = errors.New(fieldErr.Reason)
			}
			return fmt.Errorf("channel %q: %w", channel, err)
		}
	}
	return nil
}

// ServeHTTP holds the client's stream open and writes it the channel's
// events as they are published. A stream the server keeps waits in here,
// in keptStream.run, for its whole life: ServeHTTP and the functions the
// stream calls while it lives keep their frames small, what only starting
// a stream needs is done in functions that return before it waits, and
// the first write, which goes deepest, is made from here (see keptStream
// for why).
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	ks, err := h.open(w, r)
	if ks == nil {
		return err
	}
	defer ks.finish()
	if ks.err = ks.writeOpening(ks.opening); ks.err == nil {
		ks.err = ks.run()
	}
	return nil
}

// open answers a request that gets no stream, or starts its client's
// stream. Only a stream that the handler keeps comes back, for ServeHTTP
// to run and finish; one whose connection is taken over goes on without
// the handler.
func (h *Handler) open(w http.ResponseWriter, r *http.Request) (*keptStream, error) {
	sub, err := h.admit(w, r)
	if sub == nil {
		return nil, err
	}
	h.prepareConn(r)
	ks := newKeptStream(h, w, r, sub)
	// Until the stream is handed back, open lets it go itself, even when
	// starting it ends in a panic that closes the connection.
	kept := false
	defer func() {
		if !kept {
			ks.finish()
		}
	}()
	kept = ks.start(w, r)
	if !kept {
		return nil, nil
	}
	return ks, nil
}

// admit attaches the client of a stream request to its channels, or
// answers the request when it gets no stream: a wrong method, channels it
// may not have, no room for another client, or a server that is stopping.
// It returns no subscriber when it answered. Attaching a client goes
// deepest of all a stream does, so the answers are written by functions of
// their own, off that path.
func (h *Handler) admit(w http.ResponseWriter, r *http.Request) (*subscriber, error) {
	if r.Method != http.MethodGet {
		return nil, refuseMethod(w, r)
	}
	channels, err := h.channelsOf(r)
	if err != nil {
		return nil, h.refuseChannels(w, err)
	}
	if n := h.clients.Add(1); h.MaxClients > 0 && n > int64(h.MaxClients) {
		h.clients.Add(-1)
		h.app.broadcaster.rejected.Add(1)
		return nil, h.refuse(w, r, errTooManyClients)
	}
	// Once attached, the stream lets go of its place when it ends.
	attached := false
	defer func() {
		if !attached {
			h.clients.Add(-1)
		}
	}()
	opts := h.streamOptions(r)
	sub, err := h.app.attach(channels, &opts)
	if err != nil {
		return nil, h.refuseAttach(w, r, channels, err)
	}
	attached = true
	return sub, nil
}

// streamOptions are what the handler and r ask of a new stream.
func (h *Handler) streamOptions(r *http.Request) streamOptions {
	opts := streamOptions{
		maxQueue: h.MaxQueue, maxQueueBytes: h.MaxQueueBytes, nameByChannel: h.NameByChannel,
		remoteAddr: r.RemoteAddr, start: resumeRequest{backlog: h.Backlog},
		drain: time.Duration(h.Drain),
	}
	opts.start.lastEventID, opts.start.given = lastEventID(r)
	if !h.NoReset {
		opts.start.resetEvent = h.ResetEvent
	}
	return opts
}

// refuseMethod answers a request that is not a GET.
func refuseMethod(w http.ResponseWriter, r *http.Request) error {
	w.Header().Set("Allow", http.MethodGet)
	return caddyhttp.Error(http.StatusMethodNotAllowed,
		fmt.Errorf("method %s not allowed: event streams answer GET only", r.Method))
}

// refuseChannels answers a request whose channels cannot be served, with
// channelsOf's status and message.
func (h *Handler) refuseChannels(w http.ResponseWriter, err error) error {
	refused := (*channelError)(nil)
	if !errors.As(err, &refused) {
		return err
	}
	h.logger.Debug("refused stream", zap.Int("status", refused.status), zap.Error(err))
	refused.write(w)
	return nil
}

// refuseAttach answers a request whose client the broadcaster did not
// attach.
func (h *Handler) refuseAttach(w http.ResponseWriter, r *http.Request, channels []string, err error) error {
	if errors.Is(err, errStopping) {
		// A stream that ends at once makes a browser reconnect, to the
		// next config; a 503 would make EventSource give up for good.
		h.writeHeader(w, r)
		_, err := w.Write(h.openingLine())
		return err
	}
	if fieldErr := (*FieldError)(nil); errors.As(err, &fieldErr) {
		refusal(http.StatusBadRequest, fmt.Errorf("channels %q: %w", channels, err)).write(w)
		return nil
	}
	if errors.Is(err, errTooManyChannels) {
		// max_clients refusals are counted where they are made.
		h.app.broadcaster.rejected.Add(1)
	}
	return h.refuse(w, r, err)
}

// noteEventsSent adds the number of events the stream sent to the request's
// access log entry.
func noteEventsSent(r *http.Request, sub *subscriber) {
	extra, ok := r.Context().Value(caddyhttp.ExtraLogFieldsCtxKey).(*caddyhttp.ExtraLogFields)
	if !ok {
		return
	}
	sub.mu.Lock()
	sent := sub.sent
	sub.mu.Unlock()
	extra.Set(zap.Int("events_sent", sent))
}

// errDisconnect ends a stream whose client the server disconnects.
var errDisconnect = errors.New("client disconnected by the server")

// lastEventID returns the id the client last saw, if it says: browsers send
// the Last-Event-ID header when they reconnect, and since EventSource cannot
// set headers on its first connect, a last_event_id query parameter works
// too. The header wins, being the newer of the two on a reconnect.
//
// An empty id is no id: a browser whose last event set an empty id sends
// none.
func lastEventID(r *http.Request) (string, bool) {
	if id := r.Header.Get("Last-Event-Id"); id != "" {
		return id, true
	}
	if id := r.URL.Query().Get("last_event_id"); id != "" {
		return id, true
	}
	return "", false
}

// refuse answers a stream request that cannot be served now. A request
// that accepts text/event-stream by name, as EventSource's does, gets a
// stream that only says when to come back (refuseStream, refusal.go): a
// browser survives that, and no other answer. Any other request gets 503, a
// Retry-After (the backoff in whole seconds, rounded up) and a short
// message.
func (h *Handler) refuse(w http.ResponseWriter, r *http.Request, reason error) error {
	if acceptsEventStream(r.Header) {
		return h.refuseStream(w, reason)
	}
	retryAfter := int(math.Ceil(h.refusalBackoff().Seconds()))
	hdr := w.Header()
	hdr.Set("Retry-After", strconv.Itoa(retryAfter))
	hdr.Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(http.StatusServiceUnavailable)
	_, err := fmt.Fprintf(w, "%s: try again later\n", reason)
	return err
}

// endForShutdown writes what was queued before a stream ended for a
// shutdown, within the shutdown's bound on writes, and counts the stream as
// ended by the shutdown, unless its client had left by then: each stream's
// end is counted once, under the reason that ended it.
func (h *Handler) endForShutdown(r *http.Request, sub *subscriber, out *streamWriter) error {
	if r.Context().Err() != nil {
		return nil
	}
	if err := out.write(sub.take(nil)); err != nil {
		return h.writeFailed(sub, r, err, out.watchdog)
	}
	h.app.broadcaster.disconnects[dropShutdown].Add(1)
	return nil
}

// writeFailed tells a client that did not take a write in time, or whose
// write a drop cut, which is disconnected (and counted), from one that went
// away.
func (h *Handler) writeFailed(sub *subscriber, r *http.Request, err error, watchdog *writeWatchdog) error {
	switch {
	case errors.Is(err, errWriteTimeout):
		h.app.broadcaster.drop(sub, dropWriteTimeout)
	case errors.Is(err, errDropped):
	default:
		h.app.broadcaster.drop(sub, dropClientLeft)
		return err
	}
	// A drop that cut the write came first: its reason is the one kept
	// and logged.
	switch reason := sub.dropReason(); reason {
	case dropShutdown:
		// The shutdown's bound cut a write that the client held up.
		h.app.broadcaster.disconnects[dropShutdown].Add(1)
	case dropClientLeft:
	default:
		h.logDisconnect(sub, r, reason)
	}
	watchdog.abort()
	return fmt.Errorf("%w: %w", errDisconnect, err)
}

// logDisconnect logs, once per stream, that the server cut a client.
func (h *Handler) logDisconnect(sub *subscriber, r *http.Request, reason dropReason) {
	h.logger.Info("disconnected client", zap.Stringer("reason", reason), zap.String("client", sub.id),
		zap.Strings("channels", sub.channels), zap.String("remote_addr", r.RemoteAddr))
}

// writeHeader starts an event stream response. The stream's headers fill
// in what the site's own header directives have not set: a site may send
// "Cache-Control: no-cache, no-transform" for CDNs, or name a charset. The
// Content-Type stays an event stream whatever the site set, since clients
// refuse any other.
func (h *Handler) writeHeader(w http.ResponseWriter, r *http.Request) {
	hdr := w.Header()
	if mediaType, _, err := mime.ParseMediaType(hdr.Get("Content-Type")); err != nil || mediaType != "text/event-stream" {
		hdr.Set("Content-Type", "text/event-stream")
	}
	for _, field := range [...][2]string{{"Cache-Control", "no-cache"}, {"X-Accel-Buffering", "no"}} {
		if hdr.Get(field[0]) == "" {
			hdr.Set(field[0], field[1])
		}
	}
	hdr.Del("Content-Length")
	if h.mayTakeOver(r) {
		// net/http's way to send a body without chunked encoding, ended
		// by closing the connection: what a taken-over connection carries
		// is then the event stream itself.
		hdr.Set("Transfer-Encoding", "identity")
	}
	w.WriteHeader(http.StatusOK)
}

// greeting is the "connected" event that tells a client its id.
func greeting(sub *subscriber) []byte {
	data, _ := json.Marshal(struct {
		Client   string   `json:"client"`
		Channels []string `json:"channels"`
	}{sub.id, sub.channels}) // strings always marshal
	ev := Event{Type: "connected", Data: string(data)}
	return ev.encode(make([]byte, 0, ev.encodedSize()))
}

// keepAliveComment is a comment line: clients ignore it, proxies see
// traffic.
const keepAliveComment = ": keep-alive\n\n"

// keepAliveFrames is the keep-alive comment as a stream writes it.
var keepAliveFrames = [][]byte{[]byte(keepAliveComment)}

// openingLine is the stream's first write: the retry field when one is
// configured, else a comment.
func (h *Handler) openingLine() []byte {
	if h.Retry > 0 {
		line := strconv.AppendInt([]byte("retry: "), time.Duration(h.Retry).Milliseconds(), 10)
		return append(line, '\n', '\n')
	}
	return []byte(": open\n\n")
}

// streamWriter writes frames to a client with one flush per batch, each
// batch watched by the stream's write watchdog.
type streamWriter struct {
	w        http.ResponseWriter
	rc       *http.ResponseController
	watchdog *writeWatchdog
}

// write writes every frame and flushes once, so that all that was queued
// goes out in as few writes as the response buffer allows. The write
// timeout bounds progress, not the whole batch: it starts again with every
// deadlineStride bytes, so a long backlog to a client that reads steadily
// is not cut, and a client that stops taking bytes is. It is one function,
// its errors wrapped by another, to keep the stream's deepest path short
// (see keptStream).
func (sw *streamWriter) write(frames [][]byte) (err error) {
	if len(frames) == 0 {
		return nil
	}
	if err := sw.watchdog.begin(); err != nil {
		return writeError("writing events", err)
	}
	sinceProgress := 0
	for _, frame := range frames {
		for len(frame) > 0 && err == nil {
			if sinceProgress >= deadlineStride {
				sw.watchdog.progress()
				sinceProgress = 0
			}
			// A large event goes out in pieces, each with its time.
			piece := frame[:min(len(frame), deadlineStride)]
			if _, err = sw.w.Write(piece); err != nil {
				err = writeError("writing events", err)
			}
			sinceProgress += len(piece)
			frame = frame[len(piece):]
		}
	}
	if err == nil {
		if err = sw.rc.Flush(); err != nil {
			err = writeError("flushing events", err)
		}
	}
	if cut := sw.watchdog.end(); cut != nil {
		// The write's own error only says that the stream was broken.
		return writeError("writing events", cut)
	}
	return err
}

// flushHeaders sends the response's headers, watched as a write is.
func (sw *streamWriter) flushHeaders() error {
	if err := sw.watchdog.begin(); err != nil {
		return writeError("sending headers", err)
	}
	err := sw.rc.Flush()
	if cut := sw.watchdog.end(); cut != nil {
		return writeError("sending headers", cut)
	}
	if err != nil {
		return writeError("sending headers", err)
	}
	return nil
}

// writeError is err, said to have happened doing what.
//
//go:noinline
func writeError(what string, err error) error {
	return fmt.Errorf("%s: %w", what, err)
}

// deadlineStride is how many bytes one write timeout covers.
const deadlineStride = 32 << 10

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)
