package natstransport

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
	_ "github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
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

func TestCaddyfileErrorsOfTheNatsTransportNameTheFileAndLine(t *testing.T) {
	global := func(block string) string {
		return "{\n\tsse {\n\t\ttransport nats {\n" + block + "\n\t\t}\n\t}\n}\n:8080 {\n\tsse_broadcast\n}"
	}
	tests := []struct {
		name      string
		caddyfile string
		message   string
		line      int
	}{
		{"unknown option", global("\t\t\tservers nats://a:4222"), `unrecognized nats transport option "servers"`, 4},
		{"url without a server", global("\t\t\turl"), `wrong argument count`, 4},
		{"stream twice on a line", global("\t\t\tstream A B"), `wrong argument count`, 4},
		{"zero replicas", global("\t\t\treplicas 0"), `replicas must be a positive whole number, got "0"`, 4},
		{"bad publish_timeout", global("\t\t\tpublish_timeout soon"), `parsing publish_timeout "soon"`, 4},
		{"zero max_age", global("\t\t\tmax_age 0s"), `max_age must be positive`, 4},
		{"bad max_bytes", global("\t\t\tmax_bytes lots"), `parsing max_bytes "lots"`, 4},
		{"user without a password", global("\t\t\tuser caddy"), `wrong argument count`, 4},
		{"unknown tls option", global("\t\t\ttls {\n\t\t\t\tcafile x\n\t\t\t}"), `unrecognized tls option "cafile"`, 5},
		{"argument after the name", "{\n\tsse {\n\t\ttransport nats fast\n\t}\n}\n:8080 {\n\tsse_broadcast\n}", `wrong argument count`, 3},
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
