// Command caddyfloor is a measuring instrument for bench/compare.sh: Caddy
// with the standard modules and one more handler, sse_floor, which serves
// bench/internal/floor's broadcaster (the least an SSE broadcaster can do)
// from inside Caddy's middleware chain. Against bench/goh2 it shows what
// Caddy's HTTP/2 server costs beyond Go's own; against ssebroadcast, what
// this module costs beyond the least any Caddy handler must.
//
// sse_floor publishes a POST's raw body, as nchan's publisher location
// does, and streams every other request:
//
//	caddyfloor run --config bench/caddy-floor.Caddyfile
//	ssebench -proto h2 -stream https://localhost:8446/ -publisher nchan -publish http://127.0.0.1:8096/
package main

import (
	"net/http"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	"github.com/caddy-sse/ssebroadcast/bench/internal/floor"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
)

// hub is the process's one broadcaster: every site's sse_floor, and every
// config loaded, publishes to and streams from it, as the sse app is for
// ssebroadcast.
var hub = floor.NewHub()

// Handler is the sse_floor handler.
type Handler struct{}

func init() {
	caddy.RegisterModule(Handler{})
	httpcaddyfile.RegisterHandlerDirective("sse_floor", func(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
		h.Next()
		if h.NextArg() {
			return nil, h.ArgErr()
		}
		return Handler{}, nil
	})
	httpcaddyfile.RegisterDirectiveOrder("sse_floor", httpcaddyfile.Before, "respond")
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "http.handlers.sse_floor", New: func() caddy.Module { return Handler{} }}
}

// ServeHTTP publishes a POST and streams anything else; it never calls next.
func (Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	if r.Method == http.MethodPost {
		hub.Publish(w, r)
	} else {
		hub.ServeStream(w, r)
	}
	return nil
}

func main() {
	caddycmd.Main()
}
