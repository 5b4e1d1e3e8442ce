package shared

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sync/singleflight"
)

// TestFirstCallerLeaves: the caller whose context starts the shared call
// cancels; the other nine still get the result, and f ran once.
func TestFirstCallerLeaves(t *testing.T) {
	var g singleflight.Group
	var runs atomic.Int32
	release := make(chan struct{})
	f := func(ctx context.Context) (any, error) {
		runs.Add(1)
		select {
		case <-release:
			return "manifest", nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	first, cancel := context.WithCancel(context.Background())
	firstErr := make(chan error, 1)
	go func() { _, err := Do(first, &g, "k", time.Minute, f); firstErr <- err }()
	for runs.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	var wg sync.WaitGroup
	results := make(chan any, 9)
	for i := 0; i < 9; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			v, err := Do(context.Background(), &g, "k", time.Minute, f)
			if err != nil {
				t.Errorf("waiter: %v", err)
			}
			results <- v
		}()
	}
	cancel()
	if err := <-firstErr; !errors.Is(err, context.Canceled) {
		t.Errorf("first caller: %v, want its own cancellation", err)
	}
	close(release)
	wg.Wait()
	close(results)
	for v := range results {
		if v != "manifest" {
			t.Errorf("waiter got %v", v)
		}
	}
	if runs.Load() != 1 {
		t.Errorf("f ran %d times", runs.Load())
	}
}

func TestTimeoutBoundsTheSharedCall(t *testing.T) {
	var g singleflight.Group
	_, err := Do(context.Background(), &g, "k", 20*time.Millisecond, func(ctx context.Context) (any, error) {
		<-ctx.Done()
		return nil, ctx.Err()
	})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("err = %v", err)
	}
}
