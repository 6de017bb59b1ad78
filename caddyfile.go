package ssebroadcast

import (
	"math"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/dustin/go-humanize"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("sse_broadcast", parseHandlerCaddyfile)
	// It answers requests itself, like respond and the handlers after it;
	// before respond, so that a site's catch-all respond stays the fallback.
	httpcaddyfile.RegisterDirectiveOrder("sse_broadcast", httpcaddyfile.Before, "respond")
	httpcaddyfile.RegisterGlobalOption("sse", parseAppCaddyfile)
}

func parseHandlerCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	handler := new(Handler)
	if err := handler.UnmarshalCaddyfile(h.Dispenser); err != nil {
		return nil, err
	}
	return handler, nil
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	sse_broadcast [<matcher>] [<channel>] {
//	    channel   <name>            # default "default"; placeholders allowed
//	    keepalive <interval> | off  # default 15s
//	    retry     <interval>        # sent once when the stream opens; default not sent
//	}
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume directive name

	if d.NextArg() {
		h.Channel = d.Val()
		if d.NextArg() {
			return d.ArgErr()
		}
	}

	for d.NextBlock(0) {
		switch d.Val() {
		case "channel":
			if !d.NextArg() {
				return d.ArgErr()
			}
			h.Channel = d.Val()
		case "keepalive":
			if !d.NextArg() {
				return d.ArgErr()
			}
			if d.Val() == "off" {
				h.KeepAlive = -1
			} else {
				interval, err := parsePositiveDuration(d, "keepalive")
				if err != nil {
					return err
				}
				h.KeepAlive = interval
			}
		case "retry":
			if !d.NextArg() {
				return d.ArgErr()
			}
			delay, err := parsePositiveDuration(d, "retry")
			if err != nil {
				return err
			}
			h.Retry = delay
		default:
			return d.Errf("unrecognized sse_broadcast subdirective %q", d.Val())
		}
		if d.NextArg() {
			return d.ArgErr()
		}
	}
	return nil
}

// parsePositiveDuration parses the current token as a duration of at least
// one millisecond, the unit in which the stream sends durations.
func parsePositiveDuration(d *caddyfile.Dispenser, name string) (caddy.Duration, error) {
	dur, err := caddy.ParseDuration(d.Val())
	if err != nil {
		return 0, d.Errf("parsing %s %q: %v", name, d.Val(), err)
	}
	if dur < time.Millisecond {
		return 0, d.Errf("%s must be at least 1ms, got %q", name, d.Val())
	}
	return caddy.Duration(dur), nil
}

// parseAppCaddyfile sets up the sse app from the global option. Syntax:
//
//	{
//	    sse {
//	        max_body <size>  # admin API request body limit; default 1MiB
//	    }
//	}
func parseAppCaddyfile(d *caddyfile.Dispenser, existing any) (any, error) {
	d.Next() // consume option name
	if existing != nil {
		return nil, d.Err("the sse option is given more than once: merge them into one block")
	}
	app := new(App)
	if d.NextArg() {
		return nil, d.ArgErr()
	}
	for d.NextBlock(0) {
		switch d.Val() {
		case "max_body":
			if !d.NextArg() {
				return nil, d.ArgErr()
			}
			size, err := humanize.ParseBytes(d.Val())
			if err != nil {
				return nil, d.Errf("parsing max_body %q: %v", d.Val(), err)
			}
			if size == 0 || size > math.MaxInt64 {
				return nil, d.Errf("max_body must be between 1 byte and %d bytes, got %q", int64(math.MaxInt64), d.Val())
			}
			app.MaxBody = int64(size)
		default:
			return nil, d.Errf("unrecognized sse option %q", d.Val())
		}
		if d.NextArg() {
			return nil, d.ArgErr()
		}
	}
	return httpcaddyfile.App{Name: "sse", Value: caddyconfig.JSON(app, nil)}, nil
}

// Interface guard
var _ caddyfile.Unmarshaler = (*Handler)(nil)
