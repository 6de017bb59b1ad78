package ssebroadcast

import (
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

func init() {
	caddy.RegisterModule(Handler{})
}

// DefaultKeepAlive is the default interval between keep-alive comments.
const DefaultKeepAlive = 15 * time.Second

// Handler streams the events of one channel to each client as
// text/event-stream. It answers GET only; the stream stays open until the
// client leaves or the config stops.
type Handler struct {
	// Channel is the channel whose events the stream receives. Caddy
	// placeholders are resolved per request, e.g. "{query.topic}" or
	// "user-{http.auth.user.id}"; a request whose channel resolves to an
	// empty name gets 400. Default: "default".
	Channel string `json:"channel,omitempty"`

	// KeepAlive is the idle time after which the stream sends a comment
	// line, so that proxies and clients see the connection alive. A
	// negative value turns keep-alives off. Default: 15s.
	KeepAlive caddy.Duration `json:"keepalive,omitempty"`

	// Retry, when set, is sent once as the "retry:" field when the stream
	// opens: how long a browser waits before it reconnects. Sent in whole
	// milliseconds. Default: not sent (browsers use their own, about 3s).
	Retry caddy.Duration `json:"retry,omitempty"`

	app    *App
	logger *zap.Logger
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
	if h.Channel == "" {
		h.Channel = DefaultChannel
	}
	if h.KeepAlive == 0 {
		h.KeepAlive = caddy.Duration(DefaultKeepAlive)
	}
	app, err := ctx.App("sse")
	if err != nil {
		return fmt.Errorf("loading sse app: %w", err)
	}
	h.app = app.(*App)
	return nil
}

// Validate rejects options that cannot work.
func (h *Handler) Validate() error {
	if h.Retry < 0 {
		return fmt.Errorf("retry must not be negative, got %s", time.Duration(h.Retry))
	}
	return nil
}

// ServeHTTP holds the client's stream open and writes it the channel's
// events as they are published.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", http.MethodGet)
		return caddyhttp.Error(http.StatusMethodNotAllowed,
			fmt.Errorf("method %s not allowed: event streams answer GET only", r.Method))
	}

	repl := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	channel := repl.ReplaceAll(h.Channel, "")
	if err := validateChannel(channel); err != nil {
		return caddyhttp.Error(http.StatusBadRequest, fmt.Errorf("channel %q resolved to %q: %w", h.Channel, channel, err))
	}

	srv, _ := r.Context().Value(http.ServerContextKey).(*http.Server)
	sub, err := h.app.attach(channel, srv)
	if err != nil {
		return caddyhttp.Error(http.StatusServiceUnavailable, err)
	}
	defer h.app.detach(sub)

	if err := h.stream(w, r, sub); err != nil {
		h.logger.Debug("stream ended", zap.String("channel", channel), zap.Error(err))
	}
	return nil
}

// stream writes the open, then the subscriber's events, until the client
// leaves or the broadcaster drops the subscriber. Its error says why a write
// failed; the response is already under way, so it is only logged.
func (h *Handler) stream(w http.ResponseWriter, r *http.Request, sub *subscriber) error {
	// The server's idle timeouts (read_body_idle, write_idle, idle) let a
	// stream live as long as its writes make progress. Its hard timeouts
	// (read_body, write) bound the whole response, as the user asked, and
	// Caddy lets no handler loosen them: the README says to leave them
	// unset on servers that carry streams.
	rc := http.NewResponseController(w)
	hdr := w.Header()
	hdr.Set("Content-Type", "text/event-stream")
	hdr.Set("Cache-Control", "no-cache")
	hdr.Set("X-Accel-Buffering", "no")
	hdr.Del("Content-Length")
	w.WriteHeader(http.StatusOK)

	// The first bytes go out at once, so that the client sees the stream
	// open: handlers that wrap the response, such as encode, hold the
	// headers back until the first write.
	if _, err := w.Write(h.openingLine()); err != nil {
		return fmt.Errorf("writing stream open: %w", err)
	}
	if err := rc.Flush(); err != nil {
		return fmt.Errorf("flushing stream open: %w", err)
	}

	var keepAlive <-chan time.Time
	var keepAliveTimer *time.Timer
	if h.KeepAlive > 0 {
		keepAliveTimer = time.NewTimer(time.Duration(h.KeepAlive))
		defer keepAliveTimer.Stop()
		keepAlive = keepAliveTimer.C
	}

	var spare [][]byte
	for {
		select {
		case <-r.Context().Done():
			return nil
		case <-sub.gone:
			if sub.dropReason() == dropShutdown {
				// Write what was already queued before the stream ends.
				_, err := writeFrames(w, rc, sub.take(nil))
				return err
			}
			h.logger.Info("dropped slow client", zap.String("channel", sub.channel),
				zap.String("remote_addr", r.RemoteAddr))
			return nil
		case <-sub.wake:
			var err error
			if spare, err = writeFrames(w, rc, sub.take(spare)); err != nil {
				return err
			}
		case <-keepAlive:
			if _, err := w.Write(keepAliveComment); err != nil {
				return fmt.Errorf("writing keep-alive: %w", err)
			}
			if err := rc.Flush(); err != nil {
				return fmt.Errorf("flushing keep-alive: %w", err)
			}
		}
		if keepAliveTimer != nil {
			keepAliveTimer.Reset(time.Duration(h.KeepAlive))
		}
	}
}

// keepAliveComment is a comment line: clients ignore it, proxies see traffic.
var keepAliveComment = []byte(": keep-alive\n\n")

// openingLine is the stream's first write: the retry field when one is
// configured, else a comment.
func (h *Handler) openingLine() []byte {
	if h.Retry > 0 {
		line := strconv.AppendInt([]byte("retry: "), time.Duration(h.Retry).Milliseconds(), 10)
		return append(line, '\n', '\n')
	}
	return []byte(": open\n\n")
}

// writeFrames writes every queued frame and flushes once, coalescing all
// that was queued into as few writes as the response buffer allows. It
// returns frames for reuse as the next spare queue.
func writeFrames(w http.ResponseWriter, rc *http.ResponseController, frames [][]byte) ([][]byte, error) {
	if len(frames) == 0 {
		return frames, nil
	}
	for _, frame := range frames {
		if _, err := w.Write(frame); err != nil {
			return frames, fmt.Errorf("writing events: %w", err)
		}
	}
	if err := rc.Flush(); err != nil {
		return frames, fmt.Errorf("flushing events: %w", err)
	}
	return frames, nil
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)
