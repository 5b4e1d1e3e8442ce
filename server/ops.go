package server

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/berth-registry/berth/internal/audit"

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

// Ops are the operator's commands on berth's data (berth gc, backup,
// ls): the same contract whether berth runs or not. StoreOps does them on
// a store opened offline; AdminClient asks a running berth over its admin
// listener, whose handlers (serveOps) do them on the running server.
// berth verify is not among them: it needs the store to itself.
type Ops interface {
	// GC deletes blobs no manifest references.
	GC(ctx context.Context, req GCRequest) (GCReply, error)
	// Backup writes a consistent copy of the index to w.
	Backup(ctx context.Context, w io.Writer) (int64, error)
	// List returns the tags of the images under filter
	// ("REPOSITORY[/IMAGE]", "" for all).
	List(ctx context.Context, filter string) ([]ListEntry, error)
	// Approve releases ref ("NAME@DIGEST") from every policy's min_age;
	// by says who, for the record.
	Approve(ctx context.Context, ref, by string) (ApproveReply, error)
}

// GCRequest asks for a collection: unreferenced blobs younger than Grace
// are spared; DryRun only counts.
type GCRequest struct {
	Grace  time.Duration
	DryRun bool
}

// GCReply is what a collection did, as the admin listener answers POST
// /admin/gc.
type GCReply struct {
	Blobs     int      `json:"blobs"`
	Bytes     int64    `json:"bytes"`
	Digests   []string `json:"digests"`
	Kept      int      `json:"kept"`       // unreferenced, spared by the grace period
	KeptBytes int64    `json:"kept_bytes"` //
	Grace     string   `json:"grace"`
}

func gcReply(res store.GCResult, grace time.Duration) GCReply {
	return GCReply{Blobs: res.Blobs, Bytes: res.Bytes, Digests: res.Digests, Kept: res.Kept, KeptBytes: res.KeptBytes, Grace: grace.String()}
}

// StoreOps are the Ops on a store opened offline (berth stopped). Known
// are the configured repositories: a filter naming a repository neither
// configured nor in the store is an error, not an empty list.
type StoreOps struct {
	Store *store.Store
	Known []string
}

func (o StoreOps) GC(_ context.Context, req GCRequest) (GCReply, error) {
	res, err := o.Store.GC(store.GCOptions{Grace: req.Grace, DryRun: req.DryRun})
	return gcReply(res, req.Grace), err
}

func (o StoreOps) Backup(_ context.Context, w io.Writer) (int64, error) { return o.Store.Backup(w) }

func (o StoreOps) List(ctx context.Context, filter string) ([]ListEntry, error) {
	if first, _, _ := strings.Cut(filter, "/"); first != "" && !slices.Contains(o.Known, first) {
		if held, err := o.Store.Repositories(ctx, first+"/"); err != nil || len(held) == 0 {
			return nil, fmt.Errorf("no repository %q in the config (%s) or the store", first, strings.Join(o.Known, ", "))
		}
	}
	return List(ctx, o.Store, nil, filter) // what the index holds
}

// runningOps are the Ops on the running server, behind the admin
// listener.
type runningOps struct{ s *Server }

func (o runningOps) GC(ctx context.Context, req GCRequest) (GCReply, error) {
	if req.Grace < 0 {
		req.Grace = o.s.opts.GCGrace
	}
	res, err := o.s.ops.GC(store.GCOptions{Grace: req.Grace, DryRun: req.DryRun})
	if err != nil {
		return GCReply{}, fmt.Errorf("garbage collection: %w", err)
	}
	o.s.log.Info("garbage collection asked by admin", "blobs", res.Blobs, "bytes", res.Bytes, "kept", res.Kept, "grace", req.Grace, "dry_run", req.DryRun)
	record(o.s, ctx, audit.Event{Action: audit.Admin, User: adminUser, Size: res.Bytes,
		Detail: fmt.Sprintf("gc: %d blobs deleted (dry run %t, grace %s)", res.Blobs, req.DryRun, req.Grace)})
	return gcReply(res, req.Grace), nil
}

