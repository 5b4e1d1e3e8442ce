package server

import (
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
)

// catalog: GET /v2/_catalog (Docker's catalog API; not in the OCI spec) of the listener's
// repository: the images it has cached or hosts, with n/last pagination.
func (s *Server) catalog(w http.ResponseWriter, r *http.Request, rp *repo) error {
	members := []*repo{rp}
	if g := rp.asGroup(); g != nil {
		members = g.readable(r.Context(), rp.image(""))
	}
	set := map[string]bool{}
	for _, m := range members {
		paths, err := s.manifests.Repositories(r.Context(), m.Name+"/")
		if err != nil {
			return err
		}
		for _, p := range paths {
			set[strings.TrimPrefix(p, m.Name+"/")] = true
		}
	}
	names := make([]string, 0, len(set))
	for n := range set {
		names = append(names, n)
	}
	slices.Sort(names)
	page, next, err := paginate(names, r.URL.Query())
	if err != nil {
		return err
	}
	if next != "" {
		w.Header().Set("Link", fmt.Sprintf(`</v2/_catalog?%s>; rel="next"`, next))
	}
	return writeJSON(w, r, map[string]any{"repositories": page})
}

// paginate applies n and last to a sorted list; next is the query of the
// following page, empty on the last one.
func paginate(all []string, q url.Values) (page []string, next string, err error) {
	start := 0
	if last := q.Get("last"); last != "" {
		for start < len(all) && all[start] <= last {
			start++
		}
	}
	page = all[start:]
	if ns := q.Get("n"); ns != "" {
		n, err := strconv.Atoi(ns)
		if err != nil || n < 0 {
			return nil, "", errf(codePaginationInvalid, "invalid n %q", ns)
		}
		if n < len(page) {
			page = page[:n]
			if n > 0 {
				next = url.Values{"n": {ns}, "last": {page[n-1]}}.Encode()
			}
		}
	}
	if page == nil {
		page = []string{}
	}
	return page, next, nil
}
