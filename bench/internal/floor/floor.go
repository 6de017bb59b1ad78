// Package floor is the least an SSE broadcaster can do, shared by the
// measuring instruments of bench/compare.sh: bench/goh2 serves it on Go's
// own net/http server, bench/caddyfloor as a handler inside Caddy. What
// either costs beyond nchan is its server's; what ssebroadcast costs beyond
// bench/caddyfloor is this module's.
//
// A publish encodes the event once and appends it to every stream's queue;
// each stream's handler takes all that is queued, writes it and flushes
// once. Nothing is kept for a stream that is not connected.
package floor

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"sync"
)

// maxQueued is how many events a stream may fall behind before it is ended.
const maxQueued = 100_000

// stream is one client's queue of encoded events.
type stream struct {
	mu     sync.Mutex
	queued [][]byte
	ended  bool          // fell maxQueued behind
	wake   chan struct{} // holds a token when there is something queued
}

// Hub is every connected stream.
type Hub struct {
	mu      sync.Mutex
	streams map[*stream]struct{}
}

// NewHub returns a hub with no stream.
func NewHub() *Hub { return &Hub{streams: make(map[*stream]struct{})} }

// ServeStream serves an event stream until its client leaves or falls
// maxQueued events behind.
func (h *Hub) ServeStream(w http.ResponseWriter, r *http.Request) {
	s := &stream{wake: make(chan struct{}, 1)}
	h.mu.Lock()
	h.streams[s] = struct{}{}
	h.mu.Unlock()
	defer func() {
		h.mu.Lock()
		delete(h.streams, s)
		h.mu.Unlock()
	}()

	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	if rc.Flush() != nil {
		return
	}
	var batch [][]byte
	for {
		select {
		case <-s.wake:
		case <-r.Context().Done():
			return
		}
		s.mu.Lock()
		batch, s.queued = s.queued, batch[:0]
		ended := s.ended
		s.mu.Unlock()
		if ended {
			return
		}
		for _, ev := range batch {
			if _, err := w.Write(ev); err != nil {
				return
			}
		}
		clear(batch) // let the events go
		if rc.Flush() != nil {
			return
		}
	}
}

// Publish sends the raw body of a POST to every stream as one event's data,
// as nchan's publisher location takes it, and answers how many streams
// there were.
func (h *Hub) Publish(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		http.Error(w, "POST an event's data", http.StatusMethodNotAllowed)
		return
	}
	data, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 1<<20))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	ev := encode(data)

	h.mu.Lock()
	n := len(h.streams)
	for s := range h.streams {
		s.mu.Lock()
		if len(s.queued) < maxQueued {
			s.queued = append(s.queued, ev)
		} else {
			s.ended = true
		}
		s.mu.Unlock()
		select {
		case s.wake <- struct{}{}:
		default: // already woken
		}
	}
	h.mu.Unlock()
	fmt.Fprintf(w, "%d streams\n", n)
}

// encode is an event of data: one data line per line of it.
func encode(data []byte) []byte {
	var b bytes.Buffer
	for line := range bytes.Lines(data) {
		b.WriteString("data: ")
		b.Write(bytes.TrimSuffix(line, []byte{'\n'}))
		b.WriteByte('\n')
	}
	if len(data) == 0 {
		b.WriteString("data: \n")
	}
	b.WriteByte('\n')
	return b.Bytes()
}
