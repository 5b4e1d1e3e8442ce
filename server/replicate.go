package server

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/berth-registry/berth/internal/audit"
	"github.com/berth-registry/berth/internal/replicate"
	"github.com/berth-registry/berth/store"
)

// Replication is what the admin listener and the status page need of
// replication: the runner that keeps the rules' state, the configured
// rules, and a way to reach a source named on the command line.
type Replication struct {
	Runner *replicate.Runner
	Rules  []ReplicationRule
	// NewSource reaches a registry given by URL (berth replicate --from),
	// with the limits of a configured upstream (nil: refused).
	NewSource func(SourceSpec) (replicate.Source, error)
}

// ReplicationRule is a configured rule with its source.
type ReplicationRule struct {
	Rule   replicate.Rule
	Source replicate.Source
	Every  time.Duration
	// NotifyToken lets the source (a primary berth's [[webhook]]) ask for
	// a run now: POST /replicate/notify/<rule> with "Authorization:
	// Bearer <token>" sends a value on Wake ("": no notifications).
	NotifyToken string
	Wake        chan struct{}
}

// SourceSpec names a registry to replicate from.
type SourceSpec struct {
	URL      string `json:"url"`
	Username string `json:"username,omitempty"`
	Password string `json:"password,omitempty"`
	Insecure bool   `json:"insecure,omitempty"` // skip TLS verification
}

// ReplicateRequest is the body of POST /admin/replicate: a configured
// rule by name (DryRun may be set), or a whole rule with its source.
type ReplicateRequest struct {
	Name   string          `json:"name,omitempty"`
	DryRun bool            `json:"dry_run,omitempty"`
	Rule   *replicate.Rule `json:"rule,omitempty"`
	Source *SourceSpec     `json:"source,omitempty"`
}

// replicaTarget is a hosted repository as a replication target: images
// under prefix, written as a push would write them.
type replicaTarget struct {
	s      *Server
	rp     *repo
	prefix string // "" or "mirror/"
}

// ReplicaTarget returns the hosted repository to ("repo" or
// "repo/prefix") of s as a replication target.
func ReplicaTarget(s *Server, to string) (replicate.Target, error) {
	name, prefix, _ := strings.Cut(to, "/")
	rp := s.repos[name]
	if rp == nil || rp.Kind != KindHosted {
		return nil, fmt.Errorf("replicate to %q: no hosted repository %q in this berth", to, name)
	}
	if prefix != "" {
		if err := validateName(prefix); err != nil {
			return nil, fmt.Errorf("replicate to %q: %v", to, err)
		}
		prefix += "/"
	}
	return replicaTarget{s: s, rp: rp, prefix: prefix}, nil
}

// path is the store's name of the source's image.
func (t replicaTarget) path(image string) (string, error) {
	if err := validateName(t.prefix + image); err != nil {
		return "", errf(codeNameInvalid, "%s: %v", truncate(image, 100), err)
	}
	return t.rp.Name + "/" + t.prefix + image, nil
}

func (t replicaTarget) HasManifest(ctx context.Context, image string, d store.Digest) (bool, error) {
	p, err := t.path(image)
	if err != nil {
		return false, err
	}
	return t.s.manifests.HasManifest(ctx, p, d)
}

func (t replicaTarget) TagDigest(ctx context.Context, image, tag string) (store.Digest, error) {
	p, err := t.path(image)
	if err != nil {
		return store.Digest{}, err
	}
	ti, err := t.s.manifests.ResolveTag(ctx, p, tag)
	if store.IsNotFound(err) {
		return store.Digest{}, nil
	}
	return ti.Digest, err
}

func (t replicaTarget) Tags(ctx context.Context, image string) ([]string, error) {
	p, err := t.path(image)
	if err != nil {
		return nil, err
	}
	return t.s.manifests.Tags(ctx, p)
}

func (t replicaTarget) Images(ctx context.Context) ([]string, error) {
	base := t.rp.Name + "/" + t.prefix
	paths, err := t.s.manifests.Repositories(ctx, base)
	out := make([]string, 0, len(paths))
	for _, p := range paths {
		out = append(out, strings.TrimPrefix(p, base))
	}
	return out, err
}

func (t replicaTarget) HasBlob(ctx context.Context, image string, d store.Digest) (bool, error) {
	p, err := t.path(image)
	if err != nil {
		return false, err
	}
	if ok, err := t.s.blobs.HasLink(ctx, p, d); err != nil || !ok {
		return false, err
	}
	_, err = t.s.blobs.StatBlob(ctx, d)
	if store.IsNotFound(err) {
		return false, nil
	}
	return err == nil, err
}

func (t replicaTarget) Holds(ctx context.Context, d store.Digest) (bool, error) {
	_, err := t.s.blobs.StatBlob(ctx, d)
	if store.IsNotFound(err) {
		return false, nil
	}
	return err == nil, err
}

