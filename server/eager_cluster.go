package server

import (
	"context"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/berth-registry/berth/store"
)

// Eager layers in a cluster. Behind a balancer that sends each blob to
// the node its digest hashes to (examples/cluster), a node that fetched
// the layers of a manifest it served would fetch blobs another node
// owns, and the owner would fetch them again when the client asks (8
// upstream GETs for 6 blobs). When berth knows the balancer
// (external_url) it asks the balancer instead: a GET of each blob with
// the Berth-Prefetch header, which the owner answers at once — 202, its
// download started (or was under way), or 204, it holds the blob — so
// each blob is fetched once, by its owner, and is on its way before the
// client asks for it. The prefetch asks as an anonymous client, so it is
// used for repositories that allow anonymous pulls; the others keep
// eager layers on the node itself.

// prefetchHeader marks a blob GET that only starts the download.
const prefetchHeader = "Berth-Prefetch"

// prefetchParallel bounds the prefetch requests of one manifest at once.
const prefetchParallel = 8

// viaBalancer reports whether rp's eager layers go through the balancer.
func (p *proxy) viaBalancer() bool { return p.s.eager.balancer != "" && p.repo.AnonymousPull }

// eagerViaBalancer asks the balancer to prefetch each of blobs that is not
// on this node's disk, prefetchParallel at a time.
func (p *proxy) eagerViaBalancer(img imageRef, blobs []store.Digest) {
	s := p.s
	base := strings.TrimSuffix(s.eager.balancer, "/") + "/v2/" + p.repo.Name + "/" + img.name + "/blobs/"
	sem := make(chan struct{}, prefetchParallel)
	var wg sync.WaitGroup
	for i, d := range blobs {
		if i == eagerPerImage {
			break
		}
		if _, err := s.blobs.StatBlob(context.Background(), d); err == nil {
			continue
		}
		sem <- struct{}{}
		wg.Add(1)
		s.goSafe("eager prefetch", func() {
			defer func() { <-sem; wg.Done() }()
			p.askPrefetch(base + d.String())
		})
	}
	wg.Wait()
}

// askPrefetch sends one prefetch request; a failure only loses the head
// start (the client's GET fetches the blob).
func (p *proxy) askPrefetch(url string) {
	s := p.s
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return
	}
	req.Header.Set(prefetchHeader, "eager")
	resp, err := s.eager.client.Do(req)
	if err != nil {
		s.log.Debug("eager prefetch through the balancer failed", "url", url, "err", err)
		return
	}
	resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusAccepted, http.StatusNoContent:
		s.m.eager.WithLabelValues(p.repo.Name).Inc()
	default:
		s.log.Debug("eager prefetch through the balancer refused", "url", url, "status", resp.StatusCode)
	}
}

// prefetch answers a blob GET with the prefetch header: 204 when the
// image's repository holds the blob (linked), else 202 once its download
// runs (started now, within the eager bound, or under way; a blob held
// for another repository answers 202 too, so the header tells nothing a
// GET would not); 429 when enough eager downloads run.
func (p *proxy) prefetch(w http.ResponseWriter, img imageRef, d store.Digest, linked bool) error {
	if _, err := p.s.blobs.StatBlob(context.Background(), d); err == nil && linked {
		w.WriteHeader(http.StatusNoContent)
		return nil
	}
	if _, _, more := p.eagerDownload(img, d, nil); !more {
		w.Header().Set("Retry-After", "1")
		w.WriteHeader(http.StatusTooManyRequests)
		return nil
	}
	w.WriteHeader(http.StatusAccepted)
	return nil
}
