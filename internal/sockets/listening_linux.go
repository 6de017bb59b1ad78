package sockets

import (
	"encoding/binary"
	"fmt"
	"syscall"

	"golang.org/x/sys/unix"
)

// Listening returns how many TCP sockets, IPv4 and IPv6, listen on port in
// this network namespace. It asks the kernel's socket diagnostics over
// netlink for listening sockets only, which walks the table of listeners
// alone; /proc/net/tcp walks every connection's bucket too, tens of
// milliseconds a read on a machine that has made many.
func Listening(port int) (n int, known bool, err error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return 0, false, fmt.Errorf("opening a socket diagnostics socket: %w", err)
	}
	defer unix.Close(fd)
	for seq, family := range []uint8{unix.AF_INET, unix.AF_INET6} {
		count, err := countListening(fd, family, uint32(seq+1), port)
		if err != nil {
			return 0, false, err
		}
		n += count
	}
	return n, true, nil
}

// Sizes and offsets of the kernel's structs (linux/inet_diag.h).
const (
	nlmsghdrLen     = 16 // struct nlmsghdr
	diagReqLen      = 56 // struct inet_diag_req_v2: family, protocol, ext, pad, states, inet_diag_sockid
	diagMsgSportOff = 4  // inet_diag_msg.id.idiag_sport, big-endian
	tcpListen       = 10 // TCP_LISTEN in the kernel's enum of TCP states
)

// countListening dumps the listening TCP sockets of one address family and
// counts those on port.
func countListening(fd int, family uint8, seq uint32, port int) (int, error) {
	req := make([]byte, nlmsghdrLen+diagReqLen)
	binary.NativeEndian.PutUint32(req[0:], uint32(len(req)))
	binary.NativeEndian.PutUint16(req[4:], unix.SOCK_DIAG_BY_FAMILY)
	binary.NativeEndian.PutUint16(req[6:], unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	binary.NativeEndian.PutUint32(req[8:], seq)
	body := req[nlmsghdrLen:]
	body[0] = family
	body[1] = unix.IPPROTO_TCP
	binary.NativeEndian.PutUint32(body[4:], 1<<tcpListen)
	if err := unix.Sendto(fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return 0, fmt.Errorf("asking for listening sockets: %w", err)
	}

	n := 0
	buf := make([]byte, 64<<10)
	for {
		size, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			return 0, fmt.Errorf("reading listening sockets: %w", err)
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:size])
		if err != nil {
			return 0, fmt.Errorf("reading listening sockets: %w", err)
		}
		for _, m := range msgs {
			if m.Header.Seq != seq {
				continue
			}
			switch m.Header.Type {
			case unix.NLMSG_DONE:
				return n, nil
			case unix.NLMSG_ERROR:
				if len(m.Data) >= 4 {
					if errno := int32(binary.NativeEndian.Uint32(m.Data)); errno != 0 {
						return 0, fmt.Errorf("listing listening sockets: %w", syscall.Errno(-errno))
					}
				}
				return n, nil
			}
			// The kernel sends listeners only (the request's states).
			if len(m.Data) < diagMsgSportOff+2 {
				return 0, fmt.Errorf("listing listening sockets: a reply of %d bytes", len(m.Data))
			}
			if int(binary.BigEndian.Uint16(m.Data[diagMsgSportOff:])) == port {
				n++
			}
		}
	}
}
