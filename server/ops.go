package server

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"github.com/berth-registry/berth/store"
)

func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 3*time.Second)
	defer cancel()
	status := map[string]string{}
	ready := true
	if err := s.ops.Ping(ctx); err != nil {
		status["store"] = err.Error()
		ready = false
	} else {
		status["store"] = "ok"
	}
	_, cached := s.ops.Stats()
	for _, rp := range s.order {
		if rp.asProxy() == nil || rp.Upstream == nil {
			continue
		}
		// What real requests (and at most one probe a minute) said:
		// a load balancer polling here sends nothing upstream.
		st := s.health(rp)
		v := "ok"
		switch {
		case !st.known:
			v = "not asked yet"
		case st.rejected:
			v = "credentials rejected: " + st.cause
		case !st.ok && cached == 0:
			v = "unreachable, nothing cached: " + st.cause
		case !st.ok:
			v = "unreachable for " + ago(time.Since(st.since)) + ", serving cache: " + st.cause
		}
		status["upstream "+rp.Name] = v
	}
	w.Header().Set("Content-Type", "application/json")
	if !ready {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	json.NewEncoder(w).Encode(status)
}

// adminGC runs a garbage collection now (berth gc asks a running server
// here, on the admin listener).
func (s *Server) adminGC(w http.ResponseWriter, r *http.Request) error {
	grace := s.opts.GCGrace
	if g := r.URL.Query().Get("grace"); g != "" {
		d, err := time.ParseDuration(g)
		if err != nil || d < 0 {
			return errf(codeRequestInvalid, "grace %q: want a duration such as 0s or 30m", truncate(g, 40))
		}
		grace = d
	}
	res, err := s.ops.GC(store.GCOptions{Grace: grace, DryRun: r.URL.Query().Get("dry_run") != ""})
	if err != nil {
		return fmt.Errorf("garbage collection: %w", err)
	}
	s.log.Info("garbage collection asked by admin", "blobs", res.Blobs, "bytes", res.Bytes, "kept", res.Kept, "grace", grace, "dry_run", r.URL.Query().Get("dry_run") != "")
	return writeJSON(w, r, GCReply{Blobs: res.Blobs, Bytes: res.Bytes, Digests: res.Digests, Kept: res.Kept, KeptBytes: res.KeptBytes, Grace: grace.String()})
}

// adminBackup streams a consistent copy of the index (berth backup).
func (s *Server) adminBackup(w http.ResponseWriter, r *http.Request) error {
	w.Header().Set("Content-Type", "application/octet-stream")
	n, err := s.ops.Backup(w)
	if err != nil {
		s.log.Error("backup of the index", "err", err, "bytes", n)
		panic(http.ErrAbortHandler) // the client sees a cut body, never a short file as whole
	}
	s.log.Info("index backed up", "bytes", n)
	return nil
}

// GCReply is the admin listener's answer to POST /admin/gc, as berth gc
// reads it.
type GCReply struct {
	Blobs     int      `json:"blobs"`
	Bytes     int64    `json:"bytes"`
	Digests   []string `json:"digests"`
	Kept      int      `json:"kept"`       // unreferenced, spared by the grace period
	KeptBytes int64    `json:"kept_bytes"` //
	Grace     string   `json:"grace"`
}
