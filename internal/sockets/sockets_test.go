//go:build linux

package sockets

import (
	"context"
	"errors"
	"net"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// listenReusable listens on addr with SO_REUSEPORT, as Caddy does.
func listenReusable(t *testing.T, addr string) net.Listener {
	t.Helper()
	config := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var sockErr error
		err := c.Control(func(fd uintptr) {
			sockErr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
		})
		return errors.Join(err, sockErr)
	}}
	ln, err := config.Listen(context.Background(), "tcp", addr)
	if err != nil {
		t.Fatalf("listening on %s: %v", addr, err)
	}
	return ln
}

func TestListeningCountsTheSocketsOfAPortAsTheyOpenAndClose(t *testing.T) {
	first := listenReusable(t, "127.0.0.1:0")
	defer first.Close()
	addr := first.Addr().String()
	port := first.Addr().(*net.TCPAddr).Port
	count := func() int {
		t.Helper()
		n, known, err := Listening(port)
		if err != nil {
			t.Fatal(err)
		}
		if !known {
			t.Skip("this system has no socket tables in /proc")
		}
		return n
	}
	if n := count(); n != 1 {
		t.Fatalf("one listener on %s: counted %d", addr, n)
	}
	// A connection is no listener.
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	second := listenReusable(t, addr)
	if n := count(); n != 2 {
		t.Fatalf("two listeners on %s, and a connection: counted %d", addr, n)
	}
	second.Close()
	AwaitSingleListener(t, 0, addr)
	if n := count(); n != 1 {
		t.Fatalf("after closing one of two listeners on %s: counted %d", addr, n)
	}
}
