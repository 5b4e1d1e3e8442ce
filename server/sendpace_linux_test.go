package server

import (
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"syscall"
	"testing"
)

// TestLimitUnsentSetsTheSocketOption: a handler on a TCP connection
// recorded by ConnContext ends up with TCP_NOTSENT_LOWAT set.
func TestLimitUnsentSetsTheSocketOption(t *testing.T) {
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		limitUnsent(r.Context())
		tc := r.Context().Value(connKey{}).(*net.TCPConn)
		raw, _ := tc.SyscallConn()
		var v int
		var err error
		raw.Control(func(fd uintptr) { v, err = syscall.GetsockoptInt(int(fd), syscall.IPPROTO_TCP, tcpNotsentLowat) })
		if err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		io.WriteString(w, strconv.Itoa(v))
	}))
	srv.Config.ConnContext = ConnContext
	srv.Start()
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != strconv.Itoa(unsentLimit) {
		t.Fatalf("TCP_NOTSENT_LOWAT = %s, want %d", body, unsentLimit)
	}
}
