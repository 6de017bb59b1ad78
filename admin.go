package ssebroadcast

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
)

func init() {
	caddy.RegisterModule(AdminAPI{})
}

// AdminAPI serves the broadcaster on Caddy's admin endpoint:
//
//	POST /sse/broadcast  publishes one event, or a batch of them
//	GET  /sse/stats      reports clients per channel and counters
type AdminAPI struct {
	app *App
}

// CaddyModule returns the Caddy module information.
func (AdminAPI) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.sse",
		New: func() caddy.Module { return new(AdminAPI) },
	}
}

// Provision finds the sse app of the config being loaded.
func (a *AdminAPI) Provision(ctx caddy.Context) error {
	app, err := ctx.App("sse")
	if err != nil {
		return fmt.Errorf("loading sse app: %w", err)
	}
	a.app = app.(*App)
	return nil
}

// Routes returns the admin routes.
func (a *AdminAPI) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{
		{Pattern: "/sse/broadcast", Handler: caddy.AdminHandlerFunc(a.handleBroadcast)},
		{Pattern: "/sse/stats", Handler: caddy.AdminHandlerFunc(a.handleStats)},
		{Pattern: "/sse/clients", Handler: caddy.AdminHandlerFunc(a.handleClients)},
		{Pattern: "/sse/clients/", Handler: caddy.AdminHandlerFunc(a.handleClient)},
	}
}

func (a *AdminAPI) handleBroadcast(w http.ResponseWriter, r *http.Request) error {
	answer, err := a.app.serveBroadcast(w, r, bodyLimit{a.app.MaxBody, "the sse app's max_body"}, nil)
	if err != nil {
		return err
	}
	return writeJSON(w, answer)
}

func (a *AdminAPI) handleStats(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", http.MethodGet)
		return apiError(http.StatusMethodNotAllowed, fmt.Errorf("method %s not allowed: use GET", r.Method))
	}
	st := a.app.Stats()
	// In a cluster, what the other nodes answer within the transport's
	// timeout.
	st.Cluster = a.app.clusterStats(r.Context(), &st)
	return writeJSON(w, st)
}

// handleClients lists the connected clients: GET /sse/clients, optionally
// ?channel=<name>.
func (a *AdminAPI) handleClients(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", http.MethodGet)
		return apiError(http.StatusMethodNotAllowed, fmt.Errorf("method %s not allowed: use GET", r.Method))
	}
	list, unanswered := a.app.clusterClients(r.Context(), r.URL.Query().Get("channel"))
	return writeJSON(w, struct {
		Clients []ClientInfo `json:"clients"`
		// In a cluster, the nodes that did not answer in time.
		Unanswered []string `json:"unanswered,omitempty"`
	}{list, unanswered})
}

// handleClient serves one client: GET /sse/clients/{id} describes it,
// DELETE disconnects it.
func (a *AdminAPI) handleClient(w http.ResponseWriter, r *http.Request) error {
	id := strings.TrimPrefix(r.URL.Path, "/sse/clients/")
	if r.Method != http.MethodGet && r.Method != http.MethodDelete {
		w.Header().Set("Allow", "GET, DELETE")
		return apiError(http.StatusMethodNotAllowed, fmt.Errorf("method %s not allowed: use GET or DELETE", r.Method))
	}
	if !validClientID(id) {
		return apiError(http.StatusNotFound, fmt.Errorf("%w %q: client ids are 26 characters of A-Z and 2-7", errUnknownClient, id))
	}
	if r.Method == http.MethodGet {
		info, err := a.app.clusterClient(r.Context(), id)
		if err != nil {
			return clientError(w, err)
		}
		return writeJSON(w, info)
	}
	info, err := a.app.clusterKick(r.Context(), id)
	if err != nil {
		return clientError(w, err)
	}
	return writeJSON(w, struct {
		Disconnected string   `json:"disconnected"`
		Channels     []string `json:"channels"`
		Node         string   `json:"node,omitempty"`
	}{info.ID, info.Channels, info.Node})
}

// clientError answers a request about a client that could not be served:
// 404 for a client no node holds, 503 and Retry-After when the other nodes
// of a cluster could not be asked.
func clientError(w http.ResponseWriter, err error) error {
	status := publishErrorStatus(err)
	if status == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", "1")
	}
	return apiError(status, err)
}

// requireJSON accepts an application/json body only. Besides saying what the
// body must be, this keeps a web page from posting to the admin endpoint
// without a CORS preflight, as it could with a form's content types.
func requireJSON(contentType string) error {
	mediaType, _, err := mime.ParseMediaType(contentType)
	if err != nil || mediaType != "application/json" {
		return fmt.Errorf("Content-Type must be application/json, got %q", contentType)
	}
	return nil
}

// bodyLimit bounds a publish request's body: bytes, and the option that
// set them, which a 413 answer names.
type bodyLimit struct {
	bytes  int64
	option string
}

