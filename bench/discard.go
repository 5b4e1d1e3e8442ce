package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// discardLoad GETs url over conns keep-alive connections for dur and
// throws each body away inside the kernel (recv with MSG_TRUNC, which
// Linux TCP honours by dropping the bytes without copying them out).
// On loopback the client otherwise pays for copying every byte out of
// the socket, and for a server that uses sendfile that copy is the one
// that first touches the file's pages (cold in the CPU cache), while a
// server that copies in user space hands the client cache-hot bytes: a
// copying client measures where the copy lands, not the server. With
// the copy gone the client costs next to nothing and the figure is the
// server's (what a remote client on a real network sees, where the NIC
// does the copying). It returns body bytes per second.
func discardLoad(conns int, dur time.Duration, rawURL string) (float64, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return 0, err
	}
	req := fmt.Sprintf("GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: berth-bench\r\n\r\n", u.RequestURI(), u.Host)
	var total atomic.Int64
	deadline := time.Now().Add(dur)
	errc := make(chan error, conns)
	var wg sync.WaitGroup
	start := time.Now()
	for i := 0; i < conns; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := discardConn(u.Host, req, deadline, false, &total); err != nil {
				errc <- err
			}
		}()
	}
	wg.Wait()
	took := time.Since(start)
	close(errc)
	if err := <-errc; err != nil {
		return 0, err
	}
	return float64(total.Load()) / took.Seconds(), nil
}

// discardConn sends req over one connection again and again until
// deadline (once: one time), adding the body bytes it receives to total.
func discardConn(addr, req string, deadline time.Time, once bool, total *atomic.Int64) error {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(deadline.Add(30 * time.Second))
	raw, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		return err
	}
	scratch := make([]byte, 4<<20) // never written: MSG_TRUNC only uses its length
	for time.Now().Before(deadline) {
		if _, err := io.WriteString(c, req); err != nil {
			return err
		}
		// The header is small and arrives first; read it byte by byte so
		// that no body byte lands in a user-space buffer.
		br := bufio.NewReaderSize(oneByteReader{c}, 16)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			return err
		}
		if resp.StatusCode != http.StatusOK || resp.ContentLength < 0 {
			return fmt.Errorf("GET: %s (length %d)", resp.Status, resp.ContentLength)
		}
		left := resp.ContentLength - int64(br.Buffered())
		total.Add(int64(br.Buffered()))
		for left > 0 {
			want := scratch
			if int64(len(want)) > left {
				want = want[:left]
			}
			var n int
			var rerr error
			err := raw.Read(func(fd uintptr) bool {
				n, _, rerr = syscall.Recvfrom(int(fd), want, syscall.MSG_TRUNC|syscall.MSG_DONTWAIT)
				return !errors.Is(rerr, syscall.EAGAIN)
			})
			if err == nil {
				err = rerr
			}
			if err != nil {
				return err
			}
			if n == 0 {
				return io.ErrUnexpectedEOF
			}
			left -= int64(n)
			total.Add(int64(n))
			if !time.Now().Before(deadline) {
				return nil // count what arrived, as wrk does
			}
		}
		if once {
			return nil
		}
	}
	return nil
}

// discardOnce has n clients GET url once each at the same time, dropping
// the bodies in the kernel, and returns the wall time and the body bytes
// received: clients that cost next to nothing, as if each were on a
// machine of its own.
func discardOnce(n int, rawURL string) (time.Duration, int64, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return 0, 0, err
	}
	req := fmt.Sprintf("GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: berth-bench\r\n\r\n", u.RequestURI(), u.Host)
	var total atomic.Int64
	deadline := time.Now().Add(5 * time.Minute)
	errc := make(chan error, n)
	var wg sync.WaitGroup
	start := time.Now()
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := discardConn(u.Host, req, deadline, true, &total); err != nil {
				errc <- err
			}
		}()
	}
	stop := make(chan struct{})
	if *wanLog && n > 1 {
		go logProgress(n, start, &total, stop)
	}
	wg.Wait()
	close(stop)
	close(errc)
	return time.Since(start), total.Load(), <-errc
}

// oneByteReader reads at most one byte per call.
type oneByteReader struct{ r io.Reader }

func (o oneByteReader) Read(p []byte) (int, error) {
	if len(p) > 1 {
		p = p[:1]
	}
	return o.r.Read(p)
}

// logProgress logs, every 100 ms until stop, how far n clients have got
// on average (with -wan-log): when they wait for the download and when
// for the server.
func logProgress(n int, start time.Time, total *atomic.Int64, stop chan struct{}) {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			log.Printf("%d clients at %.2fs: %.1f MiB each on average", n, time.Since(start).Seconds(), float64(total.Load())/float64(n)/(1<<20))
		}
	}
}
