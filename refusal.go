package ssebroadcast

import (
	"errors"
	"math/rand/v2"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// defaultRefusalBackoff is how long a refused client is asked to wait
// before it comes back, when the handler sets no retry.
const defaultRefusalBackoff = 5 * time.Second

// refusalBackoff is how long a client refused over a limit is asked to
// wait: the handler's retry, else defaultRefusalBackoff.
func (h *Handler) refusalBackoff() time.Duration {
	if h.Retry > 0 {
		return time.Duration(h.Retry)
	}
	return defaultRefusalBackoff
}

// refuseStream refuses a stream the way an EventSource survives. A browser
// that gets any answer but 200 text/event-stream gives up for good (the
// HTML spec's "fail the connection"), so a page refused with 503 never
// comes back; one whose stream opens and ends comes back after its
// reconnection time. The answer is 200 text/event-stream whose body says why
// in a comment and sets that time with a retry field, and nothing else:
//
//	: too many clients: try again later
//	retry: 4213
//
// The retry is the refusal's backoff scaled by a random factor in
// [0.5, 1.5): clients refused together, such as those that rushed back
// after a restart, come back spread over the interval rather than together,
// to be refused together again. The body has a Content-Length, so that the
// response ends at once on every protocol and an HTTP/1.1 connection stays
// usable for the reconnect. The site's own Content-Type (an event stream
// with a charset) and Cache-Control are kept, as on a stream.
func (h *Handler) refuseStream(w http.ResponseWriter, reason error) error {
	retry := max(jittered(h.refusalBackoff()).Milliseconds(), 1)
	body := make([]byte, 0, 96)
	body = append(body, ": "...)
	// A comment is one line; the reasons are the module's own, but a
	// line break would end the comment and start a field.
	body = append(body, strings.NewReplacer("\r", " ", "\n", " ").Replace(reason.Error())...)
	body = append(body, ": try again later\nretry: "...)
	body = strconv.AppendInt(body, retry, 10)
	body = append(body, '\n', '\n')

	hdr := w.Header()
	if mediaType, _, err := mime.ParseMediaType(hdr.Get("Content-Type")); err != nil || mediaType != "text/event-stream" {
		hdr.Set("Content-Type", "text/event-stream")
	}
	if hdr.Get("Cache-Control") == "" {
		hdr.Set("Cache-Control", "no-cache")
	}
	hdr.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(http.StatusOK)
	_, err := w.Write(body)
	return err
}

// jittered returns d scaled by a random factor in [0.5, 1.5).
func jittered(d time.Duration) time.Duration {
	return time.Duration(float64(d) * (0.5 + rand.Float64()))
}

// acceptsEventStream reports whether an Accept header names
// text/event-stream, as every EventSource's does ("Accept:
// text/event-stream"). The header may be a list, over several lines, with
// parameters; a media range with q=0 is one the client refuses. Wildcards
// (*/*, text/*) do not count: curl, scripts and monitors send */*, and a
// client that does not ask for an event stream by name is better told 503
// with a Retry-After it can read than 200 with nothing in it.
func acceptsEventStream(header http.Header) bool {
	for _, value := range header.Values("Accept") {
		for item := range strings.SplitSeq(value, ",") {
			mediaType, params, err := mime.ParseMediaType(item)
			if err != nil && !errors.Is(err, mime.ErrInvalidMediaParameter) {
				continue
			}
			if mediaType != "text/event-stream" {
				continue
			}
			if q, err := strconv.ParseFloat(params["q"], 64); err == nil && q <= 0 {
				continue
			}
			return true
		}
	}
	return false
}
