package ssebroadcast

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	sse "github.com/tmaxmax/go-sse"
)

func durationPtr(d time.Duration) *time.Duration { return &d }

func TestEncodeWritesTheEventStreamFormat(t *testing.T) {
	tests := []struct {
		name string
		ev   Event
		wire string
	}{
		{"data only", Event{Data: "hello"}, "data: hello\n\n"},
		{"empty data still has a data line", Event{}, "data: \n\n"},
		{"all fields", Event{ID: "7", Type: "tick", Retry: durationPtr(3 * time.Second), Data: `{"i":1}`},
			"id: 7\nevent: tick\nretry: 3000\ndata: {\"i\":1}\n\n"},
		{"retry zero is sent", Event{Retry: durationPtr(0), Data: "x"}, "retry: 0\ndata: x\n\n"},
		{"LF splits data lines", Event{Data: "a\nb"}, "data: a\ndata: b\n\n"},
		{"CR splits data lines", Event{Data: "a\rb"}, "data: a\ndata: b\n\n"},
		{"CRLF splits data lines once", Event{Data: "a\r\nb"}, "data: a\ndata: b\n\n"},
		{"trailing line break keeps an empty line", Event{Data: "a\n"}, "data: a\ndata: \n\n"},
		{"leading space survives the parser's strip", Event{Data: " a"}, "data:  a\n\n"},
		{"unicode passes unchanged", Event{Data: "héllo 世界 🎉"}, "data: héllo 世界 🎉\n\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			require.NoError(t, tt.ev.validate())
			wire := string(tt.ev.encode(nil))
			assert.Equal(t, tt.wire, wire)
			assert.LessOrEqual(t, len(wire), tt.ev.encodedSize(), "encodedSize must bound the wire form")
		})
	}
}

// The wire form must read back, through a parser we did not write, as
// exactly the event that was encoded: one event, with every field intact.
func TestEncodedEventsReadBackThroughAThirdPartyParser(t *testing.T) {
	events := []Event{
		{Data: ""},
		{Data: "line one\nline two\r\nline three\rline four"},
		{ID: "id-1", Type: "update", Data: "héllo 世界 🎉"},
		{Type: "x", Data: "\n\n"},
		{ID: " spaced", Type: " spaced", Data: " spaced"},
		{Data: "data: not a field\nevent: not a name\n\nid: nope"},
	}
	var wire []byte
	for i := range events {
		require.NoError(t, events[i].validate())
		wire = events[i].encode(wire)
	}
	var got []sse.Event
	for ev, err := range sse.Read(strings.NewReader(string(wire)), nil) {
		require.NoError(t, err)
		got = append(got, ev)
	}
	require.Len(t, got, len(events))
	lastID := ""
	for i, ev := range events {
		if ev.ID != "" {
			lastID = ev.ID
		}
		want := strings.NewReplacer("\r\n", "\n", "\r", "\n").Replace(ev.Data)
		assert.Equal(t, want, got[i].Data, "event %d data", i)
		assert.Equal(t, ev.Type, got[i].Type, "event %d type", i)
		assert.Equal(t, lastID, got[i].LastEventID, "event %d id", i)
	}
}

func TestValidateRejectsFieldsThatWouldCorruptTheStream(t *testing.T) {
	tests := []struct {
		name  string
		ev    Event
		field string
	}{
		{"LF in event name", Event{Type: "a\nid: 9"}, "event"},
		{"CR in event name", Event{Type: "a\rb"}, "event"},
		{"LF in id", Event{ID: "1\n\ndata: injected"}, "id"},
		{"CR in id", Event{ID: "1\r"}, "id"},
		{"NUL in id", Event{ID: "1\x002"}, "id"},
		{"LF in channel", Event{Channel: "news\nsports"}, "channel"},
		{"CR in channel", Event{Channel: "news\r"}, "channel"},
		{"invalid UTF-8 in data", Event{Data: "\xff"}, "data"},
		{"invalid UTF-8 in event name", Event{Type: "\xc3"}, "event"},
		{"negative retry", Event{Retry: durationPtr(-time.Second)}, "retry"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.ev.validate()
			var fieldErr *FieldError
			require.True(t, errors.As(err, &fieldErr), "want a *FieldError, got %v", err)
			assert.Equal(t, tt.field, fieldErr.Field)
		})
	}
}
