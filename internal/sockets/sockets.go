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
	"bufio"
	"bytes"
	"fmt"
	"net"
	"os"
	"strconv"
	"testing"
	"time"
)

// procTables are the kernel's tables of this network namespace's TCP
// sockets, one line per socket after a header.
var procTables = []string{"/proc/net/tcp", "/proc/net/tcp6"}

// tcpListen is the state column's value for a listening socket.
const tcpListen = "0A"

// Listening returns how many TCP sockets listen on port in this network
// namespace. known is false where the system does not say (no Linux /proc),
// and the caller has nothing to wait for.
func Listening(port int) (n int, known bool, err error) {
	for _, table := range procTables {
		data, err := os.ReadFile(table)
		if os.IsNotExist(err) {
			continue
		}
		if err != nil {
			return 0, false, fmt.Errorf("reading the socket table: %w", err)
		}
		known = true
		count, err := countListening(data, port)
		if err != nil {
			return 0, false, fmt.Errorf("%s: %w", table, err)
		}
		n += count
	}
	return n, known, nil
}

// countListening counts the listening sockets on port in one table, whose
// lines read "sl local_address rem_address st ...", local_address being
// the address and port in hex, as "0100007F:1F90".
func countListening(table []byte, port int) (int, error) {
	want := fmt.Sprintf(":%04X", port)
	n := 0
	lines := bufio.NewScanner(bytes.NewReader(table))
	lines.Scan() // the header
	for lines.Scan() {
		fields := bytes.Fields(lines.Bytes())
		if len(fields) < 4 {
			return 0, fmt.Errorf("malformed line %q", lines.Text())
		}
		if bytes.HasSuffix(fields[1], []byte(want)) && string(fields[3]) == tcpListen {
			n++
		}
	}
	return n, lines.Err()
}

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
