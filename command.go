package ssebroadcast

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"
)

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "sse-broadcast",
		Usage: "[--data <text>|-] [--event <name>] [--id <id>] [--retry <ms>] [--channel <name>] [--client <id>] [--address <interface>] [--config <path> [--adapter <name>]]",
		Short: "Broadcasts a Server-Sent Event through a running Caddy",
		Long: `
Sends one event to every client streaming the channel from the running Caddy,
through its admin API (POST /sse/broadcast). With --data -, the data is read
from standard input, less one final line break (LF or CRLF), which ends the
last line rather than adds an empty one: 'date | caddy sse-broadcast --data -'
sends the date alone. Data with line breaks is sent as one data field a line.

The admin endpoint is found the way 'caddy reload' finds it: from --address
if given, else from the admin option of the config file given with --config
or, without --config, of the Caddyfile in the working directory if there is
one, else the default (localhost:2019). A config with 'admin off' is an
error: the command exits non-zero rather than try the default address.

A request that fails at the connection before any answer, as one can while
Caddy reloads its config and replaces its admin endpoint, is sent again, up
to 9 more times over about 2 seconds. One that got an answer never is.

Prints the API's answer, with the id and the number of clients the event
reached. A rejected event exits non-zero with the API's message.
`,
		CobraFunc: func(cmd *cobra.Command) {
			cmd.Flags().StringP("event", "e", "", "Event name (the event: field)")
			cmd.Flags().StringP("data", "d", "", "Event data, or - to read it from standard input")
			cmd.Flags().String("id", "", "Event id (the id: field)")
			cmd.Flags().Int64("retry", 0, "Reconnection delay to send, in milliseconds (not sent unless given)")
			cmd.Flags().String("channel", DefaultChannel, "Channel to broadcast to")
			cmd.Flags().String("client", "", "Send to this one client only (its id, from GET /sse/clients or its greeting)")
			cmd.Flags().String("address", "", "Address of the administration endpoint, if different from config")
			cmd.Flags().StringP("config", "c", "", "Configuration file to read the admin address from")
			cmd.Flags().StringP("adapter", "a", "", "Name of config adapter to apply")
			cmd.RunE = caddycmd.WrapCommandFuncForCobra(cmdBroadcast)
		},
	})
}

// cmdBroadcast is `caddy sse-broadcast`: it makes the event of its flags
// into the JSON body of POST /sse/broadcast, sends it to the admin endpoint
// of the running Caddy, and prints the answer.
func cmdBroadcast(fl caddycmd.Flags) (int, error) {
	data := fl.String("data")
	if data == "-" {
		stdin, err := io.ReadAll(os.Stdin)
		if err != nil {
			return caddy.ExitCodeFailedStartup, fmt.Errorf("reading data from standard input: %w", err)
		}
		data = dropFinalLineBreak(string(stdin))
	}

	req := map[string]any{
		"event":   fl.String("event"),
		"data":    data,
		"id":      fl.String("id"),
		"channel": fl.String("channel"),
	}
	if client := fl.String("client"); client != "" {
		req["client"] = client
		if !fl.Changed("channel") {
			// The client's own channel, rather than the default.
			delete(req, "channel")
		}
	}
	if fl.Changed("retry") {
		retry, err := fl.GetInt64("retry")
		if err != nil {
			return caddy.ExitCodeFailedStartup, fmt.Errorf("reading --retry: %w", err)
		}
		req["retry"] = retry
	}
	body, err := json.Marshal(req)
	if err != nil {
		return caddy.ExitCodeFailedStartup, fmt.Errorf("encoding event: %w", err)
	}

	adminAddr, err := adminAddress(fl.String("address"), fl.String("config"), fl.String("adapter"))
	if err != nil {
		return caddy.ExitCodeFailedStartup, fmt.Errorf("finding the admin API address: %w", err)
	}
	resp, err := postToAdmin(adminAddr, "/sse/broadcast", body)
	if err != nil {
		return caddy.ExitCodeFailedStartup, fmt.Errorf("broadcasting: %w", err)
	}
	defer resp.Body.Close()
	if _, err := io.Copy(os.Stdout, resp.Body); err != nil {
		return caddy.ExitCodeFailedStartup, fmt.Errorf("reading the answer: %w", err)
	}
	return caddy.ExitCodeSuccess, nil
}

// adminAddress finds the admin endpoint the way `caddy reload` finds the one
// it loads a config into: the address given, else the admin option of the
// config file given or, without one, of a Caddyfile in the working directory,
// else Caddy's default. caddycmd.DetermineAdminAPIAddress does not look for
// the adjacent Caddyfile, so a command run beside the Caddyfile of a Caddy
// on another address would publish to whatever listens on the default one.
//
// A config with its admin endpoint off is an error rather than a reason to
// fall back to the default: the Caddy it runs cannot be reached, and one that
// answers on the default address is another Caddy.
func adminAddress(address, configFile, adapter string) (string, error) {
	if address != "" {
		return address, nil
	}
	// With no file named, LoadConfig loads an adjacent Caddyfile, and
	// reports (on standard error) that it did.
	config, configFile, _, err := caddycmd.LoadConfig(configFile, adapter)
	if err != nil {
		return "", fmt.Errorf("loading the config: %w", err)
	}
	if len(config) == 0 {
		return caddy.DefaultAdminListen, nil
	}
	var cfg struct {
		Admin *caddy.AdminConfig `json:"admin"`
	}
	if err := json.Unmarshal(config, &cfg); err != nil {
		return "", fmt.Errorf("reading the admin option of %s: %w", configFile, err)
	}
	switch {
	case cfg.Admin == nil:
		return caddy.DefaultAdminListen, nil
	case cfg.Admin.Disabled:
		return "", fmt.Errorf("the admin endpoint is off in %s (admin off): a Caddy running that config cannot be published to; give --address to name an admin endpoint", configFile)
	case cfg.Admin.Listen == "":
		return caddy.DefaultAdminListen, nil
	}
	return cfg.Admin.Listen, nil
}

