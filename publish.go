package ssebroadcast

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"unicode/utf8"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func init() {
	caddy.RegisterModule(PublishHandler{})
	httpcaddyfile.RegisterHandlerDirective("sse_publish", parsePublishCaddyfile)
	// It answers requests itself, as sse_broadcast does, and comes just
	// before it: a site's stream without a matcher would otherwise answer
	// its publishers' POSTs with 405. sse_broadcast stands just before
	// respond, and only Caddy's own directives may be named here, so this
	// is after error, the one before them both (abort and error still win;
	// respond stays the fallback).
	httpcaddyfile.RegisterDirectiveOrder("sse_publish", httpcaddyfile.After, "error")
}

// dataBody is the Data mode in which the raw request body is one event's
// data.
const dataBody = "body"

// PublishHandler publishes events from a site route, so that a backend on
// another host publishes over HTTP(S) to Caddy's ordinary listener. It
// answers POST with exactly the admin API's POST /sse/broadcast: the same
// body (one event object or a batch of them, all or nothing), the same
// answers, and the same statuses and JSON errors; and 403 for an event to a
// channel that Allow does not match. With Data "body", the raw request body
// is instead the data of one event: a webhook receiver.
//
// The handler has no authentication of its own: anyone who can reach the
// route can publish to the channels it allows. Guard it with whatever
// Caddy has: basic_auth, forward_auth, a client-certificate matcher,
// remote_ip.
type PublishHandler struct {
	// Allow lists the channels this route may publish to, as glob
	// patterns: * matches any run of characters, none included; every
	// other character matches itself, and a literal * cannot be written.
	// Caddy placeholders are resolved per request, e.g.
	// "user-{http.auth.user.id}"; a placeholder's value matches as it is
	// (a * in it matches only a *), and one that is unknown or empty makes
	// its pattern match nothing. A request with an event for a channel
	// that no pattern matches gets 403, and nothing of it is sent.
	// Required: "*" allows every channel.
	Allow []string `json:"allow,omitempty"`

	// Data, when "body", makes the raw request body, of any content type,
	// the data of one event, published to Channel with the name Event.
	// The body must be valid UTF-8, since an event's data is text.
	// Default: empty, the body is the admin API's JSON.
	Data string `json:"data,omitempty"`

	// Channel is the channel of the event that a request publishes when
	// Data is "body". Caddy placeholders are resolved per request, e.g.
	// "{http.request.uri.query.ch}"; a request whose channel has a
	// placeholder that is unknown or empty gets 400. Only with Data
	// "body". Default: "default".
	Channel string `json:"channel,omitempty"`

	// Event is the name (the "event:" field) of the event that a request
	// publishes when Data is "body". Placeholders are resolved as in
	// Channel. Only with Data "body". Default: none, an unnamed event,
	// which browsers fire as "message".
	Event string `json:"event,omitempty"`

	// MaxBody is the largest request body, in bytes, that the handler
	// accepts; a larger one gets 413. Default: the sse app's max_body.
	MaxBody int64 `json:"max_body,omitempty"`

	app   *App
	allow channelPatterns
	limit bodyLimit
}

// CaddyModule returns the Caddy module information.
func (PublishHandler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.sse_publish",
		New: func() caddy.Module { return new(PublishHandler) },
	}
}

// Provision finds the sse app and parses the allow patterns.
func (h *PublishHandler) Provision(ctx caddy.Context) error {
	app, err := ctx.App("sse")
	if err != nil {
		return fmt.Errorf("loading sse app: %w", err)
	}
	h.app = app.(*App)
	h.allow, err = newChannelPatterns(h.Allow)
	if err != nil {
		return err
	}
	if h.Data == dataBody && h.Channel == "" {
		h.Channel = DefaultChannel
	}
	h.limit = bodyLimit{h.MaxBody, "sse_publish's max_body"}
	if h.MaxBody == 0 {
		h.limit = bodyLimit{h.app.MaxBody, "the sse app's max_body"}
	}
	return nil
}

