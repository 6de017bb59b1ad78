package ssebroadcast

// Tests of publishing from a site route (sse_publish): the admin API's
// answers over an ordinary route, behind Caddy's auth, bounded by allow
// patterns, and the raw body as a webhook's event.

import (
	"encoding/json"
	"maps"
	"net/http"
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/bcrypt"
)

// siteRequest sends a request to the site, as a backend on another host
// does. A request that a closing server dropped unanswered after a config
// load was not processed, and is sent again.
func (ts *testServer) siteRequest(client *http.Client, method, path, contentType string, body []byte) apiResponse {
	ts.t.Helper()
	if client == nil {
		client = plainClient
	}
	return ts.request(client, method, ts.url(path), contentType, body)
}

// publish posts a JSON body to the site's path.
func (ts *testServer) publish(client *http.Client, path, body string) apiResponse {
	ts.t.Helper()
	return ts.siteRequest(client, http.MethodPost, path, "application/json", []byte(body))
}

// requireRefused requires a JSON error answer with status, whose message
// holds message.
func requireRefused(t *testing.T, resp apiResponse, status int, message string) {
	t.Helper()
	require.Equal(t, status, resp.status, "answer: %s", resp.body)
	assert.Equal(t, "application/json", resp.header.Get("Content-Type"))
	assert.Contains(t, resp.errorMessage(t), message)
}

// requireSentinelNext publishes a sentinel to each stream's channel through
// the admin API and requires it to be the next event each stream reads:
// events of a channel arrive in order, so nothing refused got through.
func requireSentinelNext(t *testing.T, ts *testServer, streams map[string]*stream) {
	t.Helper()
	for channel, s := range streams {
		ts.mustBroadcast(`{"channel":"` + channel + `","data":"sentinel"}`)
		assert.Equal(t, "sentinel", s.next().Data, "stream of %s", channel)
	}
}

func bcryptHash(t *testing.T, password string) string {
	t.Helper()
	h, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.MinCost)
	require.NoError(t, err)
	return string(h)
}

const publishCaddyfile = `{
	{GLOBAL}
}
:{HTTP} {
	route /publish {
		sse_publish {
			allow *
		}
	}
	sse_broadcast {query.channel} {
		greeting
		keepalive off
	}
}`

func TestPublishRouteDeliversAnEventAndABatchToStreams(t *testing.T) {
	ts := startCaddy(t, publishCaddyfile)
	news, _ := greeted(t, ts, "news")

	resp := ts.publish(nil, "/publish", `{"channel":"news","event":"tick","data":"one"}`)
	require.Equal(t, http.StatusOK, resp.status, "answer: %s", resp.body)
	assert.Equal(t, "application/json", resp.header.Get("Content-Type"))
	var res Result
	require.NoError(t, json.Unmarshal(resp.body, &res))
	assert.Equal(t, "news", res.Channel)
	assert.Equal(t, 1, res.Clients)
	ev := news.next()
	assert.Equal(t, "one", ev.Data)
	assert.Equal(t, "tick", ev.Type)
	assert.Equal(t, res.ID, ev.LastEventID)

	resp = ts.publish(nil, "/publish", `[{"channel":"news","id":"a","data":"two"},{"channel":"news","id":"b","data":{"three":3}}]`)
	require.Equal(t, http.StatusOK, resp.status, "answer: %s", resp.body)
	var results []Result
	require.NoError(t, json.Unmarshal(resp.body, &results))
	assert.Equal(t, []Result{{Channel: "news", ID: "a", Clients: 1}, {Channel: "news", ID: "b", Clients: 1}}, results)
	assert.Equal(t, "two", news.next().Data)
	assert.Equal(t, `{"three":3}`, news.next().Data)
}

