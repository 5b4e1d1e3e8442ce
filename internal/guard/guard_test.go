package guard

import (
	"bytes"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
)

func TestGoRecoversAndCounts(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	var n atomic.Int32
	done := make(chan struct{})
	Go(log, "test", func() { n.Add(1); close(done) }, func() {
		var s []int
		_ = s[3] // index out of range
	})
	<-done
	if n.Load() != 1 {
		t.Fatalf("count called %d times", n.Load())
	}
	out := buf.String()
	if !strings.Contains(out, "where=test") || !strings.Contains(out, "index out of range") || !strings.Contains(out, "guard_test.go") {
		t.Errorf("log line lacks where, panic or stack: %s", out)
	}
}

func TestNoPanicNoLog(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	func() {
		defer Recover(log, "quiet", func() { t.Error("counted without a panic") })
	}()
	if buf.Len() != 0 {
		t.Errorf("logged without a panic: %s", buf.String())
	}
}
