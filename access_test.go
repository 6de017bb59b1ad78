package ssebroadcast

// Tests of per-user channels behind Caddy's authentication: a client reads
// its own channel and no other.

import (
	"net/http"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/bcrypt"
)

// withBasicAuth sends every request with the given credentials.
type withBasicAuth struct {
	user, password string
	base           http.RoundTripper
}

func (a withBasicAuth) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.SetBasicAuth(a.user, a.password)
	return a.base.RoundTrip(r)
}

func basicAuthClient(user, password string) *http.Client {
	return &http.Client{Transport: withBasicAuth{user: user, password: password, base: plainClient.Transport}}
}

func TestAUserReadsOnlyTheirOwnChannelBehindBasicAuth(t *testing.T) {
	hash := func(password string) string {
		h, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.MinCost)
		require.NoError(t, err)
		return string(h)
	}
	ts := startCaddy(t, `{
	{GLOBAL}
}
:{HTTP} {
	route /events {
		basic_auth {
			alice `+hash("alice-secret")+`
			bob `+hash("bob-secret")+`
		}
		sse_broadcast user-{http.auth.user.id} {
			keepalive off
		}
	}
}`)
	alice := openStream(t, basicAuthClient("alice", "alice-secret"), ts.url("/events"))
	// Asking for another channel changes nothing: the channel is the
	// authenticated user's.
	bob := openStream(t, basicAuthClient("bob", "bob-secret"), ts.url("/events?channel=user-alice"))

	for _, tc := range []struct {
		name   string
		client *http.Client
	}{
		{"no credentials", plainClient},
		{"wrong password", basicAuthClient("alice", "bob-secret")},
		{"unknown user", basicAuthClient("mallory", "x")},
	} {
		s := dialStream(t, tc.client, ts.url("/events"))
		assert.Equal(t, http.StatusUnauthorized, s.resp.StatusCode, tc.name)
		s.close()
	}
	require.Equal(t, 2, ts.stats().Clients)

	res := ts.mustBroadcast(`{"channel":"user-alice","data":"for alice"}`)
	assert.Equal(t, 1, res.Clients, "only alice's stream is on her channel")
	ts.mustBroadcast(`{"channel":"user-bob","data":"for bob"}`)
	assert.Equal(t, "for alice", alice.next().Data)
	assert.Equal(t, "for bob", bob.next().Data, "bob's first event is his own, not alice's")
	assert.NotContains(t, bob.raw.String(), "for alice")
	assert.NotContains(t, alice.raw.String(), "for bob")
}
