package ssebroadcast

import (
	"errors"
	"net"
	"os"
	"syscall"
	"time"
)

// hangupRegistration is a connection's place with the hang-up watcher;
// cancel ends it, and is safe to call more than once.
type hangupRegistration struct {
	cancel func()
}

// watchByReading is the hang-up watch for a connection without a socket
// the watcher can poll: a goroutine that reads until the client closes the
// connection, the kernel gives up on it, or end closes it. Bytes a client
// sends on an event stream mean nothing and are discarded.
func watchByReading(conn net.Conn, s *subscriber, onHangup func(*subscriber, dropReason)) hangupRegistration {
	go func() {
		var discard [512]byte
		for {
			_, err := conn.Read(discard[:])
			if errors.Is(err, os.ErrDeadlineExceeded) {
				// Not the client: Caddy arms a read deadline for a
				// request body as the handler returns.
				if conn.SetReadDeadline(time.Time{}) == nil {
					continue
				}
			}
			if err != nil {
				onHangup(s, hangupReason(err))
				return
			}
		}
	}()
	// Closing the connection ends the read.
	return hangupRegistration{cancel: func() {}}
}

// hangupReason says why a connection that failed with err ended: a peer
// that acknowledged nothing in time is a client that did not take a write
// in time, as one whose write stalls is; any other failure means the
// client left.
func hangupReason(err error) dropReason {
	if peerGaveNoAnswer(err) {
		return dropWriteTimeout
	}
	return dropClientLeft
}

// peerGaveNoAnswer reports whether err is the kernel giving up on a
// connection whose peer acknowledged nothing in time: data unacknowledged
// for the connection's user timeout, keep-alive probes unanswered, or
// retransmissions run out. The error is ETIMEDOUT, or the ICMP error the
// connection heard meanwhile, which alone never ends an established one.
func peerGaveNoAnswer(err error) bool {
	return errors.Is(err, syscall.ETIMEDOUT) || errors.Is(err, syscall.EHOSTUNREACH) ||
		errors.Is(err, syscall.ENETUNREACH) || errors.Is(err, syscall.EHOSTDOWN)
}

// socketOf returns the socket under conn, looking through wrappers such as
// *tls.Conn, or nil.
func socketOf(conn net.Conn) syscall.RawConn {
	for conn != nil {
		if sc, ok := conn.(syscall.Conn); ok {
			raw, err := sc.SyscallConn()
			if err != nil {
				return nil
			}
			return raw
		}
		wrapper, ok := conn.(interface{ NetConn() net.Conn })
		if !ok {
			return nil
		}
		conn = wrapper.NetConn()
	}
	return nil
}
