package main

// HTTP/2 streams, one TLS connection each, read frame by frame with x/net's
// framer by the stream's own reading goroutine. x/net's Transport would add
// a read loop and a request goroutine per connection, a pipe with its own
// buffers under each body, and a WINDOW_UPDATE every 4 KiB read; this client
// is one goroutine per stream, as h1's is, and speaks to the server as
// Chrome does: Chrome's SETTINGS and windows, and a window given back once
// half of it is used.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

const (
	// h2StreamWindow and h2ConnWindow are Chrome's receive windows for a
	// stream and for the connection, in bytes.
	h2StreamWindow = 6 << 20
	h2ConnWindow   = 15 << 20

	// h2HeaderTable and h2MaxHeaderList are Chrome's HEADER_TABLE_SIZE and
	// MAX_HEADER_LIST_SIZE.
	h2HeaderTable   = 64 << 10
	h2MaxHeaderList = 256 << 10

	// h2StreamID is the stream's id: the first a client opens.
	h2StreamID = 1
)

// h2FirstFlight is what a client sends on its new connection: the preface,
// its SETTINGS, the connection's window and the request on stream 1, as
// bytes written once for every client. A fresh connection's HPACK state is
// the same on every connection, so one encoding of the headers serves all.
func h2FirstFlight(req *http.Request) []byte {
	var flight bytes.Buffer
	flight.WriteString(http2.ClientPreface)
	fr := http2.NewFramer(&flight, nil)
	// A bytes.Buffer does not fail, and neither do these frames' checks.
	_ = fr.WriteSettings(
		http2.Setting{ID: http2.SettingHeaderTableSize, Val: h2HeaderTable},
		http2.Setting{ID: http2.SettingEnablePush, Val: 0},
		http2.Setting{ID: http2.SettingInitialWindowSize, Val: h2StreamWindow},
		http2.Setting{ID: http2.SettingMaxHeaderListSize, Val: h2MaxHeaderList},
	)
	_ = fr.WriteWindowUpdate(0, h2ConnWindow-65535) // from the initial 65,535

	var block bytes.Buffer
	enc := hpack.NewEncoder(&block)
	fields := []hpack.HeaderField{
		{Name: ":method", Value: http.MethodGet},
		{Name: ":scheme", Value: "https"},
		{Name: ":authority", Value: req.URL.Host},
		{Name: ":path", Value: req.URL.RequestURI()},
	}
	for _, name := range []string{"accept", "cache-control", "user-agent"} {
		fields = append(fields, hpack.HeaderField{Name: name, Value: req.Header.Get(name)})
	}
	for _, f := range fields {
		_ = enc.WriteField(f)
	}
	_ = fr.WriteHeaders(http2.HeadersFrameParam{
		StreamID:      h2StreamID,
		BlockFragment: block.Bytes(),
		EndStream:     true,
		EndHeaders:    true,
	})
	return flight.Bytes()
}

func (t *streamTarget) openH2(ctx context.Context) (openStream, error) {
	conn, err := t.dial(ctx)
	if err != nil {
		return openStream{}, err
	}
	fail := func(err error) (openStream, error) {
		_ = conn.Close()
		return openStream{}, err
	}
	state := tlsState(conn)
	if p := state.NegotiatedProtocol; p != "h2" {
		return fail(fmt.Errorf("the server did not agree to HTTP/2 (ALPN gave %q)", p))
	}
	if _, err := conn.Write(t.request); err != nil {
		return fail(fmt.Errorf("sending the request: %w", err))
	}
	s := newH2Stream(conn)
	if err := s.readHeaders(); err != nil {
		return fail(fmt.Errorf("reading the response headers: %w", err))
	}
	if err := checkAnswer(s.status, s.contentType, s); err != nil {
		return fail(err)
	}
	// The stream is idle for as long as the run wants: no deadline from now.
	if err := conn.SetDeadline(time.Time{}); err != nil {
		return fail(fmt.Errorf("clearing the connect deadline: %w", err))
	}
	return openStream{conn: conn, body: s, tls: state}, nil
}