// serveBroadcast answers a request to publish with the admin API's body,
// one event object or an array of them: it returns the answer to write, a
// Result or, for a batch, a []Result, or a caddy.APIError whose status and
// message are the answer. The admin API and the sse_publish handler both
// answer with it, so that the same body gets the same answer from either.
//
// check, if not nil, is given the decoded events before any is sent; the
// error it returns, a caddy.APIError, refuses them all.
func (a *App) serveBroadcast(w http.ResponseWriter, r *http.Request, limit bodyLimit, check func([]Event) error) (any, error) {
	if err := requirePost(w, r); err != nil {
		return nil, err
	}
	if err := requireJSON(r.Header.Get("Content-Type")); err != nil {
		return nil, apiError(http.StatusUnsupportedMediaType, err)
	}
	body, err := readPublishBody(w, r, limit)
	if err != nil {
		return nil, err
	}
	events, batch, err := decodeBroadcast(body)
	if err != nil {
		return nil, apiError(http.StatusBadRequest, err)
	}
	results, err := a.publishEvents(r.Context(), events, check)
	if apiErr := (caddy.APIError{}); errors.As(err, &apiErr) && errors.As(apiErr.Err, new(*TransportError)) {
		// What carries events is out of reach for now: try again soon.
		w.Header().Set("Retry-After", "1")
	}
	if err != nil {
		return nil, err
	}
	if batch {
		return results, nil
	}
	return results[0], nil
}

// requirePost refuses any method but POST, the one that publishes.
func requirePost(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		return apiError(http.StatusMethodNotAllowed, fmt.Errorf("method %s not allowed: use POST", r.Method))
	}
	return nil
}

// readPublishBody reads a publish request's body, up to limit.
func readPublishBody(w http.ResponseWriter, r *http.Request, limit bodyLimit) ([]byte, error) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit.bytes))
	if err != nil {
		if tooLarge := (*http.MaxBytesError)(nil); errors.As(err, &tooLarge) {
			return nil, apiError(http.StatusRequestEntityTooLarge,
				fmt.Errorf("request body is larger than the limit of %d bytes (%s)", tooLarge.Limit, limit.option))
		}
		return nil, apiError(http.StatusBadRequest, fmt.Errorf("reading request body: %w", err))
	}
	return body, nil
}

// publishEvents publishes events, all or none, once check (if not nil)
// has passed them, and maps the broadcaster's refusals to the answer's
// status.
func (a *App) publishEvents(ctx context.Context, events []Event, check func([]Event) error) ([]Result, error) {
	if check != nil {
		if err := check(events); err != nil {
			return nil, err
		}
	}
	results, err := a.BroadcastBatch(ctx, events)
	if err != nil {
		return nil, apiError(publishErrorStatus(err), err)
	}
	return results, nil
}

// publishErrorStatus is the status that answers an error of BroadcastBatch.
func publishErrorStatus(err error) int {
	switch {
	case errors.Is(err, errUnknownClient):
		return http.StatusNotFound
	case errors.Is(err, errEventTooLarge):
		return http.StatusRequestEntityTooLarge
	case errors.Is(err, errTooManyChannels):
		return http.StatusServiceUnavailable
	case errors.As(err, new(*TransportError)):
		return http.StatusServiceUnavailable
	}
	// A *FieldError, an empty batch, or the request's end.
	return http.StatusBadRequest
}

// decodeBroadcast reads one event object or an array of them, and reports
// which it was so that the answer can take the same shape.
//
// It walks the body once, with the decoder's tokens, rather than decoding
// it into a struct: encoding/json would match field names in any case and
// let the last of two equal names win, so that {"Channel":…} or a second
// "channel" would send the event somewhere other than the publisher may
// think.
func decodeBroadcast(body []byte) (events []Event, batch bool, err error) {
	dec := json.NewDecoder(bytes.NewReader(body))
	tok, err := dec.Token()
	if errors.Is(err, io.EOF) {
		return nil, false, errors.New("request body is empty: send an event object or an array of them")
	}
	if err != nil {
		return nil, false, describeJSONError(err)
	}

	if tok == json.Delim('[') {
		batch = true
		for i := 0; dec.More(); i++ {
			ev, err := decodeEvent(dec)
			if err != nil {
				return nil, batch, fmt.Errorf("event %d: %w", i, err)
			}
			events = append(events, ev)
		}
		if _, err := nextToken(dec); err != nil { // the closing ']'
			return nil, batch, describeJSONError(err)
		}
		if len(events) == 0 {
			return nil, batch, errors.New("the batch is empty")
		}
	} else {
		if tok != json.Delim('{') {
			return nil, batch, notAnEvent(tok, false)
		}
		ev, err := decodeEventFields(dec)
		if err != nil {
			return nil, batch, err
		}
		events = []Event{ev}
	}

	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, batch, errors.New("invalid JSON: unexpected data after the top-level value")
	}
	return events, batch, nil
}

// decodeEvent reads one event object of a batch.
func decodeEvent(dec *json.Decoder) (Event, error) {
	tok, err := nextToken(dec)
	if err != nil {
		return Event{}, describeJSONError(err)
	}
	if tok != json.Delim('{') {
		return Event{}, notAnEvent(tok, true)
	}
	return decodeEventFields(dec)
}

