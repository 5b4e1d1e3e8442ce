package audit

import (
	"bufio"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
)

func lines(t *testing.T, path string) []Event {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []Event
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var ev Event
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			t.Fatalf("not a JSON line: %q", sc.Text())
		}
		out = append(out, ev)
	}
	return out
}

// Lines go to the file; after rotation moved it, Reopen starts a new
// one at the path; Sinks give every sink the same id.
func TestLogRotates(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.log")
	l, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var seen []Event
	sinks := Sinks{l, sinkFunc(func(ev Event) { seen = append(seen, ev) })}
	sinks.Record(Event{Action: Push, User: "alice", Repository: "internal", Image: "team/app", Tag: "v1", Digest: "sha256:00"})
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	sinks.Record(Event{Action: Delete, User: "bob"}) // still into the moved file
	if err := l.Reopen(); err != nil {
		t.Fatal(err)
	}
	sinks.Record(Event{Action: Reload})
	old, cur := lines(t, path+".1"), lines(t, path)
	if len(old) != 2 || len(cur) != 1 || old[0].Tag != "v1" || old[1].User != "bob" || cur[0].Action != Reload {
		t.Fatalf("rotated %+v, current %+v", old, cur)
	}
	if old[0].ID == "" || old[0].ID != seen[0].ID || old[0].ID == old[1].ID || old[0].Outcome != "ok" || old[0].Time.IsZero() {
		t.Errorf("ids, outcome, time: %+v / %+v", old[0], seen[0])
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v", fi.Mode())
	}
}

type sinkFunc func(Event)

func (f sinkFunc) Record(ev Event) { f(ev) }
