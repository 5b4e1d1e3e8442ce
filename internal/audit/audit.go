// Package audit records what happened to a berth's content and who did it:
// pushes, deletions, tags moved, failed logins, refused requests, policy
// decisions, retention and replication, operator actions and reloads. An
// Event goes to every Sink: the audit log (one JSON line per event, to a
// file that log rotation may move, reopened on SIGHUP, or to stdout) and
// the webhook queues (internal/webhook).
//
// An event never carries a password or a token: it names the user, never
// the credentials, and its detail is a sentence berth wrote, not a header
// a client sent.
package audit

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sync"
	"time"
)

// The actions.
const (
	Push        = "push"         // a manifest pushed (by digest or with tags)
	Delete      = "delete"       // a manifest or a tag deleted by a client
	TagMoved    = "tag_moved"    // a tag pointed at another digest
	LoginFailed = "login_failed" // credentials refused
	Denied      = "denied"       // a known user asked for what it may not do
	Policy      = "policy"       // a policy refused or held a digest
	Retention   = "retention"    // a tag or manifest removed by a retention rule
	Replicate   = "replicate"    // a tag made or moved by replication
	Admin       = "admin"        // an operator action: gc, backup, approve, prefetch, replicate, retention
	Reload      = "reload"       // the configuration read again (SIGHUP)
)

// Event is one thing that happened. The JSON field names are the audit
// log's (documented in the README).
type Event struct {
	ID         string    `json:"id"` // unique: a receiver drops a duplicate by it
	Time       time.Time `json:"time"`
	Action     string    `json:"action"`
	User       string    `json:"user,omitempty"`   // the berth user, "anonymous", or "berth" for its own work
	Client     string    `json:"client,omitempty"` // the client's address
	Repository string    `json:"repository,omitempty"`
	Image      string    `json:"image,omitempty"`
	Tag        string    `json:"tag,omitempty"`
	Digest     string    `json:"digest,omitempty"`
	MediaType  string    `json:"media_type,omitempty"`
	Size       int64     `json:"size,omitempty"`
	Outcome    string    `json:"outcome"` // ok, refused, failed
	Detail     string    `json:"detail,omitempty"`
}

// Sink receives events. Record must not block for long and must not
// fail the action it records.
type Sink interface {
	Record(Event)
}

// Sinks records to each of its members.
type Sinks []Sink

func (s Sinks) Record(ev Event) {
	ev = Stamp(ev) // one ID for every sink
	for _, k := range s {
		k.Record(ev)
	}
}

// Stamp fills in the event's ID and time when they are empty.
func Stamp(ev Event) Event {
	if ev.ID == "" {
		var b [16]byte
		rand.Read(b[:])
		ev.ID = hex.EncodeToString(b[:])
	}
	if ev.Time.IsZero() {
		ev.Time = time.Now().UTC()
	}
	if ev.Outcome == "" {
		ev.Outcome = "ok"
	}
	return ev
}

// Log writes events as JSON lines to a file (or to stdout).
type Log struct {
	path string // "" or "-": stdout

	mu  sync.Mutex
	w   io.Writer
	f   *os.File
	err error // the last write error, reported once
	// OnError is told when a write fails (the disk is full): an audit
	// line lost is said out loud, in the server's log.
	OnError func(error)
}

// Open opens path for appending (made 0600), or stdout for "" or "-".
func Open(path string) (*Log, error) {
	l := &Log{path: path}
	if err := l.Reopen(); err != nil {
		return nil, err
	}
	return l, nil
}

// Reopen opens the file again at its path: after log rotation moved it,
// the next lines go to a new file there.
func (l *Log) Reopen() error {
	if l.path == "" || l.path == "-" {
		l.mu.Lock()
		l.w = os.Stdout
		l.mu.Unlock()
		return nil
	}
	f, err := os.OpenFile(l.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("audit log: %w", err)
	}
	l.mu.Lock()
	old := l.f
	l.f, l.w = f, f
	l.mu.Unlock()
	if old != nil {
		old.Close()
	}
	return nil
}

// Record writes ev as one line.
func (l *Log) Record(ev Event) {
	line, _ := json.Marshal(Stamp(ev))
	line = append(line, '\n')
	l.mu.Lock()
	_, err := l.w.Write(line)
	first := err != nil && l.err == nil
	l.err = err
	onErr := l.OnError
	l.mu.Unlock()
	if first && onErr != nil {
		onErr(err)
	}
}

// Close closes the file.
func (l *Log) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f != nil {
		return l.f.Close()
	}
	return nil
}
