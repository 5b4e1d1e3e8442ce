package server

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"net/url"
	"sort"
	"sync"
	"time"

	"github.com/berth-registry/berth/internal/policy"
)

// refusalLog keeps the latest manifests policies held or refused, for
// the status page: at most maxRefusals, the oldest dropped first. An
// image served later (approved, aged, signed) leaves it.
type refusalLog struct {
	mu    sync.Mutex
	byKey map[string]*refusal
}

const maxRefusals = 256

type refusal struct {
	rp                     *repo
	Repo, Name, Digest     string
	Decision, Rule, Reason string
	Until                  time.Time
	Last                   time.Time
	Count                  int
}

func (l *refusalLog) note(rp *repo, name, d string, v policy.Verdict) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.byKey == nil {
		l.byKey = map[string]*refusal{}
	}
	key := rp.Name + "/" + name + "@" + d
	e := l.byKey[key]
	if e == nil {
		if len(l.byKey) >= maxRefusals {
			var oldest string
			for k, o := range l.byKey {
				if oldest == "" || o.Last.Before(l.byKey[oldest].Last) {
					oldest = k
				}
			}
			delete(l.byKey, oldest)
		}
		e = &refusal{rp: rp, Repo: rp.Name, Name: name, Digest: d}
		l.byKey[key] = e
	}
	e.Decision, e.Rule, e.Reason, e.Until, e.Last = string(v.Decision), v.Rule, v.Reason, v.Until, time.Now()
	e.Count++
}

// served drops the entry of a manifest a policy let through.
func (l *refusalLog) served(rp *repo, name, d string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.byKey, rp.Name+"/"+name+"@"+d)
}

// list returns the entries p may see, the latest first.
func (l *refusalLog) list(p principal) []refusal {
	l.mu.Lock()
	out := make([]refusal, 0, len(l.byKey))
	for _, e := range l.byKey {
		if allowed(p, e.rp, e.Name, actionPull) {
			out = append(out, *e)
		}
	}
	l.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Last.After(out[j].Last) })
	return out
}

// uiPolicy: GET /ui/policy, the held and refused images the viewer may
// read, with an approve button for an admin user.
func (u *statusPages) uiPolicy(r *http.Request, p principal) (string, map[string]any, error) {
	type row struct {
		refusal
		Ref, Token string
	}
	admin := p.user != nil && p.user.Admin
	var rows []row
	for _, e := range u.s.refused.list(p) {
		rw := row{refusal: e, Ref: e.Repo + "/" + e.Name + "@" + e.Digest}
		if admin && e.Decision == string(policy.Hold) {
			rw.Token = u.approveToken(p.name(), rw.Ref)
		}
		rows = append(rows, rw)
	}
	return "policy", map[string]any{"Title": "held and refused", "Rows": rows, "Admin": admin}, nil
}

// uiApprove: POST /ui/approve, an admin user's approval from the page.
// The form carries a token only the page gives that user for that
// image (no other site can make a signed-in browser approve), and a
// browser's Origin, when it sends one, must be this host.
func (u *statusPages) uiApprove(w http.ResponseWriter, r *http.Request) {
	s := u.s
	p, err := s.auth.authenticate(r)
	if err != nil {
		s.writeError(w, r, s.loginFailed(r, err, errWrongCredentials), route{}, formatText)
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, 8<<10)
	ref, token := r.PostFormValue("ref"), r.PostFormValue("token")
	origin := r.Header.Get("Origin")
	switch {
	case p.user == nil || !p.user.Admin:
		s.writeError(w, r, errf(codeDenied, "approving needs an admin user (admin = true in its [[user]])"), route{}, formatText)
		return
	case origin != "" && !sameOrigin(origin, r.Host),
		!hmac.Equal([]byte(token), []byte(u.approveToken(p.name(), ref))):
		s.writeError(w, r, errf(codeDenied, "this approval did not come from berth's own page"), route{}, formatText)
		return
	}
	res, err := runningOps{s}.Approve(r.Context(), ref, p.name()+" (status page)")
	if err != nil {
		s.writeError(w, r, err, route{}, formatText)
		return
	}
	s.refused.approved(res.Digest)
	http.Redirect(w, r, "/ui/policy", http.StatusSeeOther)
}

// approved marks the entries of digest d approved.
func (l *refusalLog) approved(d string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, e := range l.byKey {
		if e.Digest == d && e.Decision == string(policy.Hold) {
			e.Decision, e.Reason, e.Until = "approved", "approved: served at its next pull", time.Time{}
		}
	}
}

func sameOrigin(origin, host string) bool {
	o, err := url.Parse(origin)
	return err == nil && o.Host == host
}

// uiKey keys the approval tokens: random per process (a page older than
// a restart asks to be reloaded).
var uiKey = func() []byte {
	b := make([]byte, 32)
	rand.Read(b)
	return b
}()

func (u *statusPages) approveToken(user, ref string) string {
	m := hmac.New(sha256.New, uiKey)
	m.Write([]byte(user + "\x00" + ref))
	return hex.EncodeToString(m.Sum(nil))
}
