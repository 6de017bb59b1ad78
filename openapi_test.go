package ssebroadcast

// The admin API against its OpenAPI document, openapi.yaml: a real Caddy is
// sent a request for every status the document lists, and each request and
// answer is validated against the document, so that the two cannot drift.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/gorillamux"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const openAPICaddyfile = `{
	{GLOBAL}
	sse {
		max_body 1KiB
		max_event_size 512
		max_channels 3
	}
}
:{HTTP} {
	sse_broadcast {query.channel} {
		greeting
		keepalive off
	}
}`

// apiExchange is one request to the admin API and the status it must get.
type apiExchange struct {
	name        string
	method      string
	path        string
	contentType string
	origin      string // sent as the Origin header if set
	body        string
	status      int
	// docRejects says the document itself rules the request out (a body,
	// parameter, content type or method it does not allow), so validating
	// the request against it must fail too.
	docRejects bool
}

func TestAdminAPIMatchesOpenAPIDocument(t *testing.T) {
	doc := loadOpenAPIDocument(t)
	ts := startCaddy(t, openAPICaddyfile)
	_, alice := greeted(t, ts, "news")
	_, bob := greeted(t, ts, "news")
	stranger := strings.Repeat("A", 26) // a well-formed id no client has
	oversized := `{"channel":"news","data":"` + strings.Repeat("x", 1100) + `"}`
	foreign := "https://example.com"

	const (
		get, post, put, del = http.MethodGet, http.MethodPost, http.MethodPut, http.MethodDelete
		ct                  = "application/json"
	)
	exchanges := []apiExchange{
		{name: "one event", method: post, path: "/sse/broadcast", contentType: ct,
			body: `{"channel":"news","event":"tick","data":{"i":1},"id":"1","retry":3000}`, status: 200},
		{name: "a batch", method: post, path: "/sse/broadcast", contentType: ct,
			body: `[{"channel":"news","data":"one"},{"channel":"sports","data":"two"}]`, status: 200},
		{name: "an event for one client", method: post, path: "/sse/broadcast", contentType: ct,
			body: `{"client":"` + alice + `","data":"just for you"}`, status: 200},
		{name: "malformed JSON", method: post, path: "/sse/broadcast", contentType: ct,
			body: `{"channel":`, status: 400, docRejects: true},
		{name: "unknown field", method: post, path: "/sse/broadcast", contentType: ct,
			body: `{"channel":"news","colour":"red"}`, status: 400, docRejects: true},
		{name: "field name in another case", method: post, path: "/sse/broadcast", contentType: ct,
			body: `{"channel":"news","Data":"x"}`, status: 400, docRejects: true},
		// A JSON Schema cannot tell duplicate names apart; the document
		// says so in words.
		{name: "field given twice", method: post, path: "/sse/broadcast", contentType: ct,
			body: `{"channel":"news","data":"a","data":"b"}`, status: 400},
		{name: "line break in the event name", method: post, path: "/sse/broadcast", contentType: ct,
			body: `{"channel":"news","event":"a\nid: 9"}`, status: 400, docRejects: true},
		{name: "NUL in the id", method: post, path: "/sse/broadcast", contentType: ct,
			body: `{"channel":"news","id":"1\u00002"}`, status: 400, docRejects: true},
		{name: "negative retry", method: post, path: "/sse/broadcast", contentType: ct,
			body: `{"channel":"news","retry":-1}`, status: 400, docRejects: true},
		{name: "empty batch", method: post, path: "/sse/broadcast", contentType: ct,
			body: `[]`, status: 400, docRejects: true},
		{name: "malformed client id", method: post, path: "/sse/broadcast", contentType: ct,
			body: `{"client":"nope"}`, status: 400, docRejects: true},
		{name: "unknown client", method: post, path: "/sse/broadcast", contentType: ct,
			body: `{"client":"` + stranger + `"}`, status: 404},
		{name: "client on another channel", method: post, path: "/sse/broadcast", contentType: ct,
			body: `{"client":"` + alice + `","channel":"sports"}`, status: 404},
		{name: "broadcast from a foreign origin", method: post, path: "/sse/broadcast", contentType: ct, origin: foreign,
			body: `{"channel":"news"}`, status: 403},
		{name: "GET broadcast", method: get, path: "/sse/broadcast", status: 405, docRejects: true},
		{name: "body over max_body", method: post, path: "/sse/broadcast", contentType: ct,
			body: oversized, status: 413},
		{name: "event over max_event_size", method: post, path: "/sse/broadcast", contentType: ct,
			body: `{"channel":"news","data":"` + strings.Repeat("x", 600) + `"}`, status: 413},
		{name: "new channels over max_channels", method: post, path: "/sse/broadcast", contentType: ct,
			body: `[{"channel":"new-1","data":"x"},{"channel":"new-2","data":"x"}]`, status: 503},
		{name: "wrong content type", method: post, path: "/sse/broadcast", contentType: "text/plain",
			body: `{"channel":"news"}`, status: 415, docRejects: true},

		{name: "stats", method: get, path: "/sse/stats", status: 200},
		{name: "stats from a foreign origin", method: get, path: "/sse/stats", origin: foreign, status: 403},
		{name: "POST stats", method: post, path: "/sse/stats", status: 405, docRejects: true},

		{name: "every client", method: get, path: "/sse/clients", status: 200},
		{name: "clients of a channel", method: get, path: "/sse/clients?channel=news", status: 200},
		{name: "clients from a foreign origin", method: get, path: "/sse/clients", origin: foreign, status: 403},
		{name: "DELETE clients", method: del, path: "/sse/clients", status: 405, docRejects: true},

		{name: "client from a foreign origin", method: get, path: "/sse/clients/" + alice, origin: foreign, status: 403},
		{name: "disconnect from a foreign origin", method: del, path: "/sse/clients/" + alice, origin: foreign, status: 403},
		{name: "one client", method: get, path: "/sse/clients/" + alice, status: 200},
		{name: "unknown client's info", method: get, path: "/sse/clients/" + stranger, status: 404},
		{name: "malformed client id's info", method: get, path: "/sse/clients/nope", status: 404, docRejects: true},
		{name: "PUT client", method: put, path: "/sse/clients/" + alice, status: 405, docRejects: true},
		{name: "disconnect a client", method: del, path: "/sse/clients/" + bob, status: 200},
		{name: "disconnect a client that left", method: del, path: "/sse/clients/" + bob, status: 404},
		{name: "disconnect a malformed client id", method: del, path: "/sse/clients/nope", status: 404, docRejects: true},
	}

	checker := newOpenAPIChecker(t, doc, ts.admin)
	for _, ex := range exchanges {
		t.Run(ex.name, func(t *testing.T) { checker.check(t, ex) })
	}

	// A node of a cluster whose other nodes cannot be asked: it answers
	// with what it knows, and refuses with 503 what it cannot know.
	ts.load(strings.Replace(openAPICaddyfile, "sse {", "sse {\n\t\ttransport test_unreachable", 1))
	_, carol := greeted(t, ts, "news")
	cluster := []apiExchange{
		{name: "a cluster's stats", method: get, path: "/sse/stats", status: 200},
		{name: "a cluster's clients", method: get, path: "/sse/clients", status: 200},
		{name: "a client here", method: get, path: "/sse/clients/" + carol, status: 200},
		{name: "a client elsewhere, or nowhere", method: get, path: "/sse/clients/" + stranger, status: 503},
		{name: "disconnect a client elsewhere, or nowhere", method: del, path: "/sse/clients/" + stranger, status: 503},
		{name: "disconnect a client here", method: del, path: "/sse/clients/" + carol, status: 200},
		{name: "publish to a transport that is down", method: post, path: "/sse/broadcast", contentType: ct,
			body: `{"channel":"news","data":"x"}`, status: 503},
	}
	for _, ex := range cluster {
		t.Run(ex.name, func(t *testing.T) { checker.check(t, ex) })
	}
	st := ts.stats()
	assert.Equal(t, "here", st.Node)
	assert.Equal(t, &ClusterStats{Clients: 0, Nodes: []NodeStats{{Node: "here", Deliveries: st.Deliveries}},
		Unanswered: []string{"there"}}, st.Cluster, "the cluster's figures, which the document was checked against")
	assert.Empty(t, checker.unproduced(), "statuses the document lists but no request produced")
}

// loadOpenAPIDocument loads openapi.yaml and requires it to be a valid
// OpenAPI document whose examples match their schemas.
func loadOpenAPIDocument(t *testing.T) *openapi3.T {
	t.Helper()
	doc, err := openapi3.NewLoader().LoadFromFile("openapi.yaml")
	require.NoError(t, err, "loading openapi.yaml")
	require.NoError(t, doc.Validate(context.Background()), "openapi.yaml is not a valid OpenAPI document")
	return doc
}

// openAPIChecker validates admin API exchanges against the document and
// records which of the statuses it documents were produced.
type openAPIChecker struct {
	doc      *openapi3.T
	router   routers.Router
	admin    string
	produced map[string]bool // keyed by operationStatus
}

func newOpenAPIChecker(t *testing.T, doc *openapi3.T, admin string) *openAPIChecker {
	t.Helper()
	// The document names Caddy's default admin address; the router matches
	// requests by host, so it is given the test server's.
	doc.Servers = openapi3.Servers{{URL: "http://" + admin}}
	router, err := gorillamux.NewRouter(doc)
	require.NoError(t, err)
	return &openAPIChecker{doc: doc, router: router, admin: admin, produced: make(map[string]bool)}
}

// operationStatus names a status of an operation: "GET /sse/clients/{id} 404".
func operationStatus(method, path, status string) string {
	return method + " " + path + " " + status
}

// check sends the exchange's request and validates the request and its
// answer against the document.
func (c *openAPIChecker) check(t *testing.T, ex apiExchange) {
	t.Helper()
	routes, reqErr := c.validateRequest(t, ex.request(t, c.admin))
	if ex.docRejects {
		assert.Error(t, reqErr, "the document allows a request the API must refuse")
	} else {
		assert.NoError(t, reqErr, "the document refuses the request")
	}

	resp, err := plainClient.Do(ex.request(t, c.admin))
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Equal(t, ex.status, resp.StatusCode, "answer: %s", body)

	for _, route := range routes {
		input := &openapi3filter.ResponseValidationInput{
			RequestValidationInput: &openapi3filter.RequestValidationInput{
				Request: ex.request(t, c.admin),
				Route:   route,
			},
			Status:  resp.StatusCode,
			Header:  resp.Header,
			Body:    io.NopCloser(bytes.NewReader(body)),
			Options: &openapi3filter.Options{IncludeResponseStatus: true},
		}
		err := openapi3filter.ValidateResponse(context.Background(), input)
		assert.NoError(t, err, "%s %s answered %d: %s", route.Method, route.Path, resp.StatusCode, body)
		c.produced[operationStatus(route.Method, route.Path, fmt.Sprint(resp.StatusCode))] = true
	}
}

// validateRequest finds the operations whose answers req must match and
// validates req against the document. A method the path does not document
// is answered 405, as the path's operations describe; req then matches them
// all, and is not valid.
func (c *openAPIChecker) validateRequest(t *testing.T, req *http.Request) ([]*routers.Route, error) {
	t.Helper()
	route, params, err := c.router.FindRoute(req)
	if errors.Is(err, routers.ErrMethodNotAllowed) {
		var routes []*routers.Route
		for _, method := range documentableMethods {
			other := req.Clone(context.Background())
			other.Method = method
			if route, _, err := c.router.FindRoute(other); err == nil {
				routes = append(routes, route)
			}
		}
		return routes, err
	}
	require.NoError(t, err, "%s %s is not in the document", req.Method, req.URL.Path)
	return []*routers.Route{route}, openapi3filter.ValidateRequest(context.Background(), &openapi3filter.RequestValidationInput{
		Request:    req,
		PathParams: params,
		Route:      route,
		Options:    &openapi3filter.Options{SkipSettingDefaults: true},
	})
}

// documentableMethods are the methods an OpenAPI 3.0 operation can have.
var documentableMethods = []string{
	http.MethodGet, http.MethodPut, http.MethodPost, http.MethodDelete,
	http.MethodOptions, http.MethodHead, http.MethodPatch, http.MethodTrace,
}

// unproduced returns the documented statuses of every operation that no
// checked exchange produced, sorted.
func (c *openAPIChecker) unproduced() []string {
	var missing []string
	for path, item := range c.doc.Paths.Map() {
		for method, op := range item.Operations() {
			for status := range op.Responses.Map() {
				if key := operationStatus(method, path, status); !c.produced[key] {
					missing = append(missing, key)
				}
			}
		}
	}
	slices.Sort(missing)
	return missing
}

// request builds the exchange's request; each validation reads a body of
// its own.
func (ex apiExchange) request(t *testing.T, admin string) *http.Request {
	t.Helper()
	req, err := http.NewRequest(ex.method, "http://"+admin+ex.path, strings.NewReader(ex.body))
	require.NoError(t, err)
	if ex.contentType != "" {
		req.Header.Set("Content-Type", ex.contentType)
	}
	if ex.origin != "" {
		req.Header.Set("Origin", ex.origin)
	}
	return req
}
