package shared

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"golang.org/x/sync/singleflight"
)

// TestFirstCallerLeaves: the caller whose context started the shared
// call hangs up; the call's own context is not cancelled with it, and the
// nine callers waiting on it get its result.
func TestFirstCallerLeaves(t *testing.T) {
	var g singleflight.Group
	started := make(chan struct{}, 1)
	release := make(chan struct{})
	ended := make(chan error, 10) // the ctx error f saw, nil when released
	f := func(ctx context.Context) (any, error) {
		select {
		case started <- struct{}{}:
		default:
		}
		select {
		case <-release:
			ended <- nil
			return "manifest", nil
		case <-ctx.Done():
			ended <- ctx.Err()
			return nil, ctx.Err()
		}
	}
	first, cancel := context.WithCancel(context.Background())
	firstErr := make(chan error, 1)
	go func() { _, err := Do(first, &g, "k", time.Minute, f); firstErr <- err }()
	<-started
	cancel()
	if err := <-firstErr; !errors.Is(err, context.Canceled) {
		t.Errorf("first caller: %v, want its own cancellation", err)
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
	close(release)
	wg.Wait()
	close(results)
	for v := range results {
		if v != "manifest" {
			t.Errorf("waiter got %v", v)
		}
	}
	close(ended)
	for err := range ended {
		if err != nil {
			t.Errorf("the shared call was cancelled with the first caller: %v", err)
		}
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
