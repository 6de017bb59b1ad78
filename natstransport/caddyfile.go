package natstransport

import (
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/dustin/go-humanize"
)

// UnmarshalCaddyfile reads the transport's block of the sse global option:
//
//	transport nats {
//		url <nats-url...>
//		stream <name>
//		replicas <n>
//		publish_timeout <duration>
//		max_age <duration>
//		max_msgs_per_subject <n>
//		max_bytes <size>
//		duplicate_window <duration>
//		node <name>
//		creds <file>
//		nkey <seed-file>
//		user <name> <password>
//		token <token>
//		tls {
//			ca <file>
//			cert <file>
//			key <file>
//		}
//	}
//
// url takes one or more servers and may be given more than once; tls
// without a block connects over TLS trusting the system's authorities.
func (t *Transport) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the transport's name
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		option := d.Val()
		switch option {
		case "url":
			urls := d.RemainingArgs()
			if len(urls) == 0 {
				return d.ArgErr()
			}
			t.URLs = append(t.URLs, urls...)
			continue
		case "stream":
			if !d.NextArg() {
				return d.ArgErr()
			}
			t.Stream = d.Val()
		case "replicas":
			n, err := intArg(d)
			if err != nil {
				return err
			}
			t.Replicas = int(n)
		case "publish_timeout", "max_age", "duplicate_window":
			if !d.NextArg() {
				return d.ArgErr()
			}
			dur, err := caddy.ParseDuration(d.Val())
			if err != nil {
				return d.Errf("parsing %s %q: %v", option, d.Val(), err)
			}
			if dur <= 0 {
				return d.Errf("%s must be positive, got %s", option, d.Val())
			}
			switch option {
			case "publish_timeout":
				t.PublishTimeout = caddy.Duration(dur)
			case "max_age":
				t.MaxAge = caddy.Duration(dur)
			default:
				t.DuplicateWindow = caddy.Duration(dur)
			}
		case "max_msgs_per_subject":
			n, err := intArg(d)
			if err != nil {
				return err
			}
			t.MaxMsgsPerSubject = n
		case "max_bytes":
			if !d.NextArg() {
				return d.ArgErr()
			}
			size, err := humanize.ParseBytes(d.Val())
			if err != nil || size == 0 || size > 1<<62 {
				return d.Errf("parsing max_bytes %q: a positive size, such as 256MiB", d.Val())
			}
			t.MaxBytes = int64(size)
		case "creds", "nkey", "token", "node":
			if !d.NextArg() {
				return d.ArgErr()
			}
			switch option {
			case "node":
				t.Node = d.Val()
			case "creds":
				t.Creds = d.Val()
			case "nkey":
				t.NKey = d.Val()
			default:
				t.Token = d.Val()
			}
		case "user":
			if !d.NextArg() {
				return d.ArgErr()
			}
			t.User = d.Val()
			if !d.NextArg() {
				return d.ArgErr()
			}
			t.Password = d.Val()
		case "tls":
			if d.NextArg() {
				return d.ArgErr()
			}
			t.TLS = new(TLS)
			for nesting := d.Nesting(); d.NextBlock(nesting); {
				field := d.Val()
				if !d.NextArg() {
					return d.ArgErr()
				}
				switch field {
				case "ca":
					t.TLS.CA = d.Val()
				case "cert":
					t.TLS.Cert = d.Val()
				case "key":
					t.TLS.Key = d.Val()
				default:
					return d.Errf("unrecognized tls option %q", field)
				}
				if d.NextArg() {
					return d.ArgErr()
				}
			}
			continue
		default:
			return d.Errf("unrecognized nats transport option %q", option)
		}
		if d.NextArg() {
			return d.ArgErr()
		}
	}
	return nil
}

// intArg reads the next argument as a positive whole number.
func intArg(d *caddyfile.Dispenser) (int64, error) {
	option := d.Val()
	if !d.NextArg() {
		return 0, d.ArgErr()
	}
	n, err := strconv.ParseInt(d.Val(), 10, 64)
	if err != nil || n < 1 {
		return 0, d.Errf("%s must be a positive whole number, got %q", option, d.Val())
	}
	return n, nil
}

// Interface guard
var _ caddyfile.Unmarshaler = (*Transport)(nil)