func (t replicaTarget) LinkBlob(ctx context.Context, image string, d store.Digest) (bool, error) {
	p, err := t.path(image)
	if err != nil {
		return false, err
	}
	if _, err := t.s.blobs.StatBlob(ctx, d); store.IsNotFound(err) {
		return false, nil
	} else if err != nil {
		return false, err
	}
	return true, t.s.blobs.Link(ctx, p, d, store.LinkMounted)
}

func (t replicaTarget) PutBlob(ctx context.Context, image string, d store.Digest, size int64, r io.Reader) error {
	p, err := t.path(image)
	if err != nil {
		return err
	}
	w, err := t.s.blobs.NewBlobWriter(ctx, d.Algorithm())
	if err != nil {
		return err
	}
	defer w.Close()
	if _, err := io.Copy(w, r); err != nil {
		return fmt.Errorf("copying blob %s: %w", d, err)
	}
	_, err = w.Commit(ctx, d, size, store.Link{Repo: p, Kind: store.LinkPushed})
	return err
}

// PutManifest checks a manifest as a push would (parsed, its blobs and
// children in the repository; a partial index may lack children).
func (t replicaTarget) PutManifest(ctx context.Context, image string, d store.Digest, mediaType string, body []byte, partial bool) error {
	p, err := t.path(image)
	if err != nil {
		return err
	}
	if len(body) > maxManifestSize || !d.Verify(body) {
		return errf(codeManifestInvalid, "manifest %s: over the size limit or not of its digest", d)
	}
	pm, err := parseManifest(body, mediaType)
	if err != nil {
		return err
	}
	if pm.schema1() {
		return errf(codeManifestInvalid, "%s: schema 1 manifests are not replicated", d)
	}
	refs, err := checkRefs(ctx, t.s, p, pm, partial)
	if err != nil {
		return err
	}
	m := store.Manifest{Digest: d, MediaType: pm.mediaType, Body: body, ArtifactType: pm.artifactType, Annotations: pm.annotations, Subject: pm.subject, Hosted: true}
	return t.s.manifests.PutManifest(ctx, p, m, "", refs)
}

func (t replicaTarget) Tag(ctx context.Context, image, tag string, d store.Digest) error {
	p, err := t.path(image)
	if err != nil {
		return err
	}
	if err := checkTagMove(ctx, t.s, t.rp, p, tag, d); err != nil {
		return err
	}
	if err := t.s.manifests.TagChecked(ctx, p, tag, d, time.Now()); err != nil {
		return err
	}
	record(t.s, ctx, audit.Event{Action: audit.Replicate, User: "berth", Repository: t.rp.Name, Image: t.prefix + image, Tag: tag, Digest: d.String()})
	return nil
}

func (t replicaTarget) DeleteTag(ctx context.Context, image, tag string) error {
	p, err := t.path(image)
	if err != nil {
		return err
	}
	if err := checkTagDelete(ctx, t.s, t.rp, p, tag, store.Digest{}); err != nil {
		return err
	}
	if err := t.s.manifests.DeleteTag(ctx, p, tag); err != nil {
		return err
	}
	record(t.s, ctx, audit.Event{Action: audit.Replicate, User: "berth", Repository: t.rp.Name, Image: t.prefix + image, Tag: tag, Detail: "tag deleted: the source no longer has it"})
	return nil
}

// adminReplicate: POST /admin/replicate with a ReplicateRequest; streams
// one JSON replicate.Event per line, the last of kind done (or error).
func adminReplicate(s *Server) func(w http.ResponseWriter, r *http.Request) error {
	return func(w http.ResponseWriter, r *http.Request) error {
		repl := s.opts.Replication
		if repl == nil || repl.Runner == nil {
			return errf(codeUnsupported, "replication is not set up in this berth")
		}
		var req ReplicateRequest
		if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&req); err != nil {
			return errf(codeRequestInvalid, `want {"name":"RULE"} or {"rule":{...},"source":{"url":...}}: %v`, err)
		}
		rule, src, err := replicationFor(repl, req)
		if err != nil {
			return err
		}
		if err := rule.Check(); err != nil {
			return errf(codeRequestInvalid, "%v", err)
		}
		dst, err := ReplicaTarget(s, rule.To)
		if err != nil {
			return errf(codeNameUnknown, "%v", err)
		}
		w.Header().Set("Content-Type", "application/x-ndjson")
		events := &lineEvents{enc: json.NewEncoder(w), w: w}
		ctx := context.WithValue(r.Context(), infoKey{}, &reqInfo{principal: principal{internal: true}})
		rep, err := repl.Runner.Run(ctx, rule, src, dst, func(ev replicate.Event) { events.send(ev) })
		if err != nil {
			events.send(replicate.Event{Rule: rule.Name, Kind: "error", Error: err.Error()})
		}
		record(s, ctx, audit.Event{Action: audit.Admin, User: adminUser, Repository: rule.To,
			Detail: fmt.Sprintf("replicate %s (dry run %t): %d tags copied, %d deleted, %d errors", rule.Name, rule.DryRun, rep.Tags, rep.Deleted, rep.Errors)})
		s.log.Info("replication asked by admin", "rule", rule.Name, "dry_run", rule.DryRun, "tags", rep.Tags, "blobs", rep.Blobs, "bytes", rep.Bytes, "errors", rep.Errors, "took", rep.Took)
		return nil
	}
}

