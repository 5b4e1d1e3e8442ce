package server

import (
	"embed"
	"fmt"
	"html/template"
	"net/http"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/berth-registry/berth/store"
	dto "github.com/prometheus/client_model/go"
)

//go:embed ui.html
var uiFiles embed.FS

var uiTemplates = template.Must(template.ParseFS(uiFiles, "ui.html"))

// The status page: server-rendered HTML, no JavaScript, the same access
// rules as the API (anonymous visitors see what anonymous clients may
// pull; /ui/login asks the browser for Basic credentials).
func (u *statusPages) uiHandlers(mux *http.ServeMux, listenerRepo string) {
	s := u.s
	mux.HandleFunc("GET /{$}", s.status.uiPage(s.status.uiOverview))
	mux.HandleFunc("GET /ui/repository", s.status.uiPage(s.status.uiRepository))
	mux.HandleFunc("GET /ui/image", s.status.uiPage(s.status.uiImage))
	mux.HandleFunc("GET /ui/manifest", s.status.uiPage(s.status.uiManifest))
	mux.HandleFunc("GET /ui/policy", s.status.uiPage(s.status.uiPolicy))
	mux.HandleFunc("GET /ui/clients", s.status.uiPage(uiClients(s)))
	mux.HandleFunc("GET /ui/search", s.status.uiPage(uiSearch(s)))
	mux.HandleFunc("GET /ui/confirm", s.status.uiPage(uiConfirm(s)))
	mux.HandleFunc("POST /ui/action", uiDo(s))
	mux.HandleFunc("POST /ui/approve", s.status.uiApprove)
	mux.HandleFunc("GET /ui/login", func(w http.ResponseWriter, r *http.Request) {
		p, err := s.auth.authenticate(r)
		if err == nil && p.user != nil {
			http.Redirect(w, r, "/", http.StatusSeeOther)
			return
		}
		if err != nil {
			if e := s.loginFailed(r, err, nil); e != nil {
				s.writeError(w, r, e, route{}, formatText)
				return
			}
		}
		s.writeError(w, r, &regError{Code: codeUnauthorized, Message: "sign in with a berth user",
			Header: http.Header{"Www-Authenticate": {`Basic realm="berth"`}}}, route{}, formatText)
	})
}

type uiPageFunc func(r *http.Request, p principal) (name string, data map[string]any, err error)

func (u *statusPages) uiPage(f uiPageFunc) http.HandlerFunc {
	s := u.s
	return func(w http.ResponseWriter, r *http.Request) {
		p, err := s.auth.authenticate(r)
		if err != nil {
			s.writeError(w, r, s.loginFailed(r, err, errWrongCredentials), route{}, formatText)
			return
		}
		name, data, err := f(r, p)
		if err != nil {
			// A store miss is a page that does not exist; the route
			// makes it MANIFEST_UNKNOWN (the only store read that fails
			// a page).
			s.writeError(w, r, err, route{kind: routeManifest, name: r.URL.Query().Get("name"), ref: r.URL.Query().Get("digest")}, formatText)
			return
		}
		data["User"] = p.name()
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		w.Header().Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'")
		if err := uiTemplates.ExecuteTemplate(w, name, data); err != nil {
			s.log.Error("status page", "err", err)
		}
	}
}

// visible reports whether p may see repository rp on the page.
func visible(p principal, rp *repo) bool {
	if rp.asGroup() != nil {
		for _, m := range rp.members() {
			if memberReadable(p, rp, m, "") {
				return true
			}
		}
		return false
	}
	return allowed(p, rp, "", actionPull) || (p.user != nil && anyImageGrant(p, rp))
}

// anyImageGrant reports a grant on some image of rp ("internal/team-a/*").
func anyImageGrant(p principal, rp *repo) bool {
	for _, g := range append(append([]string{}, p.user.Pull...), p.user.Push...) {
		if strings.HasPrefix(g, rp.Name+"/") {
			return true
		}
	}
	return false
}

