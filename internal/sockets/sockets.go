// Package sockets tells tests how many sockets listen on a TCP port, so that
// they can wait out the moment of a Caddy reload when two do.
//
// On Linux, Caddy binds every config's listener with SO_REUSEPORT: a reload
// opens the new config's socket beside the old one, and the old one closes
// only once its server's shutdown begins, in a goroutine that may still be
// starting when the reload has returned. Meanwhile the kernel hands each new
// connection to one of the two sockets, and one queued on the old socket
// when it closes is reset (https://lwn.net/Articles/542629/). A browser
// reconnects after that; a test that connects once would fail for a reason
// that is neither its nor ours, so it waits until one socket is left.
package sockets

import (
	"net"
	"strconv"
	"testing"
	"time"
)

// AwaitSingleListener waits, up to timeout, until no more than one socket
// listens on the port of each of addrs ("host:port"), and fails t if one
// still has two. Where the system does not say, it returns at once.
func AwaitSingleListener(t testing.TB, timeout time.Duration, addrs ...string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for _, addr := range addrs {
		_, portText, err := net.SplitHostPort(addr)
		if err != nil {
			t.Fatalf("awaiting the listener of %q: %v", addr, err)
		}
		port, err := strconv.Atoi(portText)
		if err != nil {
			t.Fatalf("awaiting the listener of %q: port: %v", addr, err)
		}
		for {
			n, known, err := Listening(port)
			if err != nil {
				t.Fatalf("awaiting the listener of %q: %v", addr, err)
			}
			if !known || n <= 1 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d sockets still listen on %s %s after a reload", n, addr, timeout)
			}
			// The kernel's tables change with no event to wait on.
			time.Sleep(time.Millisecond)
		}
	}
}
