package ssebroadcast

import (
	"github.com/prometheus/client_golang/prometheus"
)

// metricsCollector exposes the broadcaster's figures as Prometheus metrics
// in Caddy's registry, served at the admin endpoint's /metrics. It reads
// them when scraped, from the counters the broadcaster keeps anyway, so
// the publish path does no metrics work; and since the broadcaster outlives
// reloads, so do the counters. Each config's sse app registers it on that
// config's registry.
type metricsCollector struct {
	broadcaster *broadcaster
}

var (
	clientsDesc = prometheus.NewDesc("caddy_sse_clients",
		"Connected clients, by channel.", []string{"channel"}, nil)
	publishedDesc = prometheus.NewDesc("caddy_sse_events_published_total",
		"Events published.", nil, nil)
	deliveriesDesc = prometheus.NewDesc("caddy_sse_deliveries_total",
		"Events queued for a client, one per client reached.", nil, nil)
	replayedDesc = prometheus.NewDesc("caddy_sse_replayed_events_total",
		"Events replayed to clients that resumed with Last-Event-ID.", nil, nil)
	droppedDesc = prometheus.NewDesc("caddy_sse_clients_dropped_total",
		"Clients the server disconnected or refused, by reason: slow (queue overflowed), "+
			"write_timeout, limit (a stream refused over max_clients or max_channels), shutdown (reload or stop), kicked (admin API).",
		[]string{"reason"}, nil)
)

// Describe implements prometheus.Collector.
func (c metricsCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{clientsDesc, publishedDesc, deliveriesDesc, replayedDesc, droppedDesc} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c metricsCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.broadcaster.stats()
	for name, channel := range st.Channels {
		if channel.Clients > 0 { // a channel kept only for replay has none
			ch <- prometheus.MustNewConstMetric(clientsDesc, prometheus.GaugeValue, float64(channel.Clients), name)
		}
	}
	ch <- prometheus.MustNewConstMetric(publishedDesc, prometheus.CounterValue, float64(st.EventsPublished))
	ch <- prometheus.MustNewConstMetric(deliveriesDesc, prometheus.CounterValue, float64(st.Deliveries))
	ch <- prometheus.MustNewConstMetric(replayedDesc, prometheus.CounterValue, float64(st.Replayed))
	for reason, n := range map[string]uint64{
		"slow":          st.Disconnects.Slow,
		"write_timeout": st.Disconnects.WriteTimeout,
		"limit":         st.Rejected,
		"shutdown":      st.Disconnects.Shutdown,
		"kicked":        st.Disconnects.Kicked,
	} {
		ch <- prometheus.MustNewConstMetric(droppedDesc, prometheus.CounterValue, float64(n), reason)
	}
}
