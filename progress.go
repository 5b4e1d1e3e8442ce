package main

import (
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"golang.org/x/term"
)

// progress reports bytes moved: a bar redrawn in place on a terminal, a
// line per object otherwise (as prefetch does).
type progress struct {
	out   io.Writer
	tty   bool
	label string
	start time.Time

	mu          sync.Mutex
	done, total int64
	drawn       time.Time
}

func newProgress(out io.Writer, label string, total int64) *progress {
	tty := false
	if f, ok := out.(*os.File); ok {
		tty = term.IsTerminal(int(f.Fd()))
	}
	return &progress{out: out, tty: tty, label: label, total: total, start: time.Now()}
}

// add counts n more bytes.
func (p *progress) add(n int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.done += n
	if p.tty && time.Since(p.drawn) > 100*time.Millisecond {
		p.drawn = time.Now()
		fmt.Fprintf(p.out, "\r%s", progressBar(p.label, p.done, p.total, time.Since(p.start)))
	}
}

// set replaces the counts (for sources that report totals).
func (p *progress) set(done, total int64) {
	p.mu.Lock()
	p.done, p.total = 0, total
	p.mu.Unlock()
	p.add(done)
}

// object notes a finished object (a log line when not on a terminal).
func (p *progress) object(what string, size int64) {
	if !p.tty {
		p.mu.Lock()
		fmt.Fprintf(p.out, "%s: %s (%s) %d/%d bytes\n", p.label, what, humanSize(size), p.done, p.total)
		p.mu.Unlock()
	}
}

func (p *progress) finish() {
	if p.tty {
		p.mu.Lock()
		fmt.Fprintf(p.out, "\r%s\n", progressBar(p.label, p.done, p.total, time.Since(p.start)))
		p.mu.Unlock()
	}
}

// countingReader feeds a progress while it is read.
type countingReader struct {
	io.ReadCloser
	p *progress
}

func (c *countingReader) Read(b []byte) (int, error) {
	n, err := c.ReadCloser.Read(b)
	c.p.add(int64(n))
	return n, err
}
