package ssebroadcast

// Tests that streams work over each protocol Caddy serves them on: HTTP/1.1
// streams are taken over from the server, over plain TCP and over TLS;
// HTTP/2 streams, over TLS and cleartext (h2c), and HTTP/3 streams, over
// QUIC, stay with it.

import (
	"crypto/tls"
	"net/http"
	"testing"
	"time"

	"github.com/quic-go/quic-go/http3"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestStreamsWorkOverEveryProtocol(t *testing.T) {
	h2c := new(http.Protocols)
	h2c.SetUnencryptedHTTP2(true)
	tlsH2 := new(http.Protocols)
	tlsH2.SetHTTP2(true)
	tlsH1 := new(http.Protocols)
	tlsH1.SetHTTP1(true)

	tests := []struct {
		name      string
		tls       bool
		transport func(t *testing.T) http.RoundTripper
		wantMajor int
	}{
		{"HTTP/1.1", false, overTCP(nil), 1},
		{"HTTP/1.1 over TLS", true, overTCP(tlsH1), 1},
		{"HTTP/2 over TLS", true, overTCP(tlsH2), 2},
		{"HTTP/2 cleartext", false, overTCP(h2c), 2},
		{"HTTP/3", true, overQUIC, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			scheme, site := "http", ":{HTTP}"
			if tt.tls {
				scheme, site = "https", "https://127.0.0.1:{HTTP}"
			}
			// HTTP/3 is served on UDP, on the port of the TLS site.
			ts := startCaddy(t, `{
	{GLOBAL}
	local_certs
	skip_install_trust
	auto_https disable_redirects
	servers {
		protocols h1 h2 h2c h3
	}
}
`+site+` {
	sse_broadcast {
		keepalive 50ms
	}
}`)
			client := &http.Client{Transport: tt.transport(t)}
			url := scheme + "://" + ts.http + "/"

			if tt.tls {
				awaitTLSHandshake(t, ts.http).Close()
			}
			s := openStream(t, client, url)
			require.Equal(t, tt.wantMajor, s.resp.ProtoMajor, "protocol of the stream")
			if tt.wantMajor == 1 {
				assert.Empty(t, s.resp.TransferEncoding, "a taken-over stream is not chunked")
			}
			require.Eventually(t, func() bool { return ts.stats().Clients == 1 }, awaitTimeout, 5*time.Millisecond)

			for i := range 3 {
				res := ts.mustBroadcast(`{"event":"proto","data":"line one\nline two"}`)
				ev := s.next()
				assert.Equal(t, "proto", ev.Type, "event %d", i)
				assert.Equal(t, "line one\nline two", ev.Data, "event %d", i)
				assert.Equal(t, res.ID, ev.LastEventID, "event %d", i)
			}
			// Keep-alives flow while the stream is quiet.
			s.raw.awaitCount(t, ": keep-alive\n\n", 2)

			// The server notices the client leave.
			s.close()
			require.Eventually(t, func() bool { return ts.stats().Clients == 0 }, awaitTimeout, 5*time.Millisecond,
				"the server must notice the client left")
		})
	}
}

// insecureTLS is the client side of TLS in these tests: Caddy's internal CA
// is not in the test's trust store.
func insecureTLS() *tls.Config { return &tls.Config{InsecureSkipVerify: true} }

// overTCP returns a maker of HTTP/1.1 and HTTP/2 transports limited to
// protocols (Go's default when nil), which keep no connection once the test
// ends.
func overTCP(protocols *http.Protocols) func(t *testing.T) http.RoundTripper {
	return func(t *testing.T) http.RoundTripper {
		transport := &http.Transport{
			DisableKeepAlives: true,
			Protocols:         protocols,
			TLSClientConfig:   insecureTLS(),
		}
		t.Cleanup(transport.CloseIdleConnections)
		return transport
	}
}

// overQUIC returns an HTTP/3 transport that is closed, with its UDP socket
// and connections, before the test's server stops and its leak check runs.
func overQUIC(t *testing.T) http.RoundTripper {
	transport := &http3.Transport{TLSClientConfig: insecureTLS()}
	t.Cleanup(func() { assert.NoError(t, transport.Close(), "closing the HTTP/3 transport") })
	return transport
}