// The route and the admin API share one decoder and one mapping of errors
// to statuses: the same body gets the same status, headers that matter and
// bytes from either.
func TestPublishRouteAnswersEveryBodyAsTheAdminAPIDoes(t *testing.T) {
	ts := startCaddy(t, `{
	{GLOBAL}
	sse {
		max_body 1KiB
		max_event_size 200
		max_channels 3
	}
}
:{HTTP} {
	route /publish {
		sse_publish {
			allow *
		}
	}
	sse_broadcast {query.channel} {
		greeting
		keepalive off
	}
}`)
	news, id := greeted(t, ts, "news")

	tests := []struct {
		name, method, contentType, body string
		status                          int
		data                            []string // what the news stream receives, if anything
	}{
		{"one event", "POST", "application/json", `{"channel":"news","id":"a","data":"one"}`, 200, []string{"one"}},
		{"every field", "POST", "application/json", `{"channel":"news","id":"b","event":"tick","retry":3000,"data":{"i":1}}`, 200, []string{`{"i":1}`}},
		{"a batch", "POST", "application/json", `[{"channel":"news","id":"c","data":"x"},{"channel":"news","id":"d","data":"y"}]`, 200, []string{"x", "y"}},
		{"to one client", "POST", "application/json", `{"client":"` + id + `","id":"e","data":"just you"}`, 200, []string{"just you"}},
		{"to one client of its channel", "POST", "application/json", `{"client":"` + id + `","channel":"news","id":"f","data":"you"}`, 200, []string{"you"}},
		{"malformed JSON", "POST", "application/json", `{"channel":"news","data":`, 400, nil},
		{"trailing data", "POST", "application/json", `{"channel":"news","data":"x"} {}`, 400, nil},
		{"unknown field", "POST", "application/json", `{"channel":"news","Data":"x"}`, 400, nil},
		{"field given twice", "POST", "application/json", `{"channel":"news","data":"a","data":"b"}`, 400, nil},
		{"wrong type", "POST", "application/json", `{"channel":"news","event":5}`, 400, nil},
		{"LF in event name", "POST", "application/json", `{"channel":"news","event":"a\nid: 9"}`, 400, nil},
		{"negative retry", "POST", "application/json", `{"channel":"news","retry":-1}`, 400, nil},
		{"empty body", "POST", "application/json", ``, 400, nil},
		{"null", "POST", "application/json", `null`, 400, nil},
		{"not an object", "POST", "application/json", `"news"`, 400, nil},
		{"empty batch", "POST", "application/json", `[]`, 400, nil},
		{"batch with one bad event", "POST", "application/json", `[{"channel":"news","data":"ok"},{"channel":"news","id":"1\n"}]`, 400, nil},
		{"client id of the wrong form", "POST", "application/json", `{"client":"nope","data":"x"}`, 400, nil},
		{"unknown client", "POST", "application/json", `{"client":"AAAAAAAAAAAAAAAAAAAAAAAAAA","data":"x"}`, 404, nil},
		{"client on another channel", "POST", "application/json", `{"client":"` + id + `","channel":"sports","data":"x"}`, 404, nil},
		{"event over max_event_size", "POST", "application/json", `{"channel":"news","data":"` + strings.Repeat("x", 201) + `"}`, 413, nil},
		{"body over max_body", "POST", "application/json", `{"channel":"news","data":"` + strings.Repeat("x", 1100) + `"}`, 413, nil},
		{"more new channels than max_channels leaves", "POST", "application/json", `[{"channel":"n1"},{"channel":"n2"},{"channel":"n3"}]`, 503, nil},
		{"text/plain", "POST", "text/plain", `{"channel":"news","data":"x"}`, 415, nil},
		{"no content type", "POST", "", `{"channel":"news","data":"x"}`, 415, nil},
		{"GET", "GET", "", ``, 405, nil},
		{"PUT", "PUT", "application/json", `{"channel":"news","data":"x"}`, 405, nil},
	}
	var want []string
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			admin := ts.adminRequest(tt.method, "/sse/broadcast", tt.contentType, []byte(tt.body))
			route := ts.siteRequest(nil, tt.method, "/publish", tt.contentType, []byte(tt.body))
			assert.Equal(t, tt.status, admin.status, "admin answer: %s", admin.body)
			assert.Equal(t, admin.status, route.status, "route answer: %s", route.body)
			assert.Equal(t, string(admin.body), string(route.body))
			assert.Equal(t, "application/json", route.header.Get("Content-Type"))
			assert.Equal(t, admin.header.Get("Allow"), route.header.Get("Allow"))
			assert.Equal(t, admin.header.Get("Retry-After"), route.header.Get("Retry-After"))
			if tt.status != http.StatusOK {
				route.errorMessage(t) // a JSON error with a message
			}
		})
		// Once through each.
		want = append(want, tt.data...)
		want = append(want, tt.data...)
	}
	ts.mustBroadcast(`{"channel":"news","data":"sentinel"}`)
	var got []string
	for ev := news.next(); ev.Data != "sentinel"; ev = news.next() {
		got = append(got, ev.Data)
	}
	assert.Equal(t, want, got, "the accepted bodies' events, each twice, and nothing of the refused ones")
}

