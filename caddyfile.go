package ssebroadcast

import (
	"encoding/json"
	"math"
	"strconv"
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
//	    channel         <name>...         # default "default"; placeholders allowed
//	    query_channels  <param>           # channels the client asks for: ?<param>=a&<param>=b
//	    allow           <pattern>...      # which it may ask for: globs (*), placeholders allowed
//	    max_stream_channels <count>       # default 32
//	    name_by_channel                   # an unnamed event is named after its channel
//	    reset_event     <name> | off      # sent when history cannot fill the gap; default reset
//	    backlog         <events>          # newest kept events for a client with no id; default 0
//	    keepalive       <interval> | off  # default 15s
//	    retry           <interval>        # sent once when the stream opens; default not sent
//	    write_timeout   <duration> | off  # default 10s
//	    max_queue       <events>          # default 1024
//	    max_queue_bytes <size>            # default 4MiB
//	    max_clients     <count>           # default no limit
//	    send_buffer     <size> | off      # kernel send buffer of HTTP/1.1 streams; default 64KiB
//	    flush_interval  <duration>        # least time between writes to a client; default 0
//	    takeover        on | off          # take HTTP/1 connections over after the headers; default on
//	    greeting                          # open with a "connected" event naming the client's id
//	    drain           <duration>        # a reload ends streams spread over this window; default 0
//	}
//
// The channels are named once: one as the directive's argument, or one or
// more on the block's channel line. query_channels needs allow.
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume directive name

	// The channels may be named once, either way: a second name would
	// otherwise silently win over the first.
	channelInArg := false
	if d.NextArg() {
		h.Channels = []string{d.Val()}
		channelInArg = true
		if d.NextArg() {
			return d.ArgErr()
		}
	}

	channelInBlock := false
	// Made where query_channels stands, so that it names that line.
	var queryChannelsWithoutAllow error
	for d.NextBlock(0) {
		switch d.Val() {
		case "channel":
			if channelInArg {
				return d.Err("the channel is given both as the directive's argument and in the block: give it once")
			}
			if channelInBlock {
				return d.Err("channel is given twice in the block: name every channel on one line")
			}
			channelInBlock = true
			h.Channels = d.RemainingArgs()
			if len(h.Channels) == 0 {
				return d.ArgErr()
			}
			continue
		case "query_channels":
			if !d.NextArg() {
				return d.ArgErr()
			}
			h.QueryChannels = d.Val()
			queryChannelsWithoutAllow = d.Errf("query_channels %s needs allow: the patterns of the channels a client may ask for", d.Val())
		case "allow":
			patterns := d.RemainingArgs()
			if len(patterns) == 0 {
				return d.ArgErr()
			}
			h.Allow = append(h.Allow, patterns...)
			continue
		case "max_stream_channels":
			n, err := parseCount(d, 1)
			if err != nil {
				return err
			}
			h.MaxStreamChannels = n
		case "name_by_channel":
			h.NameByChannel = true
		case "reset_event":
			if !d.NextArg() {
				return d.ArgErr()
			}
			if d.Val() == "off" {
				h.NoReset = true
			} else {
				h.ResetEvent = d.Val()
			}
		case "backlog":
			n, err := parseCount(d, 0)
			if err != nil {
				return err
			}
			h.Backlog = n
		case "keepalive":
			interval, err := parseDurationOrOff(d)
			if err != nil {
				return err
			}
			h.KeepAlive = interval
		case "retry":
			if !d.NextArg() {
				return d.ArgErr()
			}
			delay, err := parsePositiveDuration(d, "retry")
			if err != nil {
				return err
			}
			h.Retry = delay
		case "write_timeout":
			timeout, err := parseDurationOrOff(d)
			if err != nil {
				return err
			}
			h.WriteTimeout = timeout
		case "max_queue":
			n, err := parseCount(d, 1)
			if err != nil {
				return err
			}
			h.MaxQueue = n
		case "max_queue_bytes":
			size, err := parseSize(d)
			if err != nil {
				return err
			}
			h.MaxQueueBytes = int(min(size, math.MaxInt))
		case "max_clients":
			n, err := parseCount(d, 1)
			if err != nil {
				return err
			}
			h.MaxClients = n
		case "flush_interval":
			if !d.NextArg() {
				return d.ArgErr()
			}
			interval, err := caddy.ParseDuration(d.Val())
			if err != nil || interval < 0 {
				return d.Errf("parsing flush_interval %q: must be a duration of 0 or more", d.Val())
			}
			h.FlushInterval = caddy.Duration(interval)
		case "send_buffer":
			size, err := parseSizeOrOff(d)
			if err != nil {
				return err
			}
			h.SendBuffer = int(min(size, math.MaxInt))
		case "greeting":
			h.Greeting = true
		case "drain":
			if !d.NextArg() {
				return d.ArgErr()
			}
			window, err := caddy.ParseDuration(d.Val())
			if err != nil || window < 0 {
				return d.Errf("parsing drain %q: must be a duration of 0 or more", d.Val())
			}
			h.Drain = caddy.Duration(window)
		case "takeover":
			if !d.NextArg() {
				return d.ArgErr()
			}
			switch d.Val() {
			case "on":
				h.Takeover = nil // the default
			case "off":
				off := false
				h.Takeover = &off
			default:
				return d.Errf("parsing takeover %q: must be on or off", d.Val())
			}
		default:
			return d.Errf("unrecognized sse_broadcast subdirective %q", d.Val())
		}
		if d.NextArg() {
			return d.ArgErr()
		}
	}
	if queryChannelsWithoutAllow != nil && len(h.Allow) == 0 {
		return queryChannelsWithoutAllow
	}
	if len(h.Allow) > 0 && h.QueryChannels == "" {
		return d.Err("allow bounds the channels of query_channels, which is not set")
	}
	return nil
}

