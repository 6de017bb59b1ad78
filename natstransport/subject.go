package natstransport

import (
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
)

// Subjects: every event of channel c is stored in the stream under
//
//	<stream>.ch.<token of c>
//
// where the token is c's bytes in unpadded base64url (RFC 4648, section 5).
// Channel names are any UTF-8 without line breaks, and a subject token may
// hold none of '.', '*', '>' or whitespace; base64url's alphabet is letters,
// digits, '-' and '_', so every name maps to one valid token and back, and
// the stream's per-subject limits are per channel. The "ch" level leaves room
// for subjects of other kinds (events for one client, kicks) in the same
// stream. A token is 4/3 of its name's length: NATS's default max_control_line
// of 4 KiB bounds channel names to about 2.9 KiB, well above the sse app's
// default max_channel_length of 256 bytes.

// channelLevel is the subject level between the stream's name and a
// channel's token.
const channelLevel = ".ch."

// tokenEncoding is base64url without padding, strict so that each token
// decodes from one spelling only.
var tokenEncoding = base64.RawURLEncoding.Strict()

// channelToken returns the subject token that stands for channel, which
// must not be empty.
func channelToken(channel string) string {
	return tokenEncoding.EncodeToString([]byte(channel))
}

// channelOfToken returns the channel that token stands for.
func channelOfToken(token string) (string, error) {
	if token == "" {
		return "", errors.New("empty channel token")
	}
	name, err := tokenEncoding.DecodeString(token)
	if err != nil {
		return "", fmt.Errorf("channel token %q: %w", token, err)
	}
	return string(name), nil
}

// channelSubject returns the subject that stream stores channel's events
// under.
func channelSubject(stream, channel string) string {
	return stream + channelLevel + channelToken(channel)
}

// channelsWildcard is the subject filter of every channel of stream.
func channelsWildcard(stream string) string {
	return stream + channelLevel + ">"
}

// channelOfSubject returns the channel whose events stream stores under
// subject.
func channelOfSubject(stream, subject string) (string, error) {
	token, ok := strings.CutPrefix(subject, stream+channelLevel)
	if !ok {
		return "", fmt.Errorf("subject %q is not one of stream %s's channels", subject, stream)
	}
	return channelOfToken(token)
}

// msgID is the Nats-Msg-Id of an event with the publisher's own id: the
// stream stores one event per msgID within its duplicate window, so that a
// publish retried after a lost answer is stored once. The channel is part
// of it, so that events of different channels with the same id are never
// taken for one another; the id is base64url too, since a header value
// loses the spaces at its ends.
func msgID(channel, id string) string {
	return channelToken(channel) + "." + tokenEncoding.EncodeToString([]byte(id))
}

// idOfMsgID returns the publisher's id that msgID carries.
func idOfMsgID(value string) (string, error) {
	_, encoded, ok := strings.Cut(value, ".")
	if !ok {
		return "", fmt.Errorf("message id %q has no event id", value)
	}
	id, err := tokenEncoding.DecodeString(encoded)
	if err != nil {
		return "", fmt.Errorf("message id %q: %w", value, err)
	}
	return string(id), nil
}
