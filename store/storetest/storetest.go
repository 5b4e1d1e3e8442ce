// Package storetest opens stores for tests and checks, when each test
// ends, that the store is consistent: every index entry has a file of the
// right size and digest, every tag names a manifest, and tmp/ is empty.
package storetest

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/berth-registry/berth/store"
)

// Open opens a store in a fresh temp directory and registers a cleanup
// that closes it and fails the test on any inconsistency.
func Open(t testing.TB) *store.Store {
	t.Helper()
	return OpenDir(t, t.TempDir())
}

// OpenDir is Open on a given directory.
func OpenDir(t testing.TB, dir string) *store.Store {
	t.Helper()
	s, err := store.Open(dir, store.Options{Logger: slog.New(slog.DiscardHandler), FlushInterval: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { CheckAndClose(t, s) })
	return s
}

// CheckAndClose checks s (waiting a little for writes still under way to
// finish and their temp files to go) and closes it.
func CheckAndClose(t testing.TB, s *store.Store) {
	t.Helper()
	ctx := context.Background()
	var probs []store.Problem
	var err error
	for i := 0; i < 50; i++ {
		probs, err = s.Check(ctx, store.CheckOptions{Rehash: true, Orphans: true, Tmp: true})
		if err == nil && len(probs) == 0 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Errorf("store check: %v", err)
	}
	for _, p := range probs {
		t.Errorf("store inconsistent: %s", p)
	}
	if err := s.Close(); err != nil {
		t.Errorf("close store: %v", err)
	}
}
