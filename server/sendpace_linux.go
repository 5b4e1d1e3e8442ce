package server

import "syscall"

// tcpNotsentLowat is TCP_NOTSENT_LOWAT from linux/tcp.h (not in package
// syscall).
const tcpNotsentLowat = 25

func setNotsentLowat(fd uintptr, n int) {
	syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, tcpNotsentLowat, n)
}