func humanBytes(n float64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB"}
	i := 0
	for n >= 1024 && i < len(units)-1 {
		n /= 1024
		i++
	}
	if i == 0 {
		return fmt.Sprintf("%.0f B", n)
	}
	return fmt.Sprintf("%.1f %s", n, units[i])
}

// metricSums adds up a counter family by its repository label.
func (u *statusPages) metricSums(name string, match func(labels map[string]string) bool) map[string]float64 {
	s := u.s
	return s.status.metricSumsBy(name, "repository", match)
}

// metricSumsBy sums the samples of counter name that match, by the value
// of label key.
func (u *statusPages) metricSumsBy(name, key string, match func(labels map[string]string) bool) map[string]float64 {
	s := u.s
	out := map[string]float64{}
	mfs, err := s.opts.Registry.Gather()
	if err != nil {
		return out
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.Metric {
			labels := labelMap(m)
			if match(labels) {
				out[labels[key]] += m.GetCounter().GetValue()
			}
		}
	}
	return out
}

func labelMap(m *dto.Metric) map[string]string {
	out := map[string]string{}
	for _, l := range m.Label {
		out[l.GetName()] = l.GetValue()
	}
	return out
}

func ratio(hit, all float64) string {
	if all == 0 {
		return "–"
	}
	return fmt.Sprintf("%.1f%%", 100*hit/all)
}

func (u *statusPages) uiOverview(r *http.Request, p principal) (string, map[string]any, error) {
	s := u.s
	// Each request is counted once, under the repository whose disk or
	// upstream answered (a group's member); a group's own row is what
	// went through it (berth_group_*), and the totals add up the others.
	isHit := func(l map[string]string) bool {
		return l["result"] == resultHit || l["result"] == resultRevalidated || l["result"] == resultStale
	}
	isLookup := func(l map[string]string) bool { return l["result"] != resultNegative }
	isCache := func(l map[string]string) bool { return l["source"] == "cache" }
	isUp := func(l map[string]string) bool { return l["source"] == "upstream" }
	hits := s.status.metricSums("berth_cache_results_total", isHit)
	lookups := s.status.metricSums("berth_cache_results_total", isLookup)
	fromCache := s.status.metricSums("berth_served_bytes_total", isCache)
	fromUp := s.status.metricSums("berth_served_bytes_total", isUp)
	gHits := s.status.metricSumsBy("berth_group_cache_results_total", "group", isHit)
	gLookups := s.status.metricSumsBy("berth_group_cache_results_total", "group", isLookup)
	gCache := s.status.metricSumsBy("berth_group_served_bytes_total", "group", isCache)
	gUp := s.status.metricSumsBy("berth_group_served_bytes_total", "group", isUp)
	type row struct {
		Name, Kind, Target, Health, Budget, HitRatio, CacheBytes, UpstreamBytes string
		Images                                                                  int
		Healthy                                                                 bool
	}
	var rows []row
	var totHit, totAll, totCache, totUp float64
	for _, rp := range s.hosts.withHosts() {
		if !visible(p, rp) {
			continue
		}
		h, a, c, u := hits[rp.Name], lookups[rp.Name], fromCache[rp.Name], fromUp[rp.Name]
		if rp.asGroup() != nil {
			h, a, c, u = gHits[rp.Name], gLookups[rp.Name], gCache[rp.Name], gUp[rp.Name]
		} else {
			totHit, totAll, totCache, totUp = totHit+h, totAll+a, totCache+c, totUp+u
		}
		images, _ := s.index.Repositories(r.Context(), rp.Name+"/")
		rw := row{Name: rp.Name, Kind: rp.Kind, HitRatio: ratio(h, a), CacheBytes: humanBytes(c), UpstreamBytes: humanBytes(u), Images: len(images)}
		switch rp.kind.(type) {
		case *proxy:
			rw.Target = rp.UpstreamHost
			if len(rp.Hosts) > 0 {
				rw.Target = "any of " + strings.Join(rp.Hosts, " ")
			}
			if eps := rp.endpoints(); len(eps) > 1 {
				rw.Target = endpointsLine(eps)
			}
			// From real requests' outcomes; a page view sends nothing
			// upstream (not even the probe /readyz may start).
			st := rp.health.peek()
			rw.Health, rw.Healthy = st.words(len(images) > 0), st.healthy()
			rw.Budget = budgetLine(rp.rateLimit())
			if len(rp.Hosts) > 0 {
				rw.Health, rw.Healthy = fmt.Sprintf("%d registry hosts seen (below)", len(s.hosts.hostRepos(rp))), true
			}
		case *group:
			rw.Target = strings.Join(rp.Members, " → ")
			if rp.PushTo != "" {
				rw.Target += " (push to " + rp.PushTo + ")"
			}
		}
		rows = append(rows, rw)
	}
	bytes, blobs := s.ops.Stats()
	data := map[string]any{"Title": "status", "Repos": rows, "HitRatio": ratio(totHit, totAll),
		"CacheBytes": humanBytes(totCache), "UpstreamBytes": humanBytes(totUp), "StoreBytes": humanBytes(float64(bytes)),
		"Blobs": blobs, "DiskFree": humanBytes(float64(diskFree(s.ops.Dir()))), "Replication": replicationRows(s, p), "Admin": p.user != nil && p.user.Admin}
	if n := s.m.damaged(s.ops); n > 0 {
		data["Damaged"] = n
	}
	if at := s.diskFullAt.Load(); at != 0 {
		data["DiskFull"] = ago(time.Since(time.Unix(0, at)))
	}
	if s.opts.MaxSize > 0 {
		data["MaxSize"] = humanBytes(float64(s.opts.MaxSize))
		data["UsedPct"] = fmt.Sprintf("%.0f", min(100, 100*float64(bytes)/float64(s.opts.MaxSize)))
	}
	return "overview", data, nil
}

