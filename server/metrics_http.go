package server

import (
	"net/http"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
)

// metricsHandler serves /metrics on the public listeners. A series
// labelled with a repository is shown only to a caller who may pull from
// that repository: anonymous callers see the public repositories'
// activity and none of the private ones' (their names included); a
// signed-in user (Prometheus with basic_auth) sees what that user may
// pull; berth's own series (Go runtime, store, panics) are shown to all.
// The admin listener serves every series.
func (s *Server) metricsHandler() http.Handler {
	return s.handle(formatText, func(w http.ResponseWriter, r *http.Request) error {
		p, err := s.auth.authenticate(r)
		if err != nil {
			return s.loginFailed(r, err, errWrongCredentials)
		}
		g := prometheus.GathererFunc(func() ([]*dto.MetricFamily, error) {
			mfs, err := s.opts.Registry.Gather()
			return visibleMetrics(s.repos, p, mfs), err
		})
		promhttp.HandlerFor(g, promhttp.HandlerOpts{}).ServeHTTP(w, r)
		return nil
	})
}

// visibleMetrics keeps the series p may see: those without a repository
// label, and those of repositories p may pull from.
func visibleMetrics(repos map[string]*repo, p principal, mfs []*dto.MetricFamily) []*dto.MetricFamily {
	seen := map[string]bool{}
	visible := func(name string) bool {
		v, ok := seen[name]
		if !ok {
			v = metricsVisible(repos, p, name)
			seen[name] = v
		}
		return v
	}
	out := mfs[:0]
	for _, mf := range mfs {
		kept := mf.Metric[:0]
		for _, m := range mf.Metric {
			ok := true
			for _, l := range m.Label {
				if l.GetName() == "repository" {
					ok = visible(l.GetValue())
					break
				}
			}
			if ok {
				kept = append(kept, m)
			}
		}
		mf.Metric = kept
		if len(kept) > 0 {
			out = append(out, mf)
		}
	}
	return out
}

// metricsVisible reports whether p may see the series of repository
// label name ("hub", or "any/ghcr.io" for a host proxy of "any").
func metricsVisible(repos map[string]*repo, p principal, name string) bool {
	rp := repos[name]
	image := ""
	if rp == nil {
		first, rest, _ := strings.Cut(name, "/")
		if rp = repos[first]; rp == nil {
			return false
		}
		image = rest + "/"
	}
	if p.user == nil {
		return rp.AnonymousPull
	}
	return allowed(p, rp, image, actionPull) || anyGlobPrefix(p.user.Pull, rp.Name) || anyGlobPrefix(p.user.Push, rp.Name)
}

// anyGlobPrefix reports whether one of globs grants something inside
// repository repo ("hub/library/*" does for hub).
func anyGlobPrefix(globs []string, repo string) bool {
	for _, g := range globs {
		if g == "*" || g == "**" || g == repo || strings.HasPrefix(g, repo+"/") {
			return true
		}
	}
	return false
}
