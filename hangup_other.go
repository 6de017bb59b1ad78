//go:build !linux

package ssebroadcast

import (
	"net"
	"time"
)

// hangupWatcher tells when the clients of taken-over connections leave.
// Outside Linux it gives each connection a goroutine blocked in a read.
type hangupWatcher struct {
	onHangup func(*subscriber, dropReason)
}

func newHangupWatcher(onHangup func(*subscriber, dropReason)) *hangupWatcher {
	return &hangupWatcher{onHangup: onHangup}
}

// watch calls onHangup once the client of conn closes it.
func (w *hangupWatcher) watch(conn net.Conn, s *subscriber) hangupRegistration {
	return watchByReading(conn, s, w.onHangup)
}

func (w *hangupWatcher) close() {}

// limitUnacknowledged bounds how long data sent on conn may go
// unacknowledged on Linux only (TCP_USER_TIMEOUT); elsewhere a vanished
// peer is noticed when the kernel gives up retransmitting, or when the
// send buffer fills and a write stalls for write_timeout.
func limitUnacknowledged(net.Conn, time.Duration) error { return nil }