func boolf(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func (u *statusPages) uiRepo(r *http.Request, p principal) (*repo, error) {
	s := u.s
	rp := s.repos[r.URL.Query().Get("repo")]
	if rp == nil {
		rp = s.repos[r.URL.Query().Get("name")]
	}
	if rp == nil || !visible(p, rp) {
		return nil, errf(codeNameUnknown, "no such repository")
	}
	return rp, nil
}

func (u *statusPages) uiRepository(r *http.Request, p principal) (string, map[string]any, error) {
	s := u.s
	rp, err := s.status.uiRepo(r, p)
	if err != nil {
		return "", nil, err
	}
	type row struct {
		Name string
		Tags int
	}
	var rows []row
	paths, _ := s.index.Repositories(r.Context(), rp.Name+"/")
	paths = slices.DeleteFunc(paths, func(path string) bool { return !allowed(p, rp, strings.TrimPrefix(path, rp.Name+"/"), actionPull) })
	pg := pageOf(r, len(paths))
	for _, path := range paths[pg.From:pg.To] { // a page at a time: tags are counted for what is shown
		tags, _ := s.index.Tags(r.Context(), path)
		rows = append(rows, row{strings.TrimPrefix(path, rp.Name+"/"), len(tags)})
	}
	data := map[string]any{"Title": rp.Name, "Repo": rp.Name, "Kind": rp.Kind, "Images": rows, "Page": pg}
	if rp.asGroup() != nil {
		var members []string
		for _, m := range rp.Members {
			if mr := s.repos[m]; mr != nil && visible(p, mr) {
				members = append(members, m)
			}
		}
		data["Members"] = members
	}
	return "repository", data, nil
}

func (u *statusPages) uiImageAllowed(r *http.Request, p principal) (*repo, string, error) {
	s := u.s
	rp, err := s.status.uiRepo(r, p)
	if err != nil {
		return nil, "", err
	}
	image := r.URL.Query().Get("name")
	if validateName(image) != nil || rp.asGroup() != nil || !allowed(p, rp, image, actionPull) {
		return nil, "", errf(codeNameUnknown, "no such image")
	}
	return rp, image, nil
}

func (u *statusPages) uiImage(r *http.Request, p principal) (string, map[string]any, error) {
	s := u.s
	rp, image, err := s.status.uiImageAllowed(r, p)
	if err != nil {
		return "", nil, err
	}
	path := rp.Name + "/" + image
	type row struct {
		Tag, Digest, MediaType, Size, LastPulled string
		Pulls                                    int64
		Pull                                     []string
		Platforms, Referrers, Verdict            string
	}
	var rows []row
	tags, _ := s.index.Tags(r.Context(), path)
	for _, t := range tags {
		ti, err := s.index.ResolveTag(r.Context(), path, t)
		if err != nil {
			continue
		}
		rw := row{Tag: t, Digest: ti.Digest.String(), Pull: pullCommands(r.Host + "/" + path + ":" + t)}
		if m, err := s.index.PeekManifest(r.Context(), path, ti.Digest); err == nil {
			rw.MediaType = m.MediaType
			rw.Size = humanBytes(float64(imageSize(r.Context(), s.index, path, m)))
			rw.Platforms, rw.Referrers, rw.Verdict = tagDetails(r.Context(), s, rp, path, t, m)
		}
		var at time.Time
		rw.Pulls, at = s.index.Pulls(r.Context(), ti.Digest)
		rw.LastPulled = "never"
		if !at.IsZero() {
			rw.LastPulled = at.UTC().Format("2006-01-02 15:04:05")
		}
		rows = append(rows, rw)
	}
	return "image", map[string]any{"Title": image, "Repo": rp.Name, "Image": image, "Tags": rows,
		"CanDelete": p.user != nil && p.user.Admin && rp.Kind == KindHosted}, nil
}

func (u *statusPages) uiManifest(r *http.Request, p principal) (string, map[string]any, error) {
	s := u.s
	rp, image, err := s.status.uiImageAllowed(r, p)
	if err != nil {
		return "", nil, err
	}
	d, err := store.ParseDigest(r.URL.Query().Get("digest"))
	if err != nil {
		return "", nil, err
	}
	path := rp.Name + "/" + image
	m, err := s.index.PeekManifest(r.Context(), path, d)
	if err != nil {
		return "", nil, err // not found: MANIFEST_UNKNOWN
	}
	data := map[string]any{"Title": image, "Repo": rp.Name, "Image": image, "Digest": d.String(), "MediaType": m.MediaType,
		"ManifestSize": humanBytes(float64(len(m.Body)))}
	pm, err := parseManifest(m.Body, m.MediaType)
	if err != nil {
		pm = &parsedManifest{} // stored, so once valid: show what there is
	}
	type layer struct {
		Digest, MediaType, Size string
		Cached                  bool
	}
	if img := pm.image; img != nil {
		var layers []layer
		var total int64
		for _, l := range img.Layers {
			cached := false
			if dg, err := store.ParseDigest(l.Digest.String()); err == nil {
				_, serr := s.index.StatBlob(r.Context(), dg)
				cached = serr == nil
			}
			layers = append(layers, layer{l.Digest.String(), string(l.MediaType), humanBytes(float64(l.Size)), cached})
			total += l.Size
		}
		data["Config"] = img.Config.Digest.String()
		if len(layers) > 0 {
			data["Layers"] = layers
			data["Total"] = humanBytes(float64(total))
		}
	}
	type platform struct {
		Platform, Digest, Size string
		Cached                 bool
	}
	var plats []platform
	if idx := pm.index; idx != nil {
		for i, c := range idx.Manifests {
			name := "unknown"
			if p := c.Platform; p != nil {
				name = p.OS + "/" + p.Architecture
				if p.Variant != "" {
					name += "/" + p.Variant
				}
			}
			cached, _ := s.index.HasManifest(r.Context(), path, pm.children[i])
			plats = append(plats, platform{name, c.Digest.String(), humanBytes(float64(c.Size)), cached})
		}
	}
	sort.Slice(plats, func(i, j int) bool { return plats[i].Platform < plats[j].Platform })
	if len(plats) > 0 {
		data["Platforms"] = plats
	}
	return "manifest", data, nil
}

// statusPages are the status page's handlers: read-only views of the
// server's repositories, metrics and store.
type statusPages struct{ s *Server }
