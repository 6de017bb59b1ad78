//go:build linux

package ssebroadcast

// Half-open peers for real: clients in a network namespace of their own,
// joined to the host by veth pairs, that vanish without a FIN or an RST,
// as a phone that loses its network does. The server, on the host, sends
// into the void and hears nothing back.

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// requireNetnsEnv, when set to 1, makes the tests that need a network
// namespace fail where they would skip: CI sets it, so that they never
// skip there unseen.
const requireNetnsEnv = "SSEBROADCAST_REQUIRE_NETNS"

// netnsSeq tells apart the namespaces of one test process.
var netnsSeq atomic.Uint32

// netns is a network namespace joined to the host by veth pairs, one per
// peer, each on a /30 of its own.
type netns struct {
	t     *testing.T
	name  string
	peers []*vethPeer
}

// vethPeer is one veth pair: the host's end and address, and the end in
// the namespace with its address.
type vethPeer struct {
	ns                 *netns
	hostLink, peerLink string
	hostIP, peerIP     string
}

// newNetns makes a namespace with n veth pairs to the host, or skips the
// test where the machine does not let it (no ip command, no root). The
// namespace and the pairs are removed when the test ends, however it ends.
func newNetns(t *testing.T, n int) *netns {
	t.Helper()
	if _, err := exec.LookPath("ip"); err != nil {
		skipOrFail(t, "needs the ip command (Debian: apt-get install iproute2; test.sh installs it when run as root): %v", err)
	}
	if os.Geteuid() != 0 {
		skipOrFail(t, "needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN) to make a network namespace and veth pairs")
	}
	pid, seq := os.Getpid(), netnsSeq.Add(1)
	ns := &netns{t: t, name: fmt.Sprintf("sse-halfopen-%d-%d", pid, seq)}
	if out, err := exec.Command("ip", "netns", "add", ns.name).CombinedOutput(); err != nil {
		skipOrFail(t, "cannot make a network namespace (needs CAP_NET_ADMIN and CAP_SYS_ADMIN): ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() {
		// Deleting one end of a pair deletes the other; the namespace
		// itself goes once its last socket is closed.
		for _, p := range ns.peers {
			_ = exec.Command("ip", "link", "del", p.hostLink).Run()
		}
		if out, err := exec.Command("ip", "netns", "del", ns.name).CombinedOutput(); err != nil {
			t.Errorf("removing network namespace %s: %v: %s", ns.name, err, out)
		}
	})
	ns.ip("link", "set", "lo", "up")
	for i := range n {
		// 10.213.0.0/16, seldom anyone's: the third byte from the process,
		// the fourth from the namespace and the pair, so that test
		// processes running at once do not route over each other.
		base := (int(seq)*n + i) % 64 * 4
		p := &vethPeer{
			ns:       ns,
			hostLink: fmt.Sprintf("sh%dn%dh%d", pid, seq, i),
			peerLink: fmt.Sprintf("sh%dn%dp%d", pid, seq, i),
			hostIP:   fmt.Sprintf("10.213.%d.%d", pid%256, base+1),
			peerIP:   fmt.Sprintf("10.213.%d.%d", pid%256, base+2),
		}
		ns.peers = append(ns.peers, p)
		if out, err := exec.Command("ip", "link", "add", p.hostLink, "type", "veth", "peer", "name", p.peerLink, "netns", ns.name).CombinedOutput(); err != nil {
			skipOrFail(t, "cannot make a veth pair (needs CAP_NET_ADMIN and the veth driver): ip link add: %v: %s", err, out)
		}
		runIP(t, "addr", "add", p.hostIP+"/30", "dev", p.hostLink)
		runIP(t, "link", "set", p.hostLink, "up")
		ns.ip("addr", "add", p.peerIP+"/30", "dev", p.peerLink)
		ns.ip("link", "set", p.peerLink, "up")
	}
	return ns
}

// skipOrFail skips the test, or fails it where the environment says the
// tests must run.
func skipOrFail(t *testing.T, format string, args ...any) {
	t.Helper()
	if os.Getenv(requireNetnsEnv) == "1" {
		t.Fatalf(format+" ("+requireNetnsEnv+"=1)", args...)
	}
	t.Skipf(format, args...)
}

// runIP runs ip with args on the host.
func runIP(t *testing.T, args ...string) {
	t.Helper()
	out, err := exec.Command("ip", args...).CombinedOutput()
	require.NoError(t, err, "ip %s: %s", strings.Join(args, " "), out)
}

// ip runs ip with args in the namespace.
func (ns *netns) ip(args ...string) {
	ns.t.Helper()
	runIP(ns.t, append([]string{"-n", ns.name}, args...)...)
}

