package server

import (
	"context"
	"net"
	"syscall"
)

type connKey struct{}

// ConnContext records each connection in its requests' context, so that
// large blob responses can cork the socket while they sendfile (as nginx
// does with tcp_nopush): full segments instead of one per send. Use it as
// http.Server.ConnContext.
func ConnContext(ctx context.Context, c net.Conn) context.Context {
	return context.WithValue(ctx, connKey{}, c)
}

// corkBlobMin is the size from which a blob response is corked.
const corkBlobMin = 1 << 20

// cork sets TCP_CORK on the request's connection and returns the function
// that removes it (which sends what is queued). It does nothing for other
// connection types (TLS, tests).
func cork(ctx context.Context) (uncork func()) {
	tc, ok := ctx.Value(connKey{}).(*net.TCPConn)
	if !ok {
		return func() {}
	}
	raw, err := tc.SyscallConn()
	if err != nil {
		return func() {}
	}
	set := func(v int) {
		raw.Control(func(fd uintptr) { syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_CORK, v) })
	}
	set(1)
	return func() { set(0) }
}
