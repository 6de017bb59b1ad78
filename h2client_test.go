package ssebroadcast

// A raw HTTP/2 client whose flow-control windows the test controls: Go's
// own client opens every window as its reader reads, so that it cannot be a
// client that stops reading on one stream of a connection and goes on with
// another. It speaks cleartext HTTP/2 with prior knowledge (h2c), frame by
// frame, with x/net's framer.

import (
	"bytes"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// rawH2Conn is one HTTP/2 connection of the raw client.
type rawH2Conn struct {
	t    *testing.T
	conn net.Conn

	mu      sync.Mutex // guards writes of frames
	framer  *http2.Framer
	headers bytes.Buffer
	encoder *hpack.Encoder
	// open, under mu, says which streams take DATA as it comes: their
	// window, and the connection's, are opened again by what arrives.
	open map[uint32]bool

	streamsMu sync.Mutex
	streams   map[uint32]*rawH2Stream
	closed    chan struct{} // the read loop ended
}

// rawH2Stream is what the server sent on one stream.
type rawH2Stream struct {
	status chan string    // the :status of the response, once
	chunks chan []byte    // DATA on its way to Body, in order
	Body   *io.PipeReader // the DATA, in order
	reset  chan http2.ErrCode
	ended  chan struct{} // END_STREAM, RST_STREAM or the connection's end
	once   sync.Once
}

func (s *rawH2Stream) end() {
	s.once.Do(func() {
		close(s.chunks)
		close(s.ended)
	})
}

// deliver hands DATA to Body in order, at the pace its reader reads, so
// that the connection's read loop never waits for a stream's reader.
func (s *rawH2Stream) deliver(body *io.PipeWriter) {
	for chunk := range s.chunks {
		if _, err := body.Write(chunk); err != nil {
			break
		}
	}
	body.Close()
	for range s.chunks {
	}
}

// dialRawH2 opens a cleartext HTTP/2 connection whose streams start with
// initialWindow bytes of flow-control window.
func dialRawH2(t *testing.T, addr string, initialWindow uint32) *rawH2Conn {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	c := &rawH2Conn{
		t:       t,
		conn:    conn,
		framer:  http2.NewFramer(conn, conn),
		open:    make(map[uint32]bool),
		streams: make(map[uint32]*rawH2Stream),
		closed:  make(chan struct{}),
	}
	c.encoder = hpack.NewEncoder(&c.headers)
	_, err = io.WriteString(conn, http2.ClientPreface)
	require.NoError(t, err)
	require.NoError(t, c.framer.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: initialWindow}))
	go c.readLoop()
	t.Cleanup(func() {
		conn.Close()
		<-c.closed
	})
	return c
}

// get opens stream id with a GET of path; with open set, the stream takes
// whatever the server sends, as a reading client does.
func (c *rawH2Conn) get(id uint32, path string, open bool) *rawH2Stream {
	c.t.Helper()
	pr, pw := io.Pipe()
	s := &rawH2Stream{status: make(chan string, 1), chunks: make(chan []byte, 4096), Body: pr,
		reset: make(chan http2.ErrCode, 1), ended: make(chan struct{})}
	go s.deliver(pw)
	c.t.Cleanup(func() { pr.Close() })
	c.streamsMu.Lock()
	c.streams[id] = s
	c.streamsMu.Unlock()

	c.mu.Lock()
	defer c.mu.Unlock()
	c.headers.Reset()
	for _, f := range [][2]string{
		{":method", "GET"}, {":scheme", "http"}, {":authority", c.conn.RemoteAddr().String()},
		{":path", path}, {"accept", "text/event-stream"},
	} {
		require.NoError(c.t, c.encoder.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]}))
	}
	require.NoError(c.t, c.framer.WriteHeaders(http2.HeadersFrameParam{
		StreamID: id, BlockFragment: c.headers.Bytes(), EndStream: true, EndHeaders: true,
	}))
	if open {
		c.open[id] = true
		require.NoError(c.t, c.framer.WriteWindowUpdate(id, 1<<30))
	}
	return s
}

// readLoop reads frames until the connection ends, answering what the
// protocol asks of a client.
func (c *rawH2Conn) readLoop() {
	defer close(c.closed)
	defer func() {
		c.streamsMu.Lock()
		defer c.streamsMu.Unlock()
		for _, s := range c.streams {
			s.end()
		}
	}()
	decoder := hpack.NewDecoder(4096, nil)
	for {
		frame, err := c.framer.ReadFrame()
		if err != nil {
			return
		}
		c.streamsMu.Lock()
		s := c.streams[frame.Header().StreamID]
		c.streamsMu.Unlock()
		switch f := frame.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				c.write(func(fr *http2.Framer) error { return fr.WriteSettingsAck() })
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				c.write(func(fr *http2.Framer) error { return fr.WritePing(true, f.Data) })
			}
		case *http2.HeadersFrame:
			fields, err := decoder.DecodeFull(f.HeaderBlockFragment())
			if err != nil || s == nil {
				return
			}
			for _, field := range fields {
				if field.Name == ":status" {
					s.status <- field.Value
				}
			}
			if f.StreamEnded() {
				s.end()
			}
		case *http2.DataFrame:
			data := bytes.Clone(f.Data())
			if n := uint32(len(f.Data())); n > 0 {
				id := f.StreamID
				c.write(func(fr *http2.Framer) error {
					// The connection's window is opened again for every
					// stream; a stalled stream's own is not.
					if err := fr.WriteWindowUpdate(0, n); err != nil {
						return err
					}
					if c.open[id] {
						return fr.WriteWindowUpdate(id, n)
					}
					return nil
				})
			}
			if s != nil {
				select {
				case <-s.ended:
				default:
					if len(data) > 0 {
						s.chunks <- data
					}
				}
				if f.StreamEnded() {
					s.end()
				}
			}
		case *http2.RSTStreamFrame:
			if s != nil {
				select {
				case s.reset <- f.ErrCode:
				default: // a stream is reset once; a second one says nothing new
				}
				s.end()
			}
		}
	}
}

func (c *rawH2Conn) write(frame func(*http2.Framer) error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	_ = frame(c.framer) // a write to a closed connection is the read loop's end too
}

// awaitReset waits until the server resets the stream, and returns when.
func (s *rawH2Stream) awaitReset(t *testing.T, within time.Duration) time.Time {
	t.Helper()
	select {
	case <-s.reset:
		return time.Now()
	case <-s.ended:
		require.FailNow(t, "the stream ended without a reset")
	case <-time.After(within):
		require.FailNow(t, "the server did not reset the stream", "within %s", within)
	}
	return time.Time{}
}
