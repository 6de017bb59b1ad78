package ssebroadcast

import (
	"regexp"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/caddyserver/caddy/v2"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func mustChannelPatterns(t testing.TB, patterns ...string) channelPatterns {
	t.Helper()
	cp, err := newChannelPatterns(patterns)
	require.NoError(t, err)
	return cp
}

func TestChannelPatternStarMatchesAnyRunOfCharactersAndNothingElseIsSpecial(t *testing.T) {
	tests := []struct {
		pattern, channel string
		want             bool
	}{
		{"news", "news", true},
		{"news", "news2", false},
		{"news", "New", false},
		{"news", "", false},
		{"*", "anything at all", true},
		{"*", "", true},
		{"topic-*", "topic-", true},
		{"topic-*", "topic-sports", true},
		{"topic-*", "topic", false},
		{"topic-*", "xtopic-a", false},
		{"*-feed", "a-feed", true},
		{"*-feed", "a-feed-2", false},
		{"a*b*c", "abc", true},
		{"a*b*c", "a-b-c", true},
		{"a*b*c", "acb", false},
		{"a*b*c", "abcbc", true},
		{"a*a", "a", false}, // the first and last part must not overlap
		{"a*a", "aa", true},
		{"ab*ba", "aba", false},
		{"**", "", true},
		{"a**b", "ab", true},
		{"*x*", "yyxyy", true},
		{"*a*b*", "abxa", true}, // a at its leftmost place leaves room for b
		{"*x*", "yyy", false},
		// ? and classes are literal characters: there is no such syntax.
		{"a?c", "abc", false},
		{"a?c", "a?c", true},
		{"[ab]", "a", false},
		{"[ab]", "[ab]", true},
		{"a.c", "abc", false},
		// A * in the pattern also matches a * in the channel, as any
		// character; nothing matches only a literal *.
		{"a*", "a*", true},
		{"user-*", "user-élan", true},
	}
	repl := caddy.NewReplacer()
	for _, tt := range tests {
		cp := mustChannelPatterns(t, tt.pattern)
		assert.Equal(t, tt.want, cp.resolve(repl).match(tt.channel), "pattern %q, channel %q", tt.pattern, tt.channel)
	}
}

func TestChannelPatternsAllowAChannelThatAnyOfThemMatches(t *testing.T) {
	cp := mustChannelPatterns(t, "news", "topic-*", "*-alerts")
	repl := caddy.NewReplacer()
	for _, channel := range []string{"news", "topic-a", "fire-alerts"} {
		assert.True(t, cp.resolve(repl).match(channel), channel)
	}
	for _, channel := range []string{"sports", "topic", "alerts", "default"} {
		assert.False(t, cp.resolve(repl).match(channel), channel)
	}
}

func TestNoChannelPatternsAllowNoChannel(t *testing.T) {
	repl := caddy.NewReplacer()
	assert.False(t, channelPatterns{}.resolve(repl).match("default"))
	assert.False(t, channelPatterns{}.resolve(repl).match("default"))
	assert.False(t, mustChannelPatterns(t).resolve(repl).match("default"))
}

func TestChannelPatternPlaceholdersAreResolvedPerRequest(t *testing.T) {
	cp := mustChannelPatterns(t, "user-{http.auth.user.id}", "team-{http.auth.user.team}-*")
	alice := caddy.NewReplacer()
	alice.Set("http.auth.user.id", "alice")
	alice.Set("http.auth.user.team", "red")
	assert.True(t, cp.resolve(alice).match("user-alice"))
	assert.True(t, cp.resolve(alice).match("team-red-chat"))
	assert.False(t, cp.resolve(alice).match("user-bob"))
	assert.False(t, cp.resolve(alice).match("team-blue-chat"))
	resolved := cp.resolve(alice)
	assert.True(t, resolved.match("user-alice"))
	assert.False(t, resolved.match("user-bob"))

	bob := caddy.NewReplacer()
	bob.Set("http.auth.user.id", "bob")
	assert.True(t, cp.resolve(bob).match("user-bob"))
	assert.False(t, cp.resolve(bob).match("user-alice"))
}

