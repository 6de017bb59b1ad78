package natstransport

// Fuzz targets; .ci/run fuzzes each for a few seconds:
//
//	go test -run '^$' -fuzz '^FuzzChannelSubjectRoundTrips$' -fuzztime 60s ./natstransport/

import (
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Every channel a publisher may name (non-empty UTF-8 without line breaks)
// maps to one literal subject that the NATS server accepts, made of the
// stream's levels and one token, and back to itself; so does an event id
// through its message id.
func FuzzChannelSubjectRoundTrips(f *testing.F) {
	for _, seed := range []string{"news", "a.b", "*", ">", "a b\t", "ünïcødé", "a/b\\c", "-_=", "\x00", strings.Repeat("long", 64)} {
		f.Add(seed, seed)
	}
	f.Fuzz(func(t *testing.T, channel, id string) {
		if channel == "" || !utf8.ValidString(channel) || strings.ContainsAny(channel, "\r\n") {
			t.Skip("not a channel the sse app accepts")
		}
		token := channelToken(channel)
		require.NotEmpty(t, token)
		assert.NotContains(t, token, ".")
		subject := channelSubject(DefaultStream, channel)
		assert.True(t, server.IsValidLiteralSubject(subject), "subject %q", subject)
		assert.Len(t, strings.Split(subject, "."), 3, "one token for the channel in %q", subject)
		got, err := channelOfSubject(DefaultStream, subject)
		require.NoError(t, err)
		assert.Equal(t, channel, got)

		if id == "" {
			return
		}
		value := msgID(channel, id)
		assert.Equal(t, strings.TrimSpace(value), value, "a header value keeps no space at its ends")
		assert.NotContains(t, value, " ")
		gotID, err := idOfMsgID(value)
		require.NoError(t, err)
		assert.Equal(t, id, gotID)
		if channel != id {
			assert.NotEqual(t, msgID(id, channel), value, "events of different channels are never taken for one another")
		}
	})
}

func TestASubjectOfAnotherStreamOrNotOfAChannelIsRefused(t *testing.T) {
	for _, subject := range []string{"OTHER.ch.bmV3cw", "SSE.client.bmV3cw", "SSE.ch.", "SSE.ch.bmV3cw=", "SSE.ch.not base64"} {
		_, err := channelOfSubject("SSE", subject)
		assert.Error(t, err, subject)
	}
}