// client returns an HTTP client whose connections are the peer's: made in
// the namespace, to the host's end of the pair.
func (p *vethPeer) client() *http.Client {
	return &http.Client{Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
			return p.ns.dial(ctx, addr)
		},
	}}
}

// url is the address of path on the test server, as the peer reaches it:
// Caddy listens on every address of the host, the pair's included.
func (p *vethPeer) url(ts *testServer, path string) string {
	_, port, err := net.SplitHostPort(ts.http)
	require.NoError(p.ns.t, err)
	return "http://" + net.JoinHostPort(p.hostIP, port) + path
}

// vanish makes the peer go without a word: the namespace forgets the
// peer's address, so that what the host sends still leaves it and is
// dropped on arrival, unanswered (no FIN, no RST, not even an ICMP error:
// the namespace forwards nothing, and says nothing about it), and the peer
// can send nothing back. That is what a server sees of a client whose
// network is gone.
func (p *vethPeer) vanish() {
	p.ns.ip("addr", "del", p.peerIP+"/30", "dev", p.peerLink)
}

// unplug takes the peer's end of the pair down: the host's end loses its
// carrier, and the host drops what it would send to the peer before it
// leaves, as a server whose own link to the client is down does.
func (p *vethPeer) unplug() {
	p.ns.ip("link", "set", p.peerLink, "down")
}

// dial connects to addr from inside the namespace. A socket lives in the
// namespace of the thread that made it, whichever thread uses it later, so
// it is made on a thread of its own that joins the namespace and is never
// given back: once the goroutine ends, still locked, the runtime ends the
// thread instead of handing it to other goroutines.
func (ns *netns) dial(ctx context.Context, addr string) (net.Conn, error) {
	type dialed struct {
		conn net.Conn
		err  error
	}
	done := make(chan dialed, 1)
	go func() {
		runtime.LockOSThread()
		fd, err := unix.Open("/run/netns/"+ns.name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			done <- dialed{err: fmt.Errorf("opening network namespace: %w", err)}
			return
		}
		defer unix.Close(fd)
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			done <- dialed{err: fmt.Errorf("joining network namespace: %w", err)}
			return
		}
		// One address: the dial stays on this goroutine. No TCP
		// keep-alive from the client, which, vanished, sends nothing.
		d := net.Dialer{KeepAlive: -1}
		conn, err := d.DialContext(ctx, "tcp", addr)
		done <- dialed{conn, err}
	}()
	r := <-done
	return r.conn, r.err
}

// awaitDisconnects waits until the server has dropped n streams for their
// write timeout and holds clients, and returns how long that took from
// since; it fails once bound has passed.
func awaitDisconnects(t *testing.T, ts *testServer, since time.Time, bound time.Duration, n uint64, clients int) time.Duration {
	t.Helper()
	for {
		st := ts.stats()
		if st.Disconnects.WriteTimeout == n && st.Clients == clients {
			return time.Since(since)
		}
		if time.Since(since) > bound {
			require.FailNowf(t, "the vanished peer's stream is still open",
				"%s after it vanished (bound %s): stats %+v", time.Since(since).Round(time.Millisecond), bound, st)
		}
		time.Sleep(20 * time.Millisecond) // polling the admin API, not synchronisation
	}
}

// slack is what a bound on noticing a vanished peer allows above the
// timeouts: the kernel's retransmission and probe timers, which fire on
// their own schedule (a retransmission timeout of at least 200 ms, probes
// half a second apart when nothing could be sent), and the race detector.
const slack = 1500 * time.Millisecond