// notAnEvent describes the value, read as tok, that stands where an event
// object belongs: at the top of the body, or in a batch.
func notAnEvent(tok json.Token, inBatch bool) error {
	kind := "an array"
	switch tok.(type) {
	case nil:
		return errors.New("an event must be a JSON object, got null")
	case string:
		kind = "a string"
	case float64:
		kind = "a number"
	case bool:
		kind = "a boolean"
	}
	if inBatch {
		return fmt.Errorf("an event must be a JSON object, got %s", kind)
	}
	return fmt.Errorf("invalid JSON: expected an event object or an array of them, got %s", kind)
}

// eventFieldNames lists the fields of an event object, for error messages.
const eventFieldNames = "event, data, id, retry, channel, client"

// decodeEventFields reads the fields of an event object whose '{' has been
// read, up to and including its '}'. Names must match exactly, each at most
// once.
func decodeEventFields(dec *json.Decoder) (Event, error) {
	var ev Event
	var data, retry json.RawMessage
	var seen [6]bool
	for dec.More() {
		tok, err := nextToken(dec)
		if err != nil {
			return Event{}, describeJSONError(err)
		}
		name, _ := tok.(string) // the decoder returns names as strings, or fails
		var field int
		var value any
		switch name {
		case "event":
			field, value = 0, &ev.Type
		case "data":
			field, value = 1, &data
		case "id":
			field, value = 2, &ev.ID
		case "retry":
			field, value = 3, &retry
		case "channel":
			field, value = 4, &ev.Channel
		case "client":
			field, value = 5, &ev.Client
		default:
			return Event{}, &FieldError{Field: name, Reason: "unknown field; fields are " + eventFieldNames}
		}
		if seen[field] {
			return Event{}, &FieldError{Field: name, Reason: "is given twice"}
		}
		seen[field] = true
		if err := dec.Decode(value); err != nil {
			if typeErr := (*json.UnmarshalTypeError)(nil); errors.As(err, &typeErr) {
				return Event{}, &FieldError{Field: name, Reason: fmt.Sprintf("must be a %s, got %s", typeErr.Type, typeErr.Value)}
			}
			if errors.Is(err, io.EOF) { // the body ends after the name
				err = io.ErrUnexpectedEOF
			}
			return Event{}, describeJSONError(err)
		}
	}
	if _, err := nextToken(dec); err != nil { // the closing '}'
		return Event{}, describeJSONError(err)
	}

	text, err := dataText(data)
	if err != nil {
		return Event{}, err
	}
	ev.Data = text
	if len(retry) > 0 && string(retry) != "null" {
		ms, err := strconv.ParseUint(string(retry), 10, 32)
		if err != nil {
			return Event{}, &FieldError{Field: "retry",
				Reason: fmt.Sprintf("must be a non-negative whole number of milliseconds, got %s", retry)}
		}
		delay := time.Duration(ms) * time.Millisecond
		ev.Retry = &delay
	}
	return ev, nil
}

// nextToken is dec.Token for a body that must go on: its end there is a
// truncated body, not a finished one.
func nextToken(dec *json.Decoder) (json.Token, error) {
	tok, err := dec.Token()
	if errors.Is(err, io.EOF) {
		return nil, io.ErrUnexpectedEOF
	}
	return tok, err
}

// dataText returns a JSON string's text as it is, and any other JSON value
// as its compact JSON text, so that publishers can send objects directly.
func dataText(raw json.RawMessage) (string, error) {
	if len(raw) == 0 {
		return "", nil
	}
	if raw[0] == '"' {
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return "", &FieldError{Field: "data", Reason: err.Error()}
		}
		return s, nil
	}
	var compact bytes.Buffer
	if err := json.Compact(&compact, raw); err != nil {
		return "", &FieldError{Field: "data", Reason: err.Error()}
	}
	return compact.String(), nil
}

// describeJSONError turns an error of the decoder's into the answer's
// message.
func describeJSONError(err error) error {
	// Reading a token fails with a type error only for a number too large
	// for a float64, and a number can only stand where an event belongs.
	if typeErr := (*json.UnmarshalTypeError)(nil); errors.As(err, &typeErr) {
		return fmt.Errorf("invalid JSON: expected an event object, got %s", typeErr.Value)
	}
	return fmt.Errorf("invalid JSON: %w", err)
}

func writeJSON(w http.ResponseWriter, v any) error {
	w.Header().Set("Content-Type", "application/json")
	if err := json.NewEncoder(w).Encode(v); err != nil {
		return fmt.Errorf("writing response: %w", err)
	}
	return nil
}

func apiError(status int, err error) error {
	return caddy.APIError{HTTPStatus: status, Err: err}
}

// Interface guards
var (
	_ caddy.AdminRouter = (*AdminAPI)(nil)
	_ caddy.Provisioner = (*AdminAPI)(nil)
)
