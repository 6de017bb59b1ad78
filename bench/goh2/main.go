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
// The broadcaster is bench/internal/floor's, the least one can do.
package main

import (
	"flag"
	"log"
	"net/http"

	"github.com/caddy-sse/ssebroadcast/bench/internal/floor"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:8445", "TLS address serving the event stream at every path")
	pub := flag.String("pub", "127.0.0.1:8095", "cleartext address taking events as POSTs of their data to any path")
	cert := flag.String("cert", "cert.pem", "PEM certificate for -addr")
	key := flag.String("key", "key.pem", "PEM private key for -addr")
	flag.Parse()
	log.SetFlags(0)
	log.SetPrefix("goh2: ")

	h := floor.NewHub()
	errs := make(chan error, 2)
	go func() {
		srv := &http.Server{Addr: *addr, Handler: http.HandlerFunc(h.ServeStream)}
		errs <- srv.ListenAndServeTLS(*cert, *key)
	}()
	go func() {
		srv := &http.Server{Addr: *pub, Handler: http.HandlerFunc(h.Publish)}
		errs <- srv.ListenAndServe()
	}()
	log.Fatal(<-errs)
}