// The directives stand in a site block, not a route, so that the
// directive order is under test too: sse_publish runs after basic_auth.
func TestPublishRouteBehindBasicAuthTakesOnlyAuthenticatedPublishers(t *testing.T) {
	ts := startCaddy(t, `{
	{GLOBAL}
}
:{HTTP} {
	sse_publish /publish {
		allow news
	}
	basic_auth /publish {
		backend `+bcryptHash(t, "backend-secret")+`
	}
	sse_broadcast news {
		keepalive off
	}
}`)
	news := openStream(t, nil, ts.url("/events"))
	body := `{"channel":"news","data":"refused"}`
	for name, client := range map[string]*http.Client{
		// An unknown user would cost a hash of Caddy's default cost, seconds
		// under the race detector, and proves nothing more here.
		"no credentials": plainClient,
		"wrong password": basicAuthClient("backend", "guess"),
	} {
		resp := ts.publish(client, "/publish", body)
		assert.Equal(t, http.StatusUnauthorized, resp.status, "%s: %s", name, resp.body)
	}
	assert.Zero(t, ts.stats().EventsPublished, "a refused publisher sends nothing")

	resp := ts.publish(basicAuthClient("backend", "backend-secret"), "/publish", `{"channel":"news","data":"accepted"}`)
	require.Equal(t, http.StatusOK, resp.status, "answer: %s", resp.body)
	assert.Equal(t, "accepted", news.next().Data, "the first event the stream reads is the authenticated one")
}

const allowCaddyfile = `{
	{GLOBAL}
}
:{HTTP} {
	route /publish {
		sse_publish {
			allow news
			allow topic-*
		}
	}
	sse_broadcast {query.channel} {
		greeting
		keepalive off
	}
}`

func TestPublishRouteRefusesChannelsItsAllowPatternsDoNotMatch(t *testing.T) {
	ts := startCaddy(t, allowCaddyfile)
	news, newsID := greeted(t, ts, "news")
	topic, _ := greeted(t, ts, "topic-a")
	secret, secretID := greeted(t, ts, "secret")
	def, _ := greeted(t, ts, "default")

	for _, body := range []string{
		`{"channel":"news","data":"to news"}`,
		`{"channel":"topic-a","data":"to topic"}`,
		`[{"channel":"news","data":"batch news"},{"channel":"topic-a","data":"batch topic"}]`,
		`{"client":"` + newsID + `","data":"to the news client"}`,
	} {
		resp := ts.publish(nil, "/publish", body)
		assert.Equal(t, http.StatusOK, resp.status, "body %s: %s", body, resp.body)
	}
	published := ts.stats().EventsPublished
	require.EqualValues(t, 5, published)

	refusals := []struct {
		name, body, message string
	}{
		{"a channel no pattern matches", `{"channel":"secret","data":"x"}`,
			`channel "secret" is not allowed: this route's allow patterns do not match it`},
		{"the default channel, by naming none", `{"data":"x"}`, `channel "default" is not allowed`},
		{"a name that only starts like a pattern", `{"channel":"topic","data":"x"}`, `channel "topic" is not allowed`},
		{"a batch with one event for another channel", `[{"channel":"news","data":"x"},{"channel":"secret","data":"x"},{"channel":"topic-a","data":"x"}]`,
			`event 1: channel "secret" is not allowed`},
		{"a client of another channel", `{"client":"` + secretID + `","data":"x"}`,
			`client "` + secretID + `" is on a channel that this route's allow patterns do not match`},
		{"a client of another channel, channel named", `{"client":"` + secretID + `","channel":"secret","data":"x"}`,
			`channel "secret" is not allowed`},
		{"a batch with one event for a client of another channel", `[{"channel":"news","data":"x"},{"client":"` + secretID + `","data":"x"}]`,
			`event 1: client "` + secretID + `"`},
	}
	for _, tt := range refusals {
		t.Run(tt.name, func(t *testing.T) {
			requireRefused(t, ts.publish(nil, "/publish", tt.body), http.StatusForbidden, tt.message)
		})
	}
	// The refusal for a client does not tell where it listens.
	resp := ts.publish(nil, "/publish", `{"client":"`+secretID+`","data":"x"}`)
	assert.NotContains(t, resp.errorMessage(t), "secret")

	assert.Equal(t, published, ts.stats().EventsPublished, "a refused request sends nothing, not even a batch's allowed events")
	assert.Equal(t, "to news", news.next().Data)
	assert.Equal(t, "batch news", news.next().Data)
	assert.Equal(t, "to the news client", news.next().Data)
	assert.Equal(t, "to topic", topic.next().Data)
	assert.Equal(t, "batch topic", topic.next().Data)
	requireSentinelNext(t, ts, map[string]*stream{"news": news, "topic-a": topic, "secret": secret, "default": def})
}