// parseDurationOrOff parses the next argument as a duration of at least
// 1ms, or "off", which it returns as -1: off in the JSON config.
func parseDurationOrOff(d *caddyfile.Dispenser) (caddy.Duration, error) {
	name := d.Val()
	if !d.NextArg() {
		return 0, d.ArgErr()
	}
	if d.Val() == "off" {
		return -1, nil
	}
	return parsePositiveDuration(d, name)
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

// parseCount parses the next argument as a whole number of at least least.
func parseCount(d *caddyfile.Dispenser, least int) (int, error) {
	name := d.Val()
	if !d.NextArg() {
		return 0, d.ArgErr()
	}
	n, err := strconv.Atoi(d.Val())
	if err != nil || n < least {
		return 0, d.Errf("%s must be a whole number of at least %d, got %q", name, least, d.Val())
	}
	return n, nil
}

// parseSize parses the next argument as a size of at least one byte, with
// or without a unit: 512KiB, 1MiB, 10MB.
func parseSize(d *caddyfile.Dispenser) (int64, error) {
	name := d.Val()
	if !d.NextArg() {
		return 0, d.ArgErr()
	}
	return sizeValue(d, name)
}

// parseSizeOrOff parses the next argument as parseSize does, or "off",
// which it returns as -1: off in the JSON config.
func parseSizeOrOff(d *caddyfile.Dispenser) (int64, error) {
	name := d.Val()
	if !d.NextArg() {
		return 0, d.ArgErr()
	}
	if d.Val() == "off" {
		return -1, nil
	}
	return sizeValue(d, name)
}

// sizeValue reads the current token as the size for option name.
func sizeValue(d *caddyfile.Dispenser, name string) (int64, error) {
	size, err := humanize.ParseBytes(d.Val())
	if err != nil {
		return 0, d.Errf("parsing %s %q: %v", name, d.Val(), err)
	}
	if size == 0 || size > math.MaxInt64 {
		return 0, d.Errf("%s must be between 1 byte and %d bytes, got %q", name, int64(math.MaxInt64), d.Val())
	}
	return int64(size), nil
}

// parseAppCaddyfile sets up the sse app from the global option. Syntax:
//
//	{
//	    sse {
//	        max_body           <size>      # admin API request body limit; default 1MiB
//	        replay             <events>    # per channel; 0 turns replay off; default 1000
//	        replay_max_bytes   <size>      # per channel; default 4MiB
//	        replay_ttl         <duration>  # default 1h
//	        replay_total_bytes <size>      # all channels together; default 256MiB
//	        max_clients        <count>     # streams over the whole server; default no limit
//	        max_channel_length <bytes>     # longest channel name; default 256
//	        max_event_size     <size>      # an event's id, name and data together; default 1MiB
//	        max_channels       <count>     # channels at once; default 100000
//	        transport          <name> [{ ... }]  # what carries events between nodes; default memory
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
			size, err := parseSize(d)
			if err != nil {
				return nil, err
			}
			app.MaxBody = size
		case "replay":
			n, err := parseCount(d, 0)
			if err != nil {
				return nil, err
			}
			app.Replay = &n
		case "replay_max_bytes":
			size, err := parseSize(d)
			if err != nil {
				return nil, err
			}
			app.ReplayMaxBytes = size
		case "replay_ttl":
			if !d.NextArg() {
				return nil, d.ArgErr()
			}
			ttl, err := parsePositiveDuration(d, "replay_ttl")
			if err != nil {
				return nil, err
			}
			app.ReplayTTL = ttl
		case "replay_total_bytes":
			size, err := parseSize(d)
			if err != nil {
				return nil, err
			}
			app.ReplayTotalBytes = size
		case "max_clients":
			n, err := parseCount(d, 1)
			if err != nil {
				return nil, err
			}
			app.MaxClients = n
		case "max_channel_length":
			n, err := parseCount(d, 1)
			if err != nil {
				return nil, err
			}
			app.MaxChannelLength = n
		case "max_event_size":
			size, err := parseSize(d)
			if err != nil {
				return nil, err
			}
			app.MaxEventSize = int(min(size, math.MaxInt))
		case "max_channels":
			n, err := parseCount(d, 1)
			if err != nil {
				return nil, err
			}
			app.MaxChannels = n
		case "transport":
			raw, err := parseTransport(d)
			if err != nil {
				return nil, err
			}
			app.TransportRaw = raw
			continue // the transport's block is its own
		default:
			return nil, d.Errf("unrecognized sse option %q", d.Val())
		}
		if d.NextArg() {
			return nil, d.ArgErr()
		}
	}
	return httpcaddyfile.App{Name: "sse", Value: caddyconfig.JSON(app, nil)}, nil
}

// parseTransport reads "transport <name> [{ … }]": the module
// sse.transports.<name>, which reads its own block, as reverse_proxy's
// transports do.
func parseTransport(d *caddyfile.Dispenser) (json.RawMessage, error) {
	if !d.NextArg() {
		return nil, d.ArgErr()
	}
	name := d.Val()
	info, err := caddy.GetModule("sse.transports." + name)
	if err != nil {
		return nil, d.Errf("unknown transport %q: %v", name, err)
	}
	mod := info.New()
	if unmarshaler, ok := mod.(caddyfile.Unmarshaler); ok {
		if err := unmarshaler.UnmarshalCaddyfile(d.NewFromNextSegment()); err != nil {
			return nil, err
		}
	} else if d.NextArg() || d.NextBlock(d.Nesting()) {
		return nil, d.Errf("transport %s takes no options", name)
	}
	if _, ok := mod.(Transport); !ok {
		return nil, d.Errf("module %s is not a transport", info.ID)
	}
	return caddyconfig.JSONModuleObject(mod, "module", name, nil), nil
}

// Interface guard
var _ caddyfile.Unmarshaler = (*Handler)(nil)
