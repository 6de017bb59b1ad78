package ssebroadcast

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"

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
	resp, err := caddycmd.AdminAPIRequest(adminAddr, http.MethodPost, "/sse/broadcast", nil, bytes.NewReader(body))
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

// dropFinalLineBreak removes one trailing LF or CRLF from data read from
// standard input. Programs end their output with a line break that ends the
// last line rather than starts another, and a shell's command substitution
// drops it for that reason; sent as it is, it would become a final empty data: line,
// and every page would see e.data end in "\n". Only one goes: a blank last
// line is data.
func dropFinalLineBreak(data string) string {
	if trimmed, ok := strings.CutSuffix(data, "\n"); ok {
		return strings.TrimSuffix(trimmed, "\r")
	}
	return data
}
