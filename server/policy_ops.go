package server

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/berth-registry/berth/internal/audit"

	"github.com/berth-registry/berth/internal/policy"
	"github.com/berth-registry/berth/store"
)

// The operator's policy commands: berth approve (an Op: it works whether
// berth runs or not) and berth policy test (on the running server: it
// may need the upstream for signatures).

func (o StoreOps) Approve(ctx context.Context, ref, by string) (ApproveReply, error) {
	return approve(ctx, o.Store, ref, by)
}

func (o runningOps) Approve(ctx context.Context, ref, by string) (ApproveReply, error) {
	res, err := approve(ctx, o.s.verdicts, ref, by)
	if err == nil {
		o.s.log.Info("digest approved: released from min_age", "name", res.Name, "digest", res.Digest, "by", by)
		record(o.s, ctx, audit.Event{Action: audit.Admin, User: by, Image: res.Name, Digest: res.Digest, Detail: "approve: released from min_age"})
	}
	return res, err
}

func (a AdminClient) Approve(ctx context.Context, ref, by string) (ApproveReply, error) {
	var res ApproveReply
	err := a.postJSON(ctx, "/admin/approve?"+url.Values{"ref": {ref}, "by": {by}}.Encode(), &res)
	return res, err
}

// PolicyTestReply explains what a repository's policy decides for an
// image, as berth policy test prints it.
type PolicyTestReply struct {
	Repository  string    `json:"repository"`
	Name        string    `json:"name"`
	Digest      string    `json:"digest"`
	Policy      string    `json:"policy"` // "" when the repository has none
	Fingerprint string    `json:"fingerprint,omitempty"`
	Decision    string    `json:"decision"`
	Rule        string    `json:"rule"`
	Reason      string    `json:"reason"`
	FirstSeen   time.Time `json:"first_seen,omitzero"`
	Until       time.Time `json:"until,omitzero"`
}

// PolicyTest asks the running berth what it would answer for ref
// ("REPOSITORY/NAME@DIGEST" or ":TAG"), without serving it.
func (a AdminClient) PolicyTest(ctx context.Context, ref string) (PolicyTestReply, error) {
	var res PolicyTestReply
	err := a.postJSON(ctx, "/admin/policy-test?"+url.Values{"ref": {ref}}.Encode(), &res)
	return res, err
}

func (a AdminClient) postJSON(ctx context.Context, path string, out any) error {
	resp, err := a.do(ctx, http.MethodPost, path, nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(out); err != nil {
		return fmt.Errorf("reading the running berth's answer: %w", err)
	}
	return nil
}

// adminPolicyTest: POST /admin/policy-test?ref=.
func adminPolicyTest(s *Server, listener string) func(w http.ResponseWriter, r *http.Request) error {
	return func(w http.ResponseWriter, r *http.Request) error {
		res, err := policyTest(r.Context(), s, listener, r.URL.Query().Get("ref"))
		if err != nil {
			return err
		}
		return writeJSON(w, r, res)
	}
}

// policyTest finds ref's manifest as a pull would (berth's own request:
// not counted as a client's) and decides it without serving it.
func policyTest(ctx context.Context, s *Server, listener, ref string) (PolicyTestReply, error) {
	ctx = context.WithValue(ctx, infoKey{}, &reqInfo{principal: principal{internal: true}})
	name, reference, ok := splitRef(ref)
	if !ok {
		return PolicyTestReply{}, errf(codeRequestInvalid, "policy test %q: want REPOSITORY/NAME@DIGEST or REPOSITORY/NAME:TAG", truncate(ref, 200))
	}
	rp, image, err := s.resolve(ctx, "", listenerScope{repo: listener, trusted: true}, name)
	if err != nil {
		return PolicyTestReply{}, err
	}
	rt := route{kind: routeManifest, name: image, ref: reference}
	if d, err := store.ParseDigest(reference); err == nil {
		rt.digest = d
	} else if strings.HasPrefix(reference, "sha256:") {
		return PolicyTestReply{}, errf(codeDigestInvalid, "policy test: digest %q: %v", truncate(reference, 100), err)
	}
	img := rp.image(image)
	g := rp.gate()
	a, err := g.repository.manifest(ctx, img, rt, false)
	if err != nil {
		return PolicyTestReply{}, err
	}
	res := PolicyTestReply{Repository: rp.Name, Name: image, Digest: a.digest(), Decision: string(policy.Allow), Rule: "none", Reason: "the repository has no policy: everything is served"}
	p := g.cur.Load()
	if p == nil {
		return res, nil
	}
	v, first := g.decide(ctx, p, img, rt, res.Digest, a)
	res.Policy, res.Fingerprint, res.Decision, res.Rule, res.Reason, res.FirstSeen, res.Until = p.Name, p.fp, string(v.Decision), v.Rule, v.Reason, first, v.Until
	return res, nil
}

// splitRef splits "NAME@DIGEST" or "NAME:TAG" (a colon after the last
// slash).
func splitRef(ref string) (name, reference string, ok bool) {
	if i := strings.LastIndexByte(ref, '@'); i > 0 {
		return ref[:i], ref[i+1:], i+1 < len(ref)
	}
	i := strings.LastIndexByte(ref, ':')
	if i <= strings.LastIndexByte(ref, '/') || i+1 == len(ref) {
		return "", "", false
	}
	return ref[:i], ref[i+1:], true
}
