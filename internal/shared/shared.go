// Package shared runs work that many requests wait on: once per key
// (singleflight), on a context detached from every caller's, so that the
// first caller hanging up does not fail the others.
package shared

import (
	"context"
	"time"

	"golang.org/x/sync/singleflight"
)

// Do runs f once for all concurrent callers of g with the same key, on a
// context detached from ctx (values kept, cancellation dropped) and
// bounded by timeout. Each caller stops waiting, with its ctx's error,
// when its own ctx ends; f goes on for the others.
func Do(ctx context.Context, g *singleflight.Group, key string, timeout time.Duration, f func(ctx context.Context) (any, error)) (any, error) {
	ch := g.DoChan(key, func() (any, error) {
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), timeout)
		defer cancel()
		return f(fctx)
	})
	select {
	case res := <-ch:
		return res.Val, res.Err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}