// How a request that meets a closing admin endpoint is sent again: up to
// adminAttempts times in all, the first retry after adminFirstBackoff and
// each later one after twice the wait before it, up to adminMaxBackoff. That
// is 9 retries over 1.83 s of waits: a reload replaces the endpoint in
// milliseconds, and a Caddy that is not running is reported within 2 s.
const (
	adminAttempts     = 10
	adminFirstBackoff = 10 * time.Millisecond
	adminMaxBackoff   = 400 * time.Millisecond
)

// postToAdmin posts a JSON body to uri on the admin endpoint at adminAddr and
// returns the answer, whose body the caller closes; an answer of HTTP 400 or
// above is an error carrying the answer's body. The request is made as
// caddycmd.AdminAPIRequest makes it (newAdminEndpoint), which cannot be used
// here because its error does not tell a request that got no answer from
// one that did.
//
// Every config load replaces Caddy's admin endpoint, and a request that
// reaches the old one as it closes fails at the connection, unanswered and
// not processed: such a request is sent again. One that got an answer,
// whatever its status, never is, since it may have been processed.
func postToAdmin(adminAddr, uri string, body []byte) (*http.Response, error) {
	endpoint, err := newAdminEndpoint(adminAddr)
	if err != nil {
		return nil, err
	}
	var resp *http.Response
	backoff := adminFirstBackoff
	for attempt := 1; ; attempt++ {
		req, err := http.NewRequest(http.MethodPost, endpoint.url+uri, bytes.NewReader(body))
		if err != nil {
			return nil, fmt.Errorf("making request: %w", err)
		}
		if endpoint.origin != "" {
			req.Header.Set("Origin", endpoint.origin)
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err = endpoint.client.Do(req)
		if err == nil {
			break
		}
		if attempt == adminAttempts {
			return nil, fmt.Errorf("no answer from the admin endpoint at %s in %d attempts: %w", adminAddr, attempt, err)
		}
		time.Sleep(backoff) // backoff before a retry, while the new endpoint takes over
		backoff = min(2*backoff, adminMaxBackoff)
	}
	if resp.StatusCode >= http.StatusBadRequest {
		defer resp.Body.Close()
		// As much of the message as caddycmd.AdminAPIRequest reads.
		msg, err := io.ReadAll(io.LimitReader(resp.Body, 2<<20))
		if err != nil {
			return nil, fmt.Errorf("HTTP %d: reading error message: %w", resp.StatusCode, err)
		}
		return nil, fmt.Errorf("caddy responded with error: HTTP %d: %s", resp.StatusCode, msg)
	}
	return resp, nil
}

// adminEndpoint is how the command reaches an admin endpoint.
type adminEndpoint struct {
	client *http.Client // dials the endpoint's network, whatever the URL
	url    string       // the scheme and host that a request's path follows
	origin string       // the Origin header to send; none on a socket
}

// newAdminEndpoint prepares requests to the admin endpoint at adminAddr as
// caddycmd.AdminAPIRequest does, since the endpoint checks what that sends.
// An endpoint on TCP is sent its own address as the Origin: with
// enforce_origin it refuses a request without one, and its own address is
// an origin it allows unless told otherwise. On a unix socket or a file
// descriptor there is no host; Go still wants one in the URL, and the
// admin endpoint accepts 127.0.0.1 there.
func newAdminEndpoint(adminAddr string) (*adminEndpoint, error) {
	addr, err := caddy.ParseNetworkAddress(adminAddr)
	if err != nil {
		return nil, fmt.Errorf("invalid admin address %s: %w", adminAddr, err)
	}
	if addr.PortRangeSize() > 1 {
		return nil, fmt.Errorf("invalid admin address %s: a range of ports, not one", adminAddr)
	}
	e := &adminEndpoint{url: "http://" + addr.JoinHostPort(0)}
	e.origin = e.url
	if addr.IsUnixNetwork() || addr.IsFdNetwork() {
		e.url, e.origin = "http://127.0.0.1", ""
	}
	if addr.IsUnixNetwork() {
		// A unix address may end in the socket file's permission bits
		// ("unix//run/caddy.sock|0220"), which are not part of its path.
		addr.Host, _, _ = strings.Cut(addr.Host, "|")
	}
	var dialer net.Dialer
	e.client = &http.Client{
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return dialer.DialContext(ctx, addr.Network, addr.JoinHostPort(0))
			},
			// Each attempt on a connection of its own: one kept from an
			// earlier attempt leads to the endpoint being replaced.
			DisableKeepAlives: true,
		},
		// A redirect is an answer like any other; were it followed, a
		// failure to reach its target would look like no answer at all.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	return e, nil
}

// dropFinalLineBreak removes one trailing LF or CRLF from data read from
// standard input. Programs end their output with a line break that ends the
// last line rather than starts another, and a shell's command substitution
// drops it for that reason; sent as it is, it would become a final empty
// data: line, and every page would see e.data end in "\n". Only one goes: a
// blank last line is data.
func dropFinalLineBreak(data string) string {
	if trimmed, ok := strings.CutSuffix(data, "\n"); ok {
		return strings.TrimSuffix(trimmed, "\r")
	}
	return data
}