func TestPublishRouteAllowPatternNamesTheAuthenticatedUser(t *testing.T) {
	ts := startCaddy(t, `{
	{GLOBAL}
}
:{HTTP} {
	route /publish {
		basic_auth {
			alice `+bcryptHash(t, "alice-secret")+`
			bob `+bcryptHash(t, "bob-secret")+`
		}
		sse_publish {
			allow user-{http.auth.user.id}
		}
	}
	sse_broadcast {query.channel} {
		keepalive off
	}
}`)
	aliceStream := openStream(t, nil, ts.url("/?channel=user-alice"))
	bobStream := openStream(t, nil, ts.url("/?channel=user-bob"))
	alice, bob := basicAuthClient("alice", "alice-secret"), basicAuthClient("bob", "bob-secret")

	resp := ts.publish(alice, "/publish", `{"channel":"user-alice","data":"alice to herself"}`)
	require.Equal(t, http.StatusOK, resp.status, "answer: %s", resp.body)
	resp = ts.publish(bob, "/publish", `{"channel":"user-bob","data":"bob to himself"}`)
	require.Equal(t, http.StatusOK, resp.status, "answer: %s", resp.body)

	requireRefused(t, ts.publish(alice, "/publish", `{"channel":"user-bob","data":"alice to bob"}`),
		http.StatusForbidden, `channel "user-bob" is not allowed`)
	requireRefused(t, ts.publish(bob, "/publish", `[{"channel":"user-bob","data":"x"},{"channel":"user-alice","data":"bob to alice"}]`),
		http.StatusForbidden, `event 1: channel "user-alice" is not allowed`)
	requireRefused(t, ts.publish(alice, "/publish", `{"channel":"user-","data":"x"}`),
		http.StatusForbidden, `channel "user-" is not allowed`)

	assert.Equal(t, "alice to herself", aliceStream.next().Data)
	assert.Equal(t, "bob to himself", bobStream.next().Data)
	requireSentinelNext(t, ts, map[string]*stream{"user-alice": aliceStream, "user-bob": bobStream})
}

