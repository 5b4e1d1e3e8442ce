// Package fetch is berth's download engine: how upstream blob downloads
// are shared and followed.
//
// A Group runs at most one Download per digest. Every request for that
// digest, the first and any later one, reads from the same growing temp
// file as bytes arrive (Download.Reader). The download runs on a detached
// context bounded by a timeout, so it finishes and is cached even when
// the client that started it hangs up; one that nobody reads any more
// (and that no eager pull keeps) is cancelled after a grace period.
//
// Readers never see the last byte of a blob before its digest is
// verified: a corrupt download ends every reader one byte short, so no
// client ever receives a complete wrong blob (WaitVerified waits for the
// check). A stream that breaks resumes from the last byte on disk; a big
// blob on a slow path comes as parallel byte ranges (ranges.go), judged
// by a Pace, the same judge the server's eager layers use. How many
// streams run adapts to what the path carries (streams.go), and the
// pieces are cut and moved between streams as they go (pieces.go): a
// stream that lags gives half its rest away, one that stalls loses all
// of it, and each asks for its next piece a round trip before its
// current one ends (ahead.go).
//
//	Group.Join(job) → *Download (leader or follower) → Release when done
//	Download.Wait / WaitDone / WaitVerified
//	Download.Reader → *Reader (io.ReadSeeker; Available/Advance/OpenFile for sendfile)
//
// Sending bytes to a client is the server's (server/stream.go).
package fetch
