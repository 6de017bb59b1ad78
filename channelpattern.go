package ssebroadcast

import (
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/caddyserver/caddy/v2"
)

// channelPatterns is a route's allow list: glob patterns of channel names,
// as the allow option gives them. A channel is allowed if any pattern
// matches it.
//
// In a pattern, * matches any run of characters, none included; every other
// character matches itself. There is no ?, no character class, and no way
// to write a literal * (no channel that needs one can be allowed by a
// pattern narrower than the * around it). A pattern may use Caddy
// placeholders, e.g. "user-{http.auth.user.id}", resolved per request: a
// placeholder's value is matched as it is, so a * in it matches only a *,
// and a placeholder that is unknown or empty makes its pattern match
// nothing, never everything.
//
// The zero value matches no channel.
type channelPatterns struct {
	patterns []channelPattern
	// literal holds every pattern's parts when no pattern has a
	// placeholder: what resolve returns for every request, shared.
	literal resolvedPatterns
}

// channelPattern is one pattern, split at its stars.
type channelPattern struct {
	parts []string
	// placeholders is set if some part holds a '{' or '}' for the
	// replacer to resolve (or to unescape).
	placeholders bool
}

// resolvedPatterns are a request's patterns, placeholders resolved: each
// the parts between its stars.
type resolvedPatterns [][]string

// newChannelPatterns parses the patterns of an allow list.
func newChannelPatterns(patterns []string) (channelPatterns, error) {
	var cp channelPatterns
	anyPlaceholders := false
	for _, p := range patterns {
		pattern, err := parseChannelPattern(p)
		if err != nil {
			return channelPatterns{}, fmt.Errorf("allow pattern %q: %w", p, err)
		}
		cp.patterns = append(cp.patterns, pattern)
		anyPlaceholders = anyPlaceholders || pattern.placeholders
	}
	if !anyPlaceholders {
		cp.literal = make(resolvedPatterns, len(cp.patterns))
		for i, pattern := range cp.patterns {
			cp.literal[i] = pattern.parts
		}
	}
	return cp, nil
}

// parseChannelPattern splits a pattern at its stars. The split comes before
// placeholders are resolved, so that a value is never read as a pattern;
// a star inside a placeholder's braces would be split with it, and is
// refused.
func parseChannelPattern(p string) (channelPattern, error) {
	if p == "" {
		return channelPattern{}, errors.New("a pattern must not be empty")
	}
	if strings.ContainsAny(p, "\r\n") {
		return channelPattern{}, errors.New("a pattern must not contain a line break (CR or LF): no channel has one")
	}
	if !utf8.ValidString(p) {
		return channelPattern{}, errors.New("a pattern must be valid UTF-8, as every channel is")
	}
	open := -1 // where the placeholder being read starts, if one is
	for i := 0; i < len(p); i++ {
		switch p[i] {
		case '{':
			if i == 0 || p[i-1] != '\\' {
				open = i
			}
		case '}':
			open = -1
		case '*':
			if open >= 0 && strings.IndexByte(p[i:], '}') >= 0 {
				return channelPattern{}, errors.New("a * must not stand inside a placeholder's braces")
			}
		}
	}
	return channelPattern{
		parts:        strings.Split(p, "*"),
		placeholders: strings.ContainsAny(p, "{}"),
	}, nil
}

// resolve returns the patterns with placeholders resolved by repl, for
// checking many channels of one request. A pattern whose placeholder is
// unknown or empty is left out. Without placeholders, it returns the
// same patterns for every request, and allocates nothing.
func (cp channelPatterns) resolve(repl *caddy.Replacer) resolvedPatterns {
	if cp.literal != nil || len(cp.patterns) == 0 {
		return cp.literal
	}
	resolved := make(resolvedPatterns, 0, len(cp.patterns))
	for _, pattern := range cp.patterns {
		if parts, ok := pattern.resolve(repl); ok {
			resolved = append(resolved, parts)
		}
	}
	return resolved
}

// resolve returns the pattern's parts with placeholders resolved, or false
// if one of them is unknown or empty.
func (p channelPattern) resolve(repl *caddy.Replacer) ([]string, bool) {
	if !p.placeholders {
		return p.parts, true
	}
	parts := make([]string, len(p.parts))
	for i, part := range p.parts {
		// A placeholder that resolves to nothing must not leave a
		// pattern wider than meant: "user-" for whom no auth named.
		value, err := repl.ReplaceOrErr(part, true, true)
		if err != nil {
			return nil, false
		}
		parts[i] = value
	}
	return parts, true
}

// match reports whether channel matches any of the patterns.
func (rp resolvedPatterns) match(channel string) bool {
	for _, parts := range rp {
		if matchParts(parts, channel) {
			return true
		}
	}
	return false
}

// matchParts reports whether name matches the pattern whose parts, between
// its stars, are parts: it starts with the first part, ends with the last,
// and holds the others in order between them. Taking each middle part at
// its leftmost place leaves the most room for the rest, so no choice is
// ever undone: the match takes time linear in the name for each part, and
// no allocation.
func matchParts(parts []string, name string) bool {
	if len(parts) == 1 {
		return name == parts[0]
	}
	first, last := parts[0], parts[len(parts)-1]
	if len(name) < len(first)+len(last) || !strings.HasPrefix(name, first) || !strings.HasSuffix(name, last) {
		return false
	}
	name = name[len(first) : len(name)-len(last)]
	for _, part := range parts[1 : len(parts)-1] {
		i := strings.Index(name, part)
		if i < 0 {
			return false
		}
		name = name[i+len(part):]
	}
	return true
}