func TestPublishRouteWithDataBodyPublishesTheRawBodyAsOneEvent(t *testing.T) {
	ts := startCaddy(t, `{
	{GLOBAL}
	sse {
		max_body 1KiB
	}
}
:{HTTP} {
	route /hook {
		sse_publish {
			data body
			channel hooks-{query.ch}
			event deploy
			allow hooks-*
			max_body 64
		}
	}
	route /plain {
		sse_publish {
			data body
			allow default
		}
	}
	sse_broadcast {query.channel} {
		keepalive off
	}
}`)
	hooks := openStream(t, nil, ts.url("/?channel=hooks-a"))
	def := openStream(t, nil, ts.url("/?channel=default"))

	for _, tc := range []struct{ contentType, body, data string }{
		{"text/plain", "line one\nline two\r\nline three", "line one\nline two\nline three"},
		{"application/octet-stream", `{"not":"decoded"}` + "\r" + `data: not a field`, `{"not":"decoded"}` + "\n" + `data: not a field`},
		{"application/json", `[1, 2]`, `[1, 2]`},
		{"", "no content type, and ünïcödé", "no content type, and ünïcödé"},
	} {
		resp := ts.siteRequest(nil, http.MethodPost, "/hook?ch=a", tc.contentType, []byte(tc.body))
		require.Equal(t, http.StatusOK, resp.status, "answer: %s", resp.body)
		assert.Equal(t, "application/json", resp.header.Get("Content-Type"))
		var res Result
		require.NoError(t, json.Unmarshal(resp.body, &res), "answer %s", resp.body)
		assert.Equal(t, "hooks-a", res.Channel)
		assert.Equal(t, 1, res.Clients)
		ev := hooks.next()
		assert.Equal(t, tc.data, ev.Data, "a %q body", tc.contentType)
		assert.Equal(t, "deploy", ev.Type)
		assert.Equal(t, res.ID, ev.LastEventID)
	}

	resp := ts.siteRequest(nil, http.MethodPost, "/plain", "text/plain", []byte("to the default channel"))
	require.Equal(t, http.StatusOK, resp.status, "answer: %s", resp.body)
	ev := def.next()
	assert.Equal(t, "to the default channel", ev.Data)
	assert.Empty(t, ev.Type, "no event option: an unnamed event")

	refusals := []struct {
		name, method, path, body string
		status                   int
		message                  string
	}{
		{"body over the handler's max_body", "POST", "/hook?ch=a", strings.Repeat("x", 65), 413,
			"request body is larger than the limit of 64 bytes (sse_publish's max_body)"},
		{"body over the app's max_body", "POST", "/plain", strings.Repeat("x", 1025), 413,
			"request body is larger than the limit of 1024 bytes (the sse app's max_body)"},
		{"invalid UTF-8", "POST", "/hook?ch=a", "caf\xe9", 400, "request body must be valid UTF-8"},
		{"no channel in the query", "POST", "/hook", "x", 400, `resolving channel "hooks-{http.request.uri.query.ch}"`},
		{"a line break in the channel", "POST", "/hook?ch=a%0Ab", "x", 400, `field "channel": must not contain a line break`},
		{"GET", "GET", "/hook?ch=a", "", 405, "method GET not allowed: use POST"},
	}
	for _, tt := range refusals {
		t.Run(tt.name, func(t *testing.T) {
			resp := ts.siteRequest(nil, tt.method, tt.path, "text/plain", []byte(tt.body))
			requireRefused(t, resp, tt.status, tt.message)
			if tt.status == http.StatusMethodNotAllowed {
				assert.Equal(t, "POST", resp.header.Get("Allow"))
			}
		})
	}
	requireSentinelNext(t, ts, map[string]*stream{"hooks-a": hooks, "default": def})
}

func TestPublishRouteWithDataBodyRefusesAChannelItsAllowPatternsDoNotMatch(t *testing.T) {
	ts := startCaddy(t, `{
	{GLOBAL}
}
:{HTTP} {
	route /hook {
		sse_publish {
			data body
			channel {query.ch}
			allow hooks-*
		}
	}
	sse_broadcast {query.channel} {
		keepalive off
	}
}`)
	other := openStream(t, nil, ts.url("/?channel=other"))
	requireRefused(t, ts.siteRequest(nil, http.MethodPost, "/hook?ch=other", "text/plain", []byte("x")),
		http.StatusForbidden, `channel "other" is not allowed: this route's allow patterns do not match it`)
	requireRefused(t, ts.siteRequest(nil, http.MethodPost, "/hook?ch=hooks", "text/plain", []byte("x")),
		http.StatusForbidden, `channel "hooks" is not allowed`)
	assert.Zero(t, ts.stats().EventsPublished)
	requireSentinelNext(t, ts, map[string]*stream{"other": other})
}

