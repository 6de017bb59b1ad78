package ssebroadcast

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var updateAdaptTests = flag.Bool("update", false, "rewrite the expected JSON of Caddyfile adapt tests")

// Each file in testdata/caddyfile_adapt holds a Caddyfile, a line of dashes,
// and the JSON it must adapt to. Adding a case is adding a file.
func TestCaddyfileAdaptsToExpectedJSON(t *testing.T) {
	files, err := filepath.Glob("testdata/caddyfile_adapt/*.caddyfiletest")
	require.NoError(t, err)
	require.NotEmpty(t, files)
	for _, file := range files {
		t.Run(filepath.Base(file), func(t *testing.T) {
			content, err := os.ReadFile(file)
			require.NoError(t, err)
			caddyfile, want, found := strings.Cut(string(content), "\n----------\n")
			require.True(t, found, "no line of dashes in %s", file)
			caddyfile += "\n" // the newline before the dashes ends the Caddyfile

			got, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(caddyfile), map[string]any{"filename": "Caddyfile"})
			require.NoError(t, err)
			assert.Empty(t, warnings)
			var pretty bytes.Buffer
			require.NoError(t, json.Indent(&pretty, got, "", "\t"))

			if *updateAdaptTests {
				require.NoError(t, os.WriteFile(file, []byte(caddyfile+"----------\n"+pretty.String()+"\n"), 0o644))
				return
			}
			assert.JSONEq(t, want, pretty.String())
		})
	}
}

