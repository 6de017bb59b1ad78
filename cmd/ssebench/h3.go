package main

// HTTP/3 streams, one QUIC connection each on a UDP socket of its own, as
// separate browsers would have, through quic-go's HTTP/3 client. It costs
// more goroutines per stream than h1 and h2 (the connection's, its socket's,
// and the HTTP/3 control streams'), which is what an HTTP/3 client is.

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
)

// h3QUIC is the QUIC configuration of http3.Transport's own connections:
// no streams opened by the server but HTTP/3's unidirectional ones, and a
// PING every 10 s so that a quiet stream outlives the idle timeout.
var h3QUIC = &quic.Config{
	MaxIncomingStreams: -1,
	KeepAlivePeriod:    10 * time.Second,
}

// h3Client makes the HTTP/3 client of each QUIC connection. Compression is
// not asked for, as h1 and h2 do not ask for it.
var h3Client = &http3.Transport{DisableCompression: true}

func (t *streamTarget) openH3(ctx context.Context) (openStream, error) {
	qc, err := quic.DialAddr(ctx, t.addr, t.tls, h3QUIC)
	if err != nil {
		return openStream{}, fmt.Errorf("dialing: %w", err)
	}
	cc := h3Client.NewClientConn(qc)
	// The request's context lasts as long as the stream: the connection is
	// closed when ctx ends before the answer has come.
	stop := context.AfterFunc(ctx, func() { _ = qc.CloseWithError(0, "connect timeout") })
	fail := func(err error) (openStream, error) {
		_ = qc.CloseWithError(0, "")
		return openStream{}, err
	}
	resp, err := cc.RoundTrip(t.req.Clone(context.Background()))
	if !stop() {
		if err == nil {
			_ = resp.Body.Close()
		}
		return fail(fmt.Errorf("reading the response headers: %w", ctx.Err()))
	}
	if err != nil {
		return fail(fmt.Errorf("reading the response headers: %w", err))
	}
	if err := checkAnswer(resp.StatusCode, resp.Header.Get("Content-Type"), resp.Body); err != nil {
		_ = resp.Body.Close()
		return fail(err)
	}
	state := qc.ConnectionState().TLS
	closer := closerFunc(func() error {
		// The body first, so that the client's goroutine for the request
		// ends with it.
		_ = resp.Body.Close()
		return qc.CloseWithError(0, "")
	})
	return openStream{conn: closer, body: resp.Body, tls: &state}, nil
}

// closerFunc is a function as an io.Closer.
type closerFunc func() error

func (f closerFunc) Close() error { return f() }

var _ io.Closer = closerFunc(nil)