// h2Stream is the client's end of its connection: Read returns stream 1's
// DATA, answering the server's SETTINGS and PINGs and giving back window on
// the way. Only its reading goroutine uses it.
type h2Stream struct {
	conn net.Conn
	fr   *http2.Framer

	status      int
	contentType string
	headers     bool   // the response's headers arrived
	data        []byte // DATA not read yet, in the framer's buffer
	ended       bool   // the server ended the stream

	// Bytes received since the window was last given back.
	streamUsed, connUsed uint32
}

func newH2Stream(conn net.Conn) *h2Stream {
	fr := http2.NewFramer(conn, conn)
	fr.ReadMetaHeaders = hpack.NewDecoder(h2HeaderTable, nil)
	fr.MaxHeaderListSize = h2MaxHeaderList
	// A frame is done with before the next is read.
	fr.SetReuseFrames()
	return &h2Stream{conn: conn, fr: fr}
}

// readHeaders reads frames until the response's headers.
func (s *h2Stream) readHeaders() error {
	for !s.headers {
		if s.ended {
			return errors.New("the stream ended without a response")
		}
		if err := s.next(); err != nil {
			return err
		}
	}
	return nil
}

func (s *h2Stream) Read(p []byte) (int, error) {
	for len(s.data) == 0 {
		if s.ended {
			return 0, io.EOF
		}
		if err := s.next(); err != nil {
			return 0, err
		}
	}
	n := copy(p, s.data)
	s.data = s.data[n:]
	return n, nil
}

// next reads one frame and acts on it.
func (s *h2Stream) next() error {
	f, err := s.fr.ReadFrame()
	if err != nil {
		return err
	}
	switch f := f.(type) {
	case *http2.DataFrame:
		if f.StreamID != h2StreamID {
			return fmt.Errorf("DATA on stream %d, which the client did not open", f.StreamID)
		}
		s.data, s.ended = f.Data(), f.StreamEnded()
		return s.used(f.Length)
	case *http2.MetaHeadersFrame:
		if f.StreamID != h2StreamID {
			return fmt.Errorf("HEADERS on stream %d, which the client did not open", f.StreamID)
		}
		s.ended = f.StreamEnded()
		if s.headers {
			return nil // trailers
		}
		status, err := strconv.Atoi(f.PseudoValue("status"))
		if err != nil {
			return fmt.Errorf("the response's :status %q: %w", f.PseudoValue("status"), err)
		}
		if status/100 == 1 {
			return nil // an informational response; the response follows
		}
		s.status, s.headers = status, true
		for _, h := range f.RegularFields() {
			if h.Name == "content-type" {
				s.contentType = h.Value
			}
		}
	case *http2.SettingsFrame:
		if !f.IsAck() {
			return s.fr.WriteSettingsAck()
		}
	case *http2.PingFrame:
		if !f.IsAck() {
			return s.fr.WritePing(true, f.Data)
		}
	case *http2.RSTStreamFrame:
		return fmt.Errorf("the server reset the stream: %v", f.ErrCode)
	case *http2.GoAwayFrame:
		if f.ErrCode != http2.ErrCodeNo || f.LastStreamID < h2StreamID {
			return fmt.Errorf("the server sent GOAWAY: %v, last stream %d", f.ErrCode, f.LastStreamID)
		}
		// A graceful GOAWAY that keeps the stream: it goes on until the
		// server ends it.
	case *http2.PushPromiseFrame:
		return errors.New("the server sent PUSH_PROMISE, which the client's SETTINGS disabled")
	}
	// WINDOW_UPDATE, PRIORITY and frames of unknown types need nothing.
	return nil
}

// used counts n bytes of DATA, padding included, against the windows, and
// gives each window back once half of it is used, as Chrome does.
func (s *h2Stream) used(n uint32) error {
	s.streamUsed += n
	s.connUsed += n
	if s.connUsed >= h2ConnWindow/2 {
		if err := s.fr.WriteWindowUpdate(0, s.connUsed); err != nil {
			return fmt.Errorf("giving back the connection's window: %w", err)
		}
		s.connUsed = 0
	}
	if s.streamUsed >= h2StreamWindow/2 && !s.ended {
		if err := s.fr.WriteWindowUpdate(h2StreamID, s.streamUsed); err != nil {
			return fmt.Errorf("giving back the stream's window: %w", err)
		}
		s.streamUsed = 0
	}
	return nil
}