// replicationFor finds the rule and source req names.
func replicationFor(repl *Replication, req ReplicateRequest) (replicate.Rule, replicate.Source, error) {
	if req.Name != "" {
		var names []string
		for _, cr := range repl.Rules {
			if cr.Rule.Name == req.Name {
				rule := cr.Rule
				rule.DryRun = rule.DryRun || req.DryRun
				return rule, cr.Source, nil
			}
			names = append(names, cr.Rule.Name)
		}
		return replicate.Rule{}, nil, errf(codeNameUnknown, "no replication rule %q (this berth has %s)", truncate(req.Name, 100), strings.Join(names, ", "))
	}
	if req.Rule == nil || req.Source == nil || req.Source.URL == "" {
		return replicate.Rule{}, nil, errf(codeRequestInvalid, "want a rule name, or a rule and a source url")
	}
	if err := req.Rule.Check(); err != nil {
		return replicate.Rule{}, nil, errf(codeRequestInvalid, "%v", err)
	}
	if repl.NewSource == nil {
		return replicate.Rule{}, nil, errf(codeUnsupported, "this berth replicates only its configured rules")
	}
	src, err := repl.NewSource(*req.Source)
	if err != nil {
		return replicate.Rule{}, nil, errf(codeRequestInvalid, "source %s: %v", truncate(req.Source.URL, 200), err)
	}
	return *req.Rule, src, nil
}

// replicationRow is a rule on the status page.
type replicationRow struct {
	Rule, To, LastRun, Outcome, Bytes, LastSuccess string
	Tags, Unchanged                                int
	OK                                             bool
}

// replicationRows are the rules whose target p may read, with their last
// run.
func replicationRows(s *Server, p principal) []replicationRow {
	repl := s.opts.Replication
	if repl == nil || repl.Runner == nil {
		return nil
	}
	targets := map[string]string{}
	for _, r := range repl.Rules {
		targets[r.Rule.Name] = r.Rule.To
	}
	var rows []replicationRow
	for _, st := range repl.Runner.Status() {
		to, ok := targets[st.Rule]
		name, _, _ := strings.Cut(to, "/")
		if !ok || s.repos[name] == nil || !visible(p, s.repos[name]) {
			continue // a one-off run from the command line, or not the reader's
		}
		row := replicationRow{Rule: st.Rule, To: to, LastRun: "not yet", Outcome: "waiting", OK: true, LastSuccess: "never"}
		if !st.LastSuccess.IsZero() {
			row.LastSuccess = ago(time.Since(st.LastSuccess)) + " ago"
		}
		switch {
		case st.Running:
			row.Outcome = "running"
		case st.LastError != "":
			row.Outcome, row.OK = st.LastError, false
		case st.Last != nil && st.Last.Errors > 0:
			row.Outcome, row.OK = fmt.Sprintf("%d errors, first: %s", st.Last.Errors, st.Last.FirstErrors[0]), false
		case st.Last != nil:
			row.Outcome = "ok"
		}
		if st.Last != nil {
			row.LastRun = ago(time.Since(st.Last.Started)) + " ago, took " + st.Last.Took
			row.Tags, row.Unchanged, row.Bytes = st.Last.Tags, st.Last.Unchanged, humanBytes(float64(st.Last.Bytes))
		}
		rows = append(rows, row)
	}
	return rows
}

// replicateNotify: POST /replicate/notify/{rule}, a source's webhook
// saying something changed: with the rule's bearer token, the rule runs
// now (202; several notifications during a run make one more run).
func replicateNotify(s *Server) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var rule *ReplicationRule
		if repl := s.opts.Replication; repl != nil {
			for i := range repl.Rules {
				if repl.Rules[i].Rule.Name == r.PathValue("rule") && repl.Rules[i].NotifyToken != "" {
					rule = &repl.Rules[i]
				}
			}
		}
		if rule == nil {
			http.Error(w, "no replication rule of that name takes notifications", http.StatusNotFound)
			return
		}
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || subtle.ConstantTimeCompare([]byte(got), []byte(rule.NotifyToken)) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="berth replication"`)
			http.Error(w, "a bearer token is required", http.StatusUnauthorized)
			return
		}
		io.Copy(io.Discard, io.LimitReader(r.Body, 1<<20)) // the events: which ones does not matter, the rule looks
		select {
		case rule.Wake <- struct{}{}:
		default: // a run is already due
		}
		w.WriteHeader(http.StatusAccepted)
	}
}
