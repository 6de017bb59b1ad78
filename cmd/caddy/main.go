// Command caddy is Caddy with the standard modules and ssebroadcast, so that
// `go run ./cmd/caddy run --config Caddyfile.example` works without xcaddy.
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/caddy-sse/ssebroadcast"
	_ "github.com/caddy-sse/ssebroadcast/natstransport"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
)

func main() {
	caddycmd.Main()
}