// A client that vanishes (gone without FIN or RST) is disconnected, and
// counted under write_timeout, within write_timeout and a keep-alive
// interval: the keep-alive goes unacknowledged, and the kernel gives up on
// the connection after write_timeout, where it would otherwise retransmit
// for some fifteen minutes. A healthy client on the same network, quiet
// but for keep-alives for several write timeouts, keeps its stream.
func TestAPeerThatVanishesIsDisconnectedWithinWriteTimeoutAndAKeepAlive(t *testing.T) {
	const writeTimeout, keepAlive = time.Second, 500 * time.Millisecond
	for _, how := range []struct {
		name   string
		vanish func(*vethPeer)
	}{
		{"its packets vanish on the way", (*vethPeer).vanish},
		{"its link goes down", (*vethPeer).unplug},
	} {
		t.Run(how.name, func(t *testing.T) {
			ns := newNetns(t, 2)
			ts := startCaddy(t, fmt.Sprintf(`{
	{GLOBAL}
}
:{HTTP} {
	sse_broadcast halfopen {
		write_timeout %s
		keepalive %s
	}
}`, writeTimeout, keepAlive))
			gone, healthy := ns.peers[0], ns.peers[1]
			goneStream := openStream(t, gone.client(), gone.url(ts, "/"))
			healthyStream := openStream(t, healthy.client(), healthy.url(ts, "/"))
			opened := time.Now()
			require.Eventually(t, func() bool { return ts.stats().Clients == 2 }, awaitTimeout, 5*time.Millisecond)
			goneStream.raw.awaitContains(t, keepAliveComment)

			how.vanish(gone)
			vanished := time.Now()
			bound := writeTimeout + keepAlive + slack
			took := awaitDisconnects(t, ts, vanished, bound, 1, 1)
			t.Logf("vanished peer disconnected %s after it vanished (write_timeout %s, keepalive %s)",
				took.Round(time.Millisecond), writeTimeout, keepAlive)

			// The healthy client has heard nothing but keep-alives for
			// more than twice the write timeout, and still has its stream.
			time.Sleep(time.Until(opened.Add(3 * writeTimeout)))
			st := ts.stats()
			assert.Equal(t, 1, st.Clients, "the healthy client keeps its stream")
			assert.Equal(t, uint64(1), st.Disconnects.WriteTimeout, "only the vanished peer is disconnected")
			assert.GreaterOrEqual(t, strings.Count(healthyStream.raw.String(), keepAliveComment), 4,
				"the healthy client hears a keep-alive every %s", keepAlive)
			res := ts.mustBroadcast(`{"channel":"halfopen","data":"still here"}`)
			ev := healthyStream.next()
			assert.Equal(t, "still here", ev.Data)
			assert.Equal(t, res.ID, ev.LastEventID)
		})
	}
}

// With keep-alives off, a stream with nothing to send sends nothing that
// could go unacknowledged: its vanished peer is noticed at the next
// event's write, within write_timeout of it.
func TestWithKeepAlivesOffAVanishedPeerIsNoticedAtTheNextEvent(t *testing.T) {
	const writeTimeout = time.Second
	ns := newNetns(t, 1)
	ts := startCaddy(t, fmt.Sprintf(`{
	{GLOBAL}
}
:{HTTP} {
	sse_broadcast halfopen {
		write_timeout %s
		keepalive off
	}
}`, writeTimeout))
	gone := ns.peers[0]
	openStream(t, gone.client(), gone.url(ts, "/"))
	require.Eventually(t, func() bool { return ts.stats().Clients == 1 }, awaitTimeout, 5*time.Millisecond)

	gone.vanish()
	// Quiet for twice the write timeout: nothing was sent, nothing is
	// missed, and Caddy's TCP keep-alive waits 15 s before its first probe.
	time.Sleep(2 * writeTimeout)
	require.Equal(t, 1, ts.stats().Clients, "a quiet stream of a vanished peer is not noticed before it writes")

	ts.mustBroadcast(`{"channel":"halfopen","data":"into the void"}`)
	published := time.Now()
	took := awaitDisconnects(t, ts, published, writeTimeout+slack, 1, 0)
	t.Logf("vanished peer disconnected %s after the next event (write_timeout %s)", took.Round(time.Millisecond), writeTimeout)
}

// With keep-alives off, Caddy's TCP keep-alive probes are what goes
// unacknowledged on a quiet stream: its vanished peer is noticed at the
// first probe that finds write_timeout passed since the peer was last
// heard, not after keepalive_count (9) unanswered probes.
func TestCaddysTCPKeepAliveNoticesTheVanishedPeerOfAQuietStream(t *testing.T) {
	// The kernel counts TCP keep-alive times in whole seconds.
	const writeTimeout, probeIdle, probeInterval = time.Second, time.Second, time.Second
	ns := newNetns(t, 1)
	ts := startCaddy(t, fmt.Sprintf(`{
	{GLOBAL}
	servers {
		keepalive_idle %s
		keepalive_interval %s
	}
}
:{HTTP} {
	sse_broadcast halfopen {
		write_timeout %s
		keepalive off
	}
}`, probeIdle, probeInterval, writeTimeout))
	gone := ns.peers[0]
	openStream(t, gone.client(), gone.url(ts, "/"))
	require.Eventually(t, func() bool { return ts.stats().Clients == 1 }, awaitTimeout, 5*time.Millisecond)

	gone.vanish()
	vanished := time.Now()
	// The first probe goes after probeIdle of silence, the next one is
	// due probeInterval later and finds write_timeout passed: the kernel
	// gives up there, where it would otherwise send 8 more probes.
	took := awaitDisconnects(t, ts, vanished, probeIdle+probeInterval+slack, 1, 0)
	t.Logf("quiet vanished peer disconnected %s after it vanished (write_timeout %s, TCP keep-alive idle %s, interval %s)",
		took.Round(time.Millisecond), writeTimeout, probeIdle, probeInterval)
}