func (o runningOps) Backup(ctx context.Context, w io.Writer) (int64, error) {
	n, err := o.s.ops.Backup(w)
	if err == nil {
		record(o.s, ctx, audit.Event{Action: audit.Admin, User: adminUser, Size: n, Detail: "backup of the index"})
	}
	return n, err
}

// adminUser is who the admin listener's caller is: whoever may open it.
const adminUser = "admin"

func (o runningOps) List(ctx context.Context, filter string) ([]ListEntry, error) {
	s := o.s
	var names []string
	for _, rp := range s.order {
		if rp.asGroup() == nil {
			names = append(names, rp.Name)
		}
	}
	if first, _, _ := strings.Cut(filter, "/"); first != "" && s.repos[first] == nil {
		all := make([]string, len(s.order))
		for i, rp := range s.order {
			all[i] = rp.Name
		}
		return nil, errf(codeNameUnknown, "no repository %q (this berth has %s)", truncate(first, 100), strings.Join(all, ", "))
	}
	list, err := List(ctx, s.index, names, filter)
	if err != nil {
		return nil, fmt.Errorf("admin ls: %w", err)
	}
	return list, nil
}

// serveOps puts ops on the admin mux: POST /admin/gc?grace=&dry_run=,
// GET /admin/backup, GET /admin/ls?filter=.
// handle turns an error into the registry's error answer.
func serveOps(mux *http.ServeMux, ops Ops, log *slog.Logger, handle func(errorFormat, func(http.ResponseWriter, *http.Request) error) http.HandlerFunc) {
	mux.HandleFunc("POST /admin/gc", handle(formatRegistry, func(w http.ResponseWriter, r *http.Request) error {
		req, err := parseGCRequest(r.URL.Query())
		if err != nil {
			return err
		}
		res, err := ops.GC(r.Context(), req)
		if err != nil {
			return err
		}
		return writeJSON(w, r, res)
	}))
	mux.HandleFunc("GET /admin/backup", handle(formatRegistry, func(w http.ResponseWriter, r *http.Request) error {
		w.Header().Set("Content-Type", "application/octet-stream")
		n, err := ops.Backup(r.Context(), w)
		if err != nil {
			log.Error("backup of the index", "err", err, "bytes", n)
			panic(http.ErrAbortHandler) // the client sees a cut body, never a short file as whole
		}
		log.Info("index backed up", "bytes", n)
		return nil
	}))
	mux.HandleFunc("POST /admin/approve", handle(formatRegistry, func(w http.ResponseWriter, r *http.Request) error {
		by := r.URL.Query().Get("by")
		if by == "" || len(by) > 100 {
			by = "an operator"
		}
		res, err := ops.Approve(r.Context(), r.URL.Query().Get("ref"), by)
		if err != nil {
			return err
		}
		return writeJSON(w, r, res)
	}))
	mux.HandleFunc("GET /admin/ls", handle(formatRegistry, func(w http.ResponseWriter, r *http.Request) error {
		list, err := ops.List(r.Context(), r.URL.Query().Get("filter"))
		if err != nil {
			return err
		}
		return writeJSON(w, r, list)
	}))
}

// parseGCRequest reads ?grace= (a duration; absent: the configured one,
// sent by berth gc) and ?dry_run=.
func parseGCRequest(q url.Values) (GCRequest, error) {
	req := GCRequest{Grace: -1, DryRun: q.Get("dry_run") != ""}
	if g := q.Get("grace"); g != "" {
		d, err := time.ParseDuration(g)
		if err != nil || d < 0 {
			return req, errf(codeRequestInvalid, "grace %q: want a duration such as 0s or 30m", truncate(g, 40))
		}
		req.Grace = d
	}
	return req, nil
}