func TestChannelPatternWithAnUnknownOrEmptyPlaceholderMatchesNothing(t *testing.T) {
	cp := mustChannelPatterns(t, "user-{http.auth.user.id}", "*{http.auth.user.id}", "{no.such.placeholder}*")
	anonymous := caddy.NewReplacer()
	anonymous.Set("http.auth.user.id", "")
	for _, channel := range []string{"user-", "user-alice", "", "anything", "{no.such.placeholder}"} {
		assert.False(t, cp.resolve(anonymous).match(channel), channel)
		assert.False(t, cp.resolve(anonymous).match(channel), channel)
	}
	// Unset is as unknown as empty.
	assert.False(t, cp.resolve(caddy.NewReplacer()).match("user-"))
	// Only the pattern that fails is left out.
	mixed := mustChannelPatterns(t, "user-{http.auth.user.id}", "news")
	assert.True(t, mixed.resolve(anonymous).match("news"))
	assert.True(t, mixed.resolve(anonymous).match("news"))
}

// A placeholder's value comes from the request or its identity: it names
// one channel, and must not widen the pattern.
func TestChannelPatternPlaceholderValueIsMatchedAsItIs(t *testing.T) {
	cp := mustChannelPatterns(t, "user-{http.auth.user.id}")
	repl := caddy.NewReplacer()
	repl.Set("http.auth.user.id", "*")
	assert.True(t, cp.resolve(repl).match("user-*"))
	assert.False(t, cp.resolve(repl).match("user-alice"))
	assert.False(t, cp.resolve(repl).match("user-alice"))
}

func TestChannelPatternsThatCouldNeverMatchAsMeantAreRefused(t *testing.T) {
	for pattern, message := range map[string]string{
		"":                           "must not be empty",
		"a\nb":                       "line break",
		"a\rb":                       "line break",
		"a\xffb":                     "valid UTF-8",
		"{http.request.header.X-*}":  "inside a placeholder's braces",
		"user-{http.auth.*.id}-feed": "inside a placeholder's braces",
	} {
		_, err := newChannelPatterns([]string{"news", pattern})
		if assert.Error(t, err, "pattern %q", pattern) {
			assert.Contains(t, err.Error(), message, "pattern %q", pattern)
			assert.Contains(t, err.Error(), `allow pattern "`, "pattern %q", pattern)
		}
	}
	// Stars beside placeholders, and escaped braces, are fine.
	for _, pattern := range []string{"*{http.auth.user.id}*", `a\{*\}`, "}*{"} {
		_, err := newChannelPatterns([]string{pattern})
		assert.NoError(t, err, "pattern %q", pattern)
	}
}

func TestChannelPatternMatchingAllocatesNothingWithoutPlaceholders(t *testing.T) {
	cp := mustChannelPatterns(t, "news", "topic-*", "a*b*c", "*")
	repl := caddy.NewReplacer()
	channel := strings.Repeat("x", 100) + "-feed"
	allocs := testing.AllocsPerRun(100, func() {
		cp.resolve(repl).match(channel)
		cp.resolve(repl).match(channel)
	})
	assert.Zero(t, allocs)
}

// matchesLikeGlobRegexp is the reference: the pattern as a regular
// expression in which every character but * is quoted, and * is .*.
func matchesLikeGlobRegexp(pattern, channel string) bool {
	parts := strings.Split(pattern, "*")
	for i, part := range parts {
		parts[i] = regexp.QuoteMeta(part)
	}
	re := regexp.MustCompile(`^(?s:` + strings.Join(parts, ".*") + `)$`)
	return re.MatchString(channel)
}

func FuzzChannelPatternMatchesLikeItsReference(f *testing.F) {
	f.Add("topic-*", "topic-news")
	f.Add("a*b*c", "abcbc")
	f.Add("a*a", "a")
	f.Add("*x*y*", "xyxyx")
	f.Add("**", "")
	f.Add(`.+?[a]\d`, `.+?[a]\d`)
	f.Add("é*ü", "é世界ü")
	f.Add("a*\n", "ab\n")
	f.Fuzz(func(t *testing.T, pattern, channel string) {
		if strings.ContainsAny(pattern, "{}") || !utf8.ValidString(channel) {
			// Braces are placeholders, which the reference does not know;
			// regexp reads an invalid byte as U+FFFD, and no channel has one.
			return
		}
		cp, err := newChannelPatterns([]string{pattern})
		if err != nil {
			// Refused patterns are those no channel could match.
			require.True(t, pattern == "" || strings.ContainsAny(pattern, "\r\n") || !utf8.ValidString(pattern),
				"pattern %q refused: %v", pattern, err)
			return
		}
		want := matchesLikeGlobRegexp(pattern, channel)
		repl := caddy.NewReplacer()
		require.Equal(t, want, cp.resolve(repl).match(channel), "pattern %q, channel %q", pattern, channel)
		require.Equal(t, want, cp.resolve(repl).match(channel), "resolved pattern %q, channel %q", pattern, channel)
	})
}