func TestCaddyfileErrorsNameTheFileAndLine(t *testing.T) {
	tests := []struct {
		name      string
		caddyfile string
		message   string
		line      int
	}{
		{"unknown subdirective", ":8080 {\n\tsse_broadcast {\n\t\tchanel news\n\t}\n}", `unrecognized sse_broadcast subdirective "chanel"`, 3},
		{"bad keepalive", ":8080 {\n\tsse_broadcast {\n\t\tkeepalive often\n\t}\n}", `parsing keepalive "often"`, 3},
		{"zero keepalive", ":8080 {\n\tsse_broadcast {\n\t\tkeepalive 0s\n\t}\n}", `keepalive must be at least 1ms`, 3},
		{"zero retry", ":8080 {\n\tsse_broadcast {\n\t\tretry 0\n\t}\n}", `retry must be at least 1ms`, 3},
		{"negative retry", ":8080 {\n\tsse_broadcast {\n\t\tretry -2s\n\t}\n}", `retry must be at least 1ms`, 3},
		{"missing value", ":8080 {\n\tsse_broadcast {\n\t\tchannel\n\t}\n}", ``, 3},
		{"extra value", ":8080 {\n\tsse_broadcast {\n\t\tretry 2s 3s\n\t}\n}", ``, 3},
		{"two channels inline", ":8080 {\n\tsse_broadcast /events a b\n}", ``, 2},
		{"channel as argument and in the block", ":8080 {\n\tsse_broadcast news {\n\t\tchannel other\n\t}\n}", `the channel is given both as the directive's argument and in the block`, 3},
		{"channel as argument after a matcher and in the block", ":8080 {\n\tsse_broadcast /events news {\n\t\tkeepalive off\n\t\tchannel news\n\t}\n}", `the channel is given both as the directive's argument and in the block`, 4},
		{"channel twice in the block", ":8080 {\n\tsse_broadcast {\n\t\tchannel a\n\t\tchannel b\n\t}\n}", `channel is given twice in the block`, 4},
		{"query_channels without allow", ":8080 {\n\tsse_broadcast {\n\t\tchannel news\n\t\tquery_channels topic\n\t}\n}", `query_channels topic needs allow`, 4},
		{"allow without query_channels", ":8080 {\n\tsse_broadcast {\n\t\tallow news-*\n\t}\n}", `allow bounds the channels of query_channels`, 4},
		{"allow with no pattern", ":8080 {\n\tsse_broadcast {\n\t\tquery_channels t\n\t\tallow\n\t}\n}", `wrong argument count`, 4},
		{"channel with no name", ":8080 {\n\tsse_broadcast {\n\t\tchannel\n\t}\n}", `wrong argument count`, 3},
		{"bad backlog", ":8080 {\n\tsse_broadcast {\n\t\tbacklog -1\n\t}\n}", `backlog must be a whole number`, 3},
		{"zero max_stream_channels", ":8080 {\n\tsse_broadcast {\n\t\tmax_stream_channels 0\n\t}\n}", `max_stream_channels must be a whole number of at least 1`, 3},
		{"unknown transport", "{\n\tsse {\n\t\ttransport carrier-pigeon\n\t}\n}\n:8080 {\n\tsse_broadcast\n}", `unknown transport "carrier-pigeon"`, 3},
		{"memory transport with options", "{\n\tsse {\n\t\ttransport memory fast\n\t}\n}\n:8080 {\n\tsse_broadcast\n}", `transport memory takes no options`, 3},
		{"transport without a name", "{\n\tsse {\n\t\ttransport\n\t}\n}\n:8080 {\n\tsse_broadcast\n}", ``, 3},
		{"bad max_body", "{\n\tsse {\n\t\tmax_body lots\n\t}\n}\n:8080 {\n\tsse_broadcast\n}", `parsing max_body "lots"`, 3},
		{"zero max_body", "{\n\tsse {\n\t\tmax_body 0\n\t}\n}\n:8080 {\n\tsse_broadcast\n}", `max_body must be between`, 3},
		{"unknown app option", "{\n\tsse {\n\t\tmax_bodies 1MiB\n\t}\n}\n:8080 {\n\tsse_broadcast\n}", `unrecognized sse option "max_bodies"`, 3},
		{"negative replay", "{\n\tsse {\n\t\treplay -1\n\t}\n}\n:8080 {\n\tsse_broadcast\n}", `replay must be a whole number of at least 0`, 3},
		{"zero max_queue", ":8080 {\n\tsse_broadcast {\n\t\tmax_queue 0\n\t}\n}", `max_queue must be a whole number of at least 1`, 3},
		{"bad send_buffer", ":8080 {\n\tsse_broadcast {\n\t\tsend_buffer big\n\t}\n}", `parsing send_buffer "big"`, 3},
		{"zero max_channels", "{\n\tsse {\n\t\tmax_channels 0\n\t}\n}\n:8080 {\n\tsse_broadcast\n}", `max_channels must be a whole number of at least 1`, 3},
		{"bad max_event_size", "{\n\tsse {\n\t\tmax_event_size huge\n\t}\n}\n:8080 {\n\tsse_broadcast\n}", `parsing max_event_size "huge"`, 3},
		{"zero max_channel_length", "{\n\tsse {\n\t\tmax_channel_length 0\n\t}\n}\n:8080 {\n\tsse_broadcast\n}", `max_channel_length must be a whole number of at least 1`, 3},
		{"bad takeover", ":8080 {\n\tsse_broadcast {\n\t\ttakeover maybe\n\t}\n}", `parsing takeover "maybe": must be on or off`, 3},
		{"bad drain", ":8080 {\n\tsse_broadcast {\n\t\tkeepalive 5s\n\t\tdrain soon\n\t}\n}", `parsing drain "soon": must be a duration of 0 or more`, 4},
		{"negative drain", ":8080 {\n\tsse_broadcast {\n\t\tdrain -3s\n\t}\n}", `parsing drain "-3s": must be a duration of 0 or more`, 3},
		{"drain without a window", ":8080 {\n\tsse_broadcast {\n\t\tdrain\n\t}\n}", ``, 3},
		{"bad write_timeout", ":8080 {\n\tsse_broadcast {\n\t\twrite_timeout soon\n\t}\n}", `parsing write_timeout "soon"`, 3},
		{"zero replay_ttl", "{\n\tsse {\n\t\treplay_ttl 0s\n\t}\n}\n:8080 {\n\tsse_broadcast\n}", `replay_ttl must be at least 1ms`, 3},
		{"app option given twice", "{\n\tsse {\n\t\tmax_body 1MiB\n\t}\n\tsse {\n\t}\n}\n:8080 {\n\tsse_broadcast\n}", `the sse option is given more than once`, 5},
		{"publish: unknown subdirective", ":8080 {\n\tsse_publish {\n\t\tallow *\n\t\tchanel news\n\t}\n}", `unrecognized sse_publish subdirective "chanel"`, 4},
		{"publish: no allow", ":8080 {\n\tsse_publish /publish {\n\t\tmax_body 1MiB\n\t}\n}", `sse_publish needs allow`, 2},
		{"publish: no block", ":8080 {\n\n\tsse_publish /publish\n}", `sse_publish needs allow`, 3},
		{"publish: allow without patterns", ":8080 {\n\tsse_publish {\n\t\tallow\n\t}\n}", ``, 3},
		{"publish: channel without data body", ":8080 {\n\tsse_publish {\n\t\tallow *\n\t\tchannel news\n\t}\n}", `channel applies only with data body`, 4},
		{"publish: event without data body", ":8080 {\n\tsse_publish {\n\t\tevent tick\n\t\tallow *\n\t}\n}", `event applies only with data body`, 3},
		{"publish: channel twice", ":8080 {\n\tsse_publish {\n\t\tdata body\n\t\tchannel a\n\t\tallow *\n\t\tchannel b\n\t}\n}", `channel is given twice`, 6},
		{"publish: another data mode", ":8080 {\n\tsse_publish {\n\t\tallow *\n\t\tdata form\n\t}\n}", `parsing data "form": the one mode is body`, 4},
		{"publish: an argument", ":8080 {\n\tsse_publish /publish news {\n\t\tallow *\n\t}\n}", ``, 2},
		{"publish: bad max_body", ":8080 {\n\tsse_publish {\n\t\tallow *\n\t\tmax_body lots\n\t}\n}", `parsing max_body "lots"`, 4},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(tt.caddyfile), map[string]any{"filename": "Caddyfile"})
			require.Error(t, err)
			assert.Contains(t, err.Error(), tt.message)
			assert.Contains(t, err.Error(), fmt.Sprintf("Caddyfile:%d", tt.line))
		})
	}
}
