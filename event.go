package ssebroadcast

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// DefaultChannel is the channel an event or a stream uses when none is named.
const DefaultChannel = "default"

// Event is one Server-Sent Event addressed to the clients of a channel.
type Event struct {
	// Channel names the clients that receive the event. Empty means
	// DefaultChannel.
	Channel string

	// Type is the event's name, sent as the "event:" field; browsers
	// dispatch it to listeners added with addEventListener(Type). Empty
	// sends no field, and browsers fire a plain "message" event.
	Type string

	// ID is sent as the "id:" field and becomes the client's
	// Last-Event-ID. Empty sends no field.
	ID string

	// Data is the event's payload. Each line of it (LF, CR and CRLF all
	// break lines) is sent as one "data:" field. Empty data is still sent
	// as one empty "data:" field, so that browsers fire the event.
	Data string

	// Retry, when not nil, is sent as the "retry:" field in whole
	// milliseconds: the delay a browser waits before it reconnects.
	Retry *time.Duration

	// Client, when set, sends the event to that one client only (its id,
	// as GET /sse/clients and the greeting give it) rather than to every
	// client of the channel. It is not kept for replay: no other client
	// may receive it. Channel may then be left empty; if set, it must be
	// the client's.
	Client string
}

// Result says what became of one published event.
type Result struct {
	// Channel is the channel the event was published to.
	Channel string `json:"channel"`
	// ID is the event's id, as sent to clients.
	ID string `json:"id,omitempty"`
	// Clients is the number of connected clients the event was queued for.
	Clients int `json:"clients"`
}

// FieldError reports an event field that cannot be sent as it is.
type FieldError struct {
	Field  string // the name of the field as the admin API spells it
	Reason string
}

func (e *FieldError) Error() string {
	return fmt.Sprintf("field %q: %s", e.Field, e.Reason)
}

// channelName returns the channel the event is for, with the default applied.
func (ev *Event) channelName() string {
	if ev.Channel == "" {
		return DefaultChannel
	}
	return ev.Channel
}

// validate reports the first field that would corrupt the stream or that a
// client could not read back as it was given: line breaks in single-line
// fields would let a publisher inject fields or whole events.
func (ev *Event) validate() error {
	if err := validateChannel(ev.channelName()); err != nil {
		return err
	}
	if err := validateLine("event", ev.Type); err != nil {
		return err
	}
	if err := validateLine("id", ev.ID); err != nil {
		return err
	}
	if strings.IndexByte(ev.ID, 0) >= 0 {
		// The HTML spec makes clients ignore an id with NUL in it.
		return &FieldError{Field: "id", Reason: "must not contain NUL"}
	}
	if !utf8.ValidString(ev.Data) {
		return &FieldError{Field: "data", Reason: "must be valid UTF-8"}
	}
	if ev.Retry != nil && *ev.Retry < 0 {
		return &FieldError{Field: "retry", Reason: "must not be negative"}
	}
	if ev.Client != "" && !validClientID(ev.Client) {
		return &FieldError{Field: "client", Reason: "is not a client id: ids are 26 characters of A-Z and 2-7"}
	}
	return nil
}

// validateChannel rejects channel names that cannot be told apart in logs,
// stats and the admin API.
func validateChannel(name string) error {
	if name == "" {
		return &FieldError{Field: "channel", Reason: "must not be empty"}
	}
	return validateLine("channel", name)
}

func validateLine(field, value string) error {
	if strings.ContainsAny(value, "\r\n") {
		return &FieldError{Field: field, Reason: "must not contain a line break (CR or LF)"}
	}
	if !utf8.ValidString(value) {
		return &FieldError{Field: field, Reason: "must be valid UTF-8"}
	}
	return nil
}

// encode appends the event's wire form, as the HTML spec's event-stream
// format defines it, to buf. The event must have passed validate.
func (ev *Event) encode(buf []byte) []byte {
	if ev.ID != "" {
		buf = appendField(buf, "id", ev.ID)
	}
	if ev.Type != "" {
		buf = appendField(buf, "event", ev.Type)
	}
	if ev.Retry != nil {
		buf = append(buf, "retry: "...)
		buf = strconv.AppendInt(buf, ev.Retry.Milliseconds(), 10)
		buf = append(buf, '\n')
	}
	data := ev.Data
	for {
		i := strings.IndexAny(data, "\r\n")
		if i < 0 {
			buf = appendField(buf, "data", data)
			break
		}
		buf = appendField(buf, "data", data[:i])
		if data[i] == '\r' && i+1 < len(data) && data[i+1] == '\n' {
			i++
		}
		data = data[i+1:]
	}
	return append(buf, '\n')
}

// appendField writes "name: value\n". The space after the colon is the one
// a parser strips, so a value that starts with a space keeps it.
func appendField(buf []byte, name, value string) []byte {
	buf = append(buf, name...)
	buf = append(buf, ": "...)
	buf = append(buf, value...)
	return append(buf, '\n')
}

// encodedSize is an upper bound of len(ev.encode(nil)), used to allocate
// the wire form once.
func (ev *Event) encodedSize() int {
	lines := 1 + strings.Count(ev.Data, "\n") + strings.Count(ev.Data, "\r")
	return len(ev.ID) + len(ev.Type) + len(ev.Data) + 40 + lines*len("data: \n")
}

// errNoEvents is returned for a batch with nothing in it.
var errNoEvents = errors.New("no events to publish")
