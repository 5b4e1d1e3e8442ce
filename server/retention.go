package server

import "time"

// Retention is what a hosted repository keeps. A tag stays when it
// matches Keep or the repository's immutable tags, is among the
// KeepNewest newest tags of its image (by push time), or is younger than
// OlderThan; the others go. With neither KeepNewest nor OlderThan, tags
// stay. A manifest no tag points at and no index names goes
// UntaggedAfter its push (0: never); a referrer goes with its subject.
type Retention struct {
	KeepNewest    int
	Keep          []string
	OlderThan     time.Duration
	UntaggedAfter time.Duration
	Every         time.Duration // how often it runs (0: when asked)
}
