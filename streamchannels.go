package ssebroadcast

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/caddyserver/caddy/v2"
)

// channelsOf resolves the channels of r's stream: the handler's own, with
// their placeholders, then those the client asks for in the QueryChannels
// parameter, each of which one of the Allow patterns must match. Duplicates
// collapse, the first place kept. Its error is a *channelError: 400 for a
// channel that cannot be one, or for too many or none, and 403 for a
// channel the client may not ask for.
func (h *Handler) channelsOf(r *http.Request) ([]string, error) {
	repl := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	channels := make([]string, 0, len(h.Channels))
	add := func(channel string) error {
		if err := validateChannel(channel); err != nil {
			return err
		}
		for _, c := range channels {
			if c == channel {
				return nil
			}
		}
		if len(channels) == h.MaxStreamChannels {
			return fmt.Errorf("more channels than the handler's max_stream_channels, %d", h.MaxStreamChannels)
		}
		channels = append(channels, channel)
		return nil
	}

	for _, template := range h.Channels {
		// A placeholder that is unknown or empty fails the request rather
		// than leave a channel name that many clients share: "user-" for
		// every client whom no auth handler named.
		channel, err := repl.ReplaceOrErr(template, true, true)
		if err != nil {
			return nil, refusal(http.StatusBadRequest, fmt.Errorf("resolving channel %q: %w", template, err))
		}
		if err := add(channel); err != nil {
			return nil, refusal(http.StatusBadRequest, fmt.Errorf("channel %q resolved to %q: %w", template, channel, err))
		}
	}

	if h.QueryChannels != "" {
		allowed := h.allow.resolve(repl)
		for _, channel := range r.URL.Query()[h.QueryChannels] {
			if err := validateChannel(channel); err != nil {
				return nil, refusal(http.StatusBadRequest, fmt.Errorf("query parameter %s=%q: %w", h.QueryChannels, channel, err))
			}
			if !allowed.match(channel) {
				return nil, refusal(http.StatusForbidden,
					fmt.Errorf("channel %q is not one this stream may ask for (allow)", channel))
			}
			if err := add(channel); err != nil {
				return nil, refusal(http.StatusBadRequest, fmt.Errorf("query parameter %s=%q: %w", h.QueryChannels, channel, err))
			}
		}
	}
	if len(channels) == 0 {
		return nil, refusal(http.StatusBadRequest,
			errors.New("no channel: ask for one or more with the query parameter "+h.QueryChannels))
	}
	return channels, nil
}

// channelError refuses a stream for its channels, for good: the request
// must change, so a browser's EventSource may give up on it.
type channelError struct {
	status int
	err    error
}

func refusal(status int, err error) *channelError { return &channelError{status, err} }

func (e *channelError) Error() string { return e.err.Error() }
func (e *channelError) Unwrap() error { return e.err }

// write answers the request with the status and the reason, in a line of
// text: Caddy answers a handler's error with its status alone.
func (e *channelError) write(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(e.status)
	fmt.Fprintln(w, e.err)
}
