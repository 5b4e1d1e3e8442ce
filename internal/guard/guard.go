// Package guard keeps a panic in one of berth's goroutines from ending
// the process: a panic anywhere but the main goroutine kills every
// connection of an edge cache, so each goroutine berth starts defers
// Recover first.
package guard

import (
	"fmt"
	"log/slog"
	"runtime/debug"
)

// Recover, deferred directly (defer guard.Recover(log, "name", count)),
// stops a panic, logs it once with its stack at ERROR and calls count (if
// not nil). It reports nothing when there was no panic.
func Recover(log *slog.Logger, where string, count func()) {
	v := recover()
	if v == nil {
		return
	}
	log.Error("panic recovered; the process goes on", "where", where, "panic", fmt.Sprint(v), "stack", string(debug.Stack()))
	if count != nil {
		count()
	}
}

// Go runs f in a new goroutine under Recover.
func Go(log *slog.Logger, where string, count func(), f func()) {
	go func() {
		defer Recover(log, where, count)
		f()
	}()
}