// loadPublishJSON loads a JSON config whose one route is an sse_publish
// handler configured by handler, as `caddy load` does, and returns the
// load's error.
func loadPublishJSON(t *testing.T, handler map[string]any) error {
	t.Helper()
	handle := map[string]any{"handler": "sse_publish"}
	maps.Copy(handle, handler)
	_, err := loadHandlerJSON(t, handle, nil)
	return err
}

// A JSON config has no Caddyfile to refuse it: what could never work, or
// would publish anywhere without saying so, fails the load.
func TestPublishConfigsThatCouldNotWorkAsMeantFailTheLoad(t *testing.T) {
	tests := []struct {
		name    string
		handler map[string]any
		message string
	}{
		{"no allow", map[string]any{}, `allow is required`},
		{"an empty allow", map[string]any{"allow": []string{}}, `allow is required`},
		{"a star inside a placeholder", map[string]any{"allow": []string{"{http.request.header.X-*}"}}, `inside a placeholder's braces`},
		{"an empty pattern", map[string]any{"allow": []string{"news", ""}}, `allow pattern "": a pattern must not be empty`},
		{"another data mode", map[string]any{"allow": []string{"*"}, "data": "form"}, `data must be "body" or not set, got "form"`},
		{"channel without data body", map[string]any{"allow": []string{"*"}, "channel": "news"}, `channel applies only with data "body"`},
		{"event without data body", map[string]any{"allow": []string{"*"}, "event": "tick"}, `event applies only with data "body"`},
		{"a literal channel allow does not match", map[string]any{"allow": []string{"topic-*"}, "data": "body", "channel": "news"},
			`channel "news": no allow pattern matches it`},
		{"the default channel allow does not match", map[string]any{"allow": []string{"news"}, "data": "body"},
			`channel "default": no allow pattern matches it`},
		{"a line break in a literal channel", map[string]any{"allow": []string{"*"}, "data": "body", "channel": "a\nb"}, `must not contain a line break`},
		{"a line break in a literal event", map[string]any{"allow": []string{"*"}, "data": "body", "event": "a\nb"}, `event "a\nb": must not contain a line break`},
		{"negative max_body", map[string]any{"allow": []string{"*"}, "max_body": -1}, `max_body must not be negative`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := loadPublishJSON(t, tt.handler)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tt.message)
		})
	}
	// Patterns with placeholders are known only per request.
	require.NoError(t, loadPublishJSON(t, map[string]any{"allow": []string{"user-{http.auth.user.id}"}, "data": "body", "channel": "news"}))
}

// The README's first command runs Caddyfile.example; its publishing route
// takes the demo credentials it documents, and nothing else.
func TestCaddyfileExamplePublishRouteTakesTheDocumentedCredentials(t *testing.T) {
	example, err := os.ReadFile("Caddyfile.example")
	require.NoError(t, err)
	caddyfile := string(example)
	require.Contains(t, caddyfile, "\n{\n")
	require.Contains(t, caddyfile, "\n:8080 {\n")
	caddyfile = strings.Replace(caddyfile, "\n{\n", "\n{\n\t{GLOBAL}\n", 1)
	caddyfile = strings.Replace(caddyfile, "\n:8080 {\n", "\n:{HTTP} {\n", 1)
	ts := startCaddy(t, caddyfile)
	demo := openStream(t, nil, ts.url("/events"))
	require.Equal(t, "connected", demo.next().Type)

	body := `{"event":"tick","data":"over the site","channel":"demo"}`
	resp := ts.publish(nil, "/publish", body)
	assert.Equal(t, http.StatusUnauthorized, resp.status, "answer: %s", resp.body)
	resp = ts.publish(basicAuthClient("demo", "demo-secret"), "/publish", body)
	require.Equal(t, http.StatusOK, resp.status, "answer: %s", resp.body)
	assert.Equal(t, "over the site", demo.next().Data)
	requireRefused(t, ts.publish(basicAuthClient("demo", "demo-secret"), "/publish", `{"data":"x","channel":"other"}`),
		http.StatusForbidden, `channel "other" is not allowed`)
}
