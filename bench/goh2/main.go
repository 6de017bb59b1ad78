// Command goh2 is a measuring instrument for bench/compare.sh: the floor of
// an SSE broadcaster on Go's own HTTP/2 server, net/http over TLS without
// Caddy, against which nchan and Caddy over HTTP/2 are compared.
//
// It serves an event stream at every path of -addr (TLS, HTTP/2 or
// HTTP/1.1 by ALPN) and takes events as nchan does, the raw body of a POST
// to any path of -pub (cleartext), so that ssebench -publisher nchan
// publishes to it:
//
//	goh2 -addr 127.0.0.1:8445 -pub 127.0.0.1:8095 -cert cert.pem -key key.pem
//	ssebench -proto h2 -stream https://127.0.0.1:8445/ -publisher nchan -publish http://127.0.0.1:8095/
//
// A publish encodes the event once and appends it to every stream's queue;
// each stream's handler takes all that is queued, writes it and flushes
// once. Nothing is kept for a stream that is not connected.
package main

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"log"
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

// hub is every connected stream.
type hub struct {
	mu      sync.Mutex
	streams map[*stream]struct{}
}

func main() {
	addr := flag.String("addr", "127.0.0.1:8445", "TLS address serving the event stream at every path")
	pub := flag.String("pub", "127.0.0.1:8095", "cleartext address taking events as POSTs of their data to any path")
	cert := flag.String("cert", "cert.pem", "PEM certificate for -addr")
	key := flag.String("key", "key.pem", "PEM private key for -addr")
	flag.Parse()
	log.SetFlags(0)
	log.SetPrefix("goh2: ")

	h := &hub{streams: make(map[*stream]struct{})}
	errs := make(chan error, 2)
	go func() {
		srv := &http.Server{Addr: *addr, Handler: http.HandlerFunc(h.serveStream)}
		errs <- srv.ListenAndServeTLS(*cert, *key)
	}()
	go func() {
		srv := &http.Server{Addr: *pub, Handler: http.HandlerFunc(h.publish)}
		errs <- srv.ListenAndServe()
	}()
	log.Fatal(<-errs)
}

func (h *hub) serveStream(w http.ResponseWriter, r *http.Request) {
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

func (h *hub) publish(w http.ResponseWriter, r *http.Request) {
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