// Validate rejects options that cannot work, and a handler that would
// publish anywhere without saying so.
func (h *PublishHandler) Validate() error {
	switch {
	case len(h.Allow) == 0:
		// No default is safe: none would let a forgotten allow publish
		// to every channel, and allowing nothing is a route that only
		// ever answers 403.
		return errors.New(`allow is required: name the channels this route may publish to, or "*" for any`)
	case h.Data != "" && h.Data != dataBody:
		return fmt.Errorf(`data must be "body" or not set, got %q`, h.Data)
	case h.Data != dataBody && h.Channel != "":
		return errors.New(`channel applies only with data "body": JSON events name their own channel`)
	case h.Data != dataBody && h.Event != "":
		return errors.New(`event applies only with data "body": JSON events name themselves`)
	case h.MaxBody < 0:
		return fmt.Errorf("max_body must not be negative, got %d", h.MaxBody)
	}
	if h.Data != dataBody {
		return nil
	}
	// A channel or name without placeholders is the same for every
	// request: one that cannot be sent would have every request refused.
	if !strings.ContainsAny(h.Channel, "{}") {
		limits := broadcastLimits{maxChannelLength: h.app.MaxChannelLength}
		err := validateChannel(h.Channel)
		if err == nil {
			err = limits.checkChannel(h.Channel)
		}
		if err != nil {
			return fmt.Errorf("channel %q: %w", h.Channel, fieldReason(err))
		}
		// Patterns with placeholders are known only per request.
		if h.allow.literal != nil && !h.allow.literal.match(h.Channel) {
			return fmt.Errorf("channel %q: no allow pattern matches it, so every request would get 403", h.Channel)
		}
	}
	if !strings.ContainsAny(h.Event, "{}") {
		if err := validateLine("event", h.Event); err != nil {
			return fmt.Errorf("event %q: %w", h.Event, fieldReason(err))
		}
	}
	return nil
}

// fieldReason returns a *FieldError's reason alone, for an error about a
// handler's option rather than the admin API's field.
func fieldReason(err error) error {
	if fieldErr := (*FieldError)(nil); errors.As(err, &fieldErr) {
		return errors.New(fieldErr.Reason)
	}
	return err
}

// ServeHTTP publishes the request's events and answers as the admin API
// does. It never calls next: the answer is the request's.
func (h *PublishHandler) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	repl := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	var answer any
	var err error
	if h.Data == dataBody {
		answer, err = h.publishBody(w, r, repl)
	} else {
		answer, err = h.app.serveBroadcast(w, r, h.limit, h.allowed(repl))
	}
	if err != nil {
		return writeAPIError(w, err)
	}
	return writeJSON(w, answer)
}

// publishBody publishes the raw request body as one event's data, and
// returns its Result.
func (h *PublishHandler) publishBody(w http.ResponseWriter, r *http.Request, repl *caddy.Replacer) (any, error) {
	if err := requirePost(w, r); err != nil {
		return nil, err
	}
	// A placeholder that is unknown or empty fails the request rather
	// than publish to a channel many requests share.
	channel, err := repl.ReplaceOrErr(h.Channel, true, true)
	if err != nil {
		return nil, apiError(http.StatusBadRequest, fmt.Errorf("resolving channel %q: %w", h.Channel, err))
	}
	name, err := repl.ReplaceOrErr(h.Event, true, true)
	if err != nil {
		return nil, apiError(http.StatusBadRequest, fmt.Errorf("resolving event %q: %w", h.Event, err))
	}
	body, err := readPublishBody(w, r, h.limit)
	if err != nil {
		return nil, err
	}
	if !utf8.Valid(body) {
		return nil, apiError(http.StatusBadRequest, errors.New("request body must be valid UTF-8: it is the event's data, which is text"))
	}
	results, err := h.app.publishEvents(r.Context(), []Event{{Channel: channel, Type: name, Data: string(body)}}, h.allowed(repl))
	if err != nil {
		return nil, err
	}
	return results[0], nil
}

// allowed returns the check that refuses, with 403, events for a channel
// that the allow patterns, resolved for this request, do not match.
func (h *PublishHandler) allowed(repl *caddy.Replacer) func([]Event) error {
	return func(events []Event) error {
		patterns := h.allow.resolve(repl)
		for i := range events {
			if err := h.checkAllowed(patterns, &events[i]); err != nil {
				// Numbered as the broadcaster numbers the events it refuses.
				if len(events) > 1 {
					err = fmt.Errorf("event %d: %w", i, err)
				}
				return apiError(http.StatusForbidden, err)
			}
		}
		return nil
	}
}

