package ssebroadcast

import (
	"bytes"
	"net/http"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// scrape reads the admin endpoint's /metrics with Prometheus's own parser.
func (ts *testServer) scrape() map[string]*dto.MetricFamily {
	ts.t.Helper()
	res := ts.adminRequest(http.MethodGet, "/metrics", "", nil)
	require.Equal(ts.t, http.StatusOK, res.status)
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(bytes.NewReader(res.body))
	require.NoError(ts.t, err)
	return families
}

// metricValue returns the value of the family's metric whose labels are
// exactly labels (name, value pairs), and whether there is one.
func metricValue(families map[string]*dto.MetricFamily, name string, labels ...string) (float64, bool) {
	family := families[name]
	if family == nil {
		return 0, false
	}
	for _, m := range family.GetMetric() {
		if len(m.GetLabel()) != len(labels)/2 {
			continue
		}
		match := true
		for i, l := range m.GetLabel() {
			if l.GetName() != labels[2*i] || l.GetValue() != labels[2*i+1] {
				match = false
			}
		}
		if !match {
			continue
		}
		if m.GetGauge() != nil {
			return m.GetGauge().GetValue(), true
		}
		return m.GetCounter().GetValue(), true
	}
	return 0, false
}

// The metrics at the admin endpoint's /metrics count what the broadcaster
// does, and carry on through a reload.
func TestMetricsCountWhatHappensAndSurviveAReload(t *testing.T) {
	caddyfile := `{
	{GLOBAL}
	sse {
		max_clients 3
	}
}
:{HTTP} {
	sse_broadcast {query.channel} {
		greeting
		keepalive off
	}
}`
	ts := startCaddy(t, caddyfile)
	a, _ := greeted(t, ts, "room")
	_, kicked := greeted(t, ts, "room")
	greeted(t, ts, "hall")
	refused := dialStream(t, nil, ts.url("/?channel=room"))
	require.Equal(t, http.StatusServiceUnavailable, refused.resp.StatusCode)
	require.Equal(t, http.StatusOK, ts.adminRequest(http.MethodDelete, "/sse/clients/"+kicked, "", nil).status)
	require.Eventually(t, func() bool { return ts.stats().Clients == 2 }, awaitTimeout, 5*time.Millisecond)
	ts.mustBroadcast(`{"channel":"room","data":"one"}`)
	ts.mustBroadcast(`{"channel":"hall","data":"two"}`)
	ts.mustBroadcast(`{"channel":"empty","data":"three"}`)
	a.next()

	m := ts.scrape()
	for _, want := range []struct {
		name   string
		labels []string
		value  float64
	}{
		{"caddy_sse_clients", []string{"channel", "room"}, 1},
		{"caddy_sse_clients", []string{"channel", "hall"}, 1},
		{"caddy_sse_events_published_total", nil, 3},
		{"caddy_sse_deliveries_total", nil, 2},
		{"caddy_sse_replayed_events_total", nil, 0},
		{"caddy_sse_clients_dropped_total", []string{"reason", "kicked"}, 1},
		{"caddy_sse_clients_dropped_total", []string{"reason", "limit"}, 1},
		{"caddy_sse_clients_dropped_total", []string{"reason", "slow"}, 0},
		{"caddy_sse_clients_dropped_total", []string{"reason", "write_timeout"}, 0},
		{"caddy_sse_clients_dropped_total", []string{"reason", "shutdown"}, 0},
	} {
		got, ok := metricValue(m, want.name, want.labels...)
		if assert.True(t, ok, "%s%v missing", want.name, want.labels) {
			assert.Equal(t, want.value, got, "%s%v", want.name, want.labels)
		}
	}

	// A reload ends the two streams and keeps counting from where it was.
	ts.load(caddyfile)
	require.Eventually(t, func() bool { return ts.stats().Clients == 0 }, awaitTimeout, 5*time.Millisecond)
	ts.mustBroadcast(`{"channel":"room","data":"four"}`)
	m = ts.scrape()
	published, _ := metricValue(m, "caddy_sse_events_published_total")
	assert.Equal(t, 4.0, published)
	shutdown, _ := metricValue(m, "caddy_sse_clients_dropped_total", "reason", "shutdown")
	assert.Equal(t, 2.0, shutdown)
	_, hasRoom := metricValue(m, "caddy_sse_clients", "channel", "room")
	assert.False(t, hasRoom, "a channel without clients has no gauge")
}
