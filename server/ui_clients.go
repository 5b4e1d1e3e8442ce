package server

import (
	"net/http"
	"slices"

	"github.com/berth-registry/berth/internal/clientcfg"
)

// uiClients: GET /ui/clients, the client configuration of berth clients
// for the URL the reader came by (or the external_url), with the
// registries of the repositories the reader may see.
func uiClients(s *Server) uiPageFunc {
	return func(r *http.Request, p principal) (string, map[string]any, error) {
		o := clientcfg.Options{}
		if s.opts.Clients != nil {
			o = *s.opts.Clients
		}
		if o.URL == "" {
			scheme := "http"
			if r.TLS != nil {
				scheme = "https"
			}
			o.URL = scheme + "://" + r.Host
		}
		o.Registries = slices.DeleteFunc(slices.Clone(o.Registries), func(reg clientcfg.Registry) bool {
			rp := s.repos[reg.Repository]
			return rp == nil || !visible(p, rp)
		})
		data := map[string]any{"Title": "client set-up", "URL": o.URL}
		files, err := clientcfg.Generate(o)
		if err != nil {
			data["Error"] = err.Error()
		}
		data["Files"] = files
		return "clients", data, nil
	}
}
