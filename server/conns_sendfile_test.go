package server

import (
	"io"
	"net"
	"os"
	"testing"
)

// TestBoundedConnSendsFiles: net/http sends a response body with the
// connection's ReadFrom (sendfile for a file) only when the connection
// has one; a bounded connection passes it through to the TCP
// connection, and the bytes arrive whole.
func TestBoundedConnSendsFiles(t *testing.T) {
	b := newTestBerth(t, newFakeUpstream(t))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	bln := b.srv.LimitListener(ln, ConnLimits{}, true)
	defer bln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := bln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	c, ok := <-accepted
	if !ok {
		t.Fatal("no connection accepted")
	}
	defer c.Close()
	rf, ok := c.(io.ReaderFrom)
	if !ok {
		t.Fatalf("%T has no ReadFrom: net/http would copy every body through a buffer", c)
	}
	f := writeTempFile(t, 3<<20)
	done := make(chan int64, 1)
	go func() {
		n, _ := io.Copy(io.Discard, io.LimitReader(client, 3<<20))
		done <- n
	}()
	if n, err := rf.ReadFrom(io.LimitReader(f, 3<<20)); err != nil || n != 3<<20 {
		t.Fatalf("ReadFrom: %d bytes, %v", n, err)
	}
	if n := <-done; n != 3<<20 {
		t.Fatalf("the client got %d bytes of %d", n, 3<<20)
	}
}

// writeTempFile returns an open file of n bytes.
func writeTempFile(t *testing.T, n int) *os.File {
	t.Helper()
	f, err := os.CreateTemp(t.TempDir(), "blob")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	if _, err := f.Write(make([]byte, n)); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	return f
}
