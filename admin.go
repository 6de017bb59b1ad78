package ssebroadcast

import (
	"bytes"
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

// broadcastRequest is one event as the admin API takes it.
type broadcastRequest struct {
	Event   string          `json:"event"`
	Data    json.RawMessage `json:"data"`
	ID      string          `json:"id"`
	Retry   json.RawMessage `json:"retry"`
	Channel string          `json:"channel"`
	Client  string          `json:"client"`
}

func (a *AdminAPI) handleBroadcast(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		return apiError(http.StatusMethodNotAllowed, fmt.Errorf("method %s not allowed: use POST", r.Method))
	}
	if err := requireJSON(r.Header.Get("Content-Type")); err != nil {
		return apiError(http.StatusUnsupportedMediaType, err)
	}

	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, a.app.MaxBody))
	if err != nil {
		if tooLarge := (*http.MaxBytesError)(nil); errors.As(err, &tooLarge) {
			return apiError(http.StatusRequestEntityTooLarge,
				fmt.Errorf("request body is larger than the limit of %d bytes (the sse app's max_body)", tooLarge.Limit))
		}
		return apiError(http.StatusBadRequest, fmt.Errorf("reading request body: %w", err))
	}

	events, batch, err := decodeBroadcast(body)
	if err != nil {
		return apiError(http.StatusBadRequest, err)
	}
	results, err := a.app.BroadcastBatch(r.Context(), events)
	switch {
	case errors.Is(err, errUnknownClient):
		return apiError(http.StatusNotFound, err)
	case errors.Is(err, errEventTooLarge):
		return apiError(http.StatusRequestEntityTooLarge, err)
	case errors.Is(err, errTooManyChannels):
		return apiError(http.StatusServiceUnavailable, err)
	}
	if err != nil {
		return apiError(http.StatusBadRequest, err)
	}
	if batch {
		return writeJSON(w, results)
	}
	return writeJSON(w, results[0])
}

func (a *AdminAPI) handleStats(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", http.MethodGet)
		return apiError(http.StatusMethodNotAllowed, fmt.Errorf("method %s not allowed: use GET", r.Method))
	}
	return writeJSON(w, a.app.Stats())
}

// handleClients lists the connected clients: GET /sse/clients, optionally
// ?channel=<name>.
func (a *AdminAPI) handleClients(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", http.MethodGet)
		return apiError(http.StatusMethodNotAllowed, fmt.Errorf("method %s not allowed: use GET", r.Method))
	}
	channel := r.URL.Query().Get("channel")
	return writeJSON(w, struct {
		Clients []ClientInfo `json:"clients"`
	}{a.app.broadcaster.clientList(channel)})
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
	b := a.app.broadcaster
	if r.Method == http.MethodGet {
		s, err := b.client(id, "")
		if err != nil {
			return apiError(http.StatusNotFound, err)
		}
		for _, info := range b.clientList(s.channel) {
			if info.ID == id {
				return writeJSON(w, info)
			}
		}
		return apiError(http.StatusNotFound, fmt.Errorf("%w %q: the client has just left", errUnknownClient, id))
	}
	s, err := b.kick(id)
	if err != nil {
		return apiError(http.StatusNotFound, err)
	}
	return writeJSON(w, struct {
		Disconnected string `json:"disconnected"`
		Channel      string `json:"channel"`
	}{s.id, s.channel})
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

// decodeBroadcast reads one event object or an array of them, and reports
// which it was so that the answer can take the same shape.
func decodeBroadcast(body []byte) (events []Event, batch bool, err error) {
	trimmed := bytes.TrimLeft(body, " \t\r\n")
	if len(trimmed) == 0 {
		return nil, false, errors.New("request body is empty: send an event object or an array of them")
	}
	batch = trimmed[0] == '['

	// Pointers, so that a null where an event belongs is told apart from
	// an event with every field left out.
	var reqs []*broadcastRequest
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if batch {
		err = dec.Decode(&reqs)
	} else {
		reqs = make([]*broadcastRequest, 1)
		err = dec.Decode(&reqs[0])
	}
	if err != nil {
		return nil, batch, describeJSONError(err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, batch, errors.New("invalid JSON: unexpected data after the top-level value")
	}
	if batch && len(reqs) == 0 {
		return nil, batch, errors.New("the batch is empty")
	}

	events = make([]Event, len(reqs))
	for i, req := range reqs {
		if req == nil {
			err := errors.New("an event must be a JSON object, got null")
			if batch {
				err = fmt.Errorf("event %d: %w", i, err)
			}
			return nil, batch, err
		}
		ev, err := req.toEvent()
		if err != nil {
			if batch {
				return nil, batch, fmt.Errorf("event %d: %w", i, err)
			}
			return nil, batch, err
		}
		events[i] = ev
	}
	return events, batch, nil
}

// toEvent turns the request's loosely typed fields into an Event.
func (req *broadcastRequest) toEvent() (Event, error) {
	ev := Event{Channel: req.Channel, Type: req.Event, ID: req.ID, Client: req.Client}

	data, err := dataText(req.Data)
	if err != nil {
		return Event{}, err
	}
	ev.Data = data

	if len(req.Retry) > 0 && string(req.Retry) != "null" {
		ms, err := strconv.ParseUint(string(req.Retry), 10, 32)
		if err != nil {
			return Event{}, &FieldError{Field: "retry",
				Reason: fmt.Sprintf("must be a non-negative whole number of milliseconds, got %s", req.Retry)}
		}
		retry := time.Duration(ms) * time.Millisecond
		ev.Retry = &retry
	}
	return ev, nil
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

// describeJSONError turns a decoding error into a message that names the
// field at fault where there is one.
func describeJSONError(err error) error {
	var typeErr *json.UnmarshalTypeError
	if errors.As(err, &typeErr) {
		if typeErr.Field == "" {
			return fmt.Errorf("invalid JSON: expected an event object or an array of them, got %s", typeErr.Value)
		}
		return &FieldError{Field: typeErr.Field, Reason: fmt.Sprintf("must be a %s, got %s", typeErr.Type, typeErr.Value)}
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