// checkAllowed refuses an event whose channel the patterns do not match.
// An event sent to one client, with no channel named, is on that client's
// channel.
func (h *PublishHandler) checkAllowed(patterns resolvedPatterns, ev *Event) error {
	if ev.Client == "" || ev.Channel != "" {
		// With a channel named, an event to a client on another channel
		// is refused by the broadcaster (404).
		if channel := ev.channelName(); !patterns.match(channel) {
			return fmt.Errorf("channel %q is not allowed: this route's allow patterns do not match it", channel)
		}
		return nil
	}
	target, err := h.app.broadcaster.client(ev.Client, "")
	if err != nil {
		// The broadcaster refuses it too (404, or 400 for an id of the
		// wrong form). An id that is not connected now never will be:
		// ids are random and never given twice.
		return nil
	}
	// An event for a client, without a channel, counts as its first
	// channel's: the one it is published to.
	if !patterns.match(target.channels[0]) {
		// The client's channel is not named: the id alone must not tell
		// a publisher where a client of another channel listens.
		return fmt.Errorf("client %q is on a channel that this route's allow patterns do not match", ev.Client)
	}
	return nil
}

// writeAPIError answers with err as Caddy's admin endpoint answers a
// caddy.APIError: its status, and {"error":"<message>"}. Returning a
// caddyhttp.Error instead would leave the body to the site's error
// handling, which writes none, or HTML.
func writeAPIError(w http.ResponseWriter, err error) error {
	apiErr := caddy.APIError{HTTPStatus: http.StatusInternalServerError, Err: err}
	errors.As(err, &apiErr)
	if apiErr.Message == "" && apiErr.Err != nil {
		apiErr.Message = apiErr.Err.Error()
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(apiErr.HTTPStatus)
	if err := json.NewEncoder(w).Encode(apiErr); err != nil {
		return fmt.Errorf("writing response: %w", err)
	}
	return nil
}

func parsePublishCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	handler := new(PublishHandler)
	if err := handler.UnmarshalCaddyfile(h.Dispenser); err != nil {
		return nil, err
	}
	return handler, nil
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	sse_publish [<matcher>] {
//	    allow    <pattern>...  # required: channels this route may publish to; * for any
//	    max_body <size>        # default: the sse app's max_body
//	    data     body          # the raw request body is one event's data (a webhook)
//	    channel  <name>        # with data body: the event's channel; default "default"
//	    event    <name>        # with data body: the event's name; default none
//	}
//
// allow may be given more than once: its patterns add up. Patterns, the
// channel and the event name may use placeholders, e.g.
// "allow user-{http.auth.user.id}" or "channel {query.ch}".
func (h *PublishHandler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume directive name
	// Made here, so that it names the directive's line.
	noAllow := d.Err(`sse_publish needs allow: name the channels this route may publish to, or "*" for any`)
	if d.NextArg() {
		return d.ArgErr()
	}

	// The first of channel and event, kept until the block has shown
	// whether data body is given, which may come after them.
	var needsDataBody error
	for d.NextBlock(0) {
		switch option := d.Val(); option {
		case "allow":
			patterns := d.RemainingArgs()
			if len(patterns) == 0 {
				return d.ArgErr()
			}
			h.Allow = append(h.Allow, patterns...)
		case "data":
			if !d.NextArg() {
				return d.ArgErr()
			}
			if d.Val() != dataBody {
				return d.Errf("parsing data %q: the one mode is body", d.Val())
			}
			h.Data = dataBody
		case "channel", "event":
			field := &h.Channel
			if option == "event" {
				field = &h.Event
			}
			if *field != "" {
				return d.Errf("%s is given twice: give it once", option)
			}
			if !d.NextArg() {
				return d.ArgErr()
			}
			*field = d.Val()
			if needsDataBody == nil {
				needsDataBody = d.Errf("%s applies only with data body: JSON events name their own channel and event", option)
			}
		case "max_body":
			size, err := parseSize(d)
			if err != nil {
				return err
			}
			h.MaxBody = size
		default:
			return d.Errf("unrecognized sse_publish subdirective %q", option)
		}
		if d.NextArg() {
			return d.ArgErr()
		}
	}
	if needsDataBody != nil && h.Data != dataBody {
		return needsDataBody
	}
	if len(h.Allow) == 0 {
		return noAllow
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner           = (*PublishHandler)(nil)
	_ caddy.Validator             = (*PublishHandler)(nil)
	_ caddyhttp.MiddlewareHandler = (*PublishHandler)(nil)
	_ caddyfile.Unmarshaler       = (*PublishHandler)(nil)
)
