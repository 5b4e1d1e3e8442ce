// Package server is berth's HTTP side: the /v2 registry API (OCI
// distribution spec), routing of requests to repositories, the pull-through
// cache rules, metrics and health endpoints.
//
// It knows the store and upstream clients only through the small
// interfaces it declares, each by the code that needs it (store.go,
// Upstream in server.go). Handlers return errors; errors.go maps them to
// registry codes (the one code → status table) and writeError renders
// every one.
//
// Where things are:
//
//	routes.go          listeners, the /v2 handler, dispatch, which repository answers
//	path.go            the /v2 path grammar (parsed from the end)
//	auth.go, token.go  users, grants, challenges; the token endpoint
//	proxy_manifest.go  a proxy's manifests: tag freshness, revalidation, misses
//	proxy_blob.go      a proxy's blobs: hit, HEAD, miss
//	fetch.go           the one download per digest, streaming, resume
//	fetch_ranges.go    a big blob as parallel byte ranges
//	eager.go           downloads started when a manifest is served
//	proxy_tags.go, proxy_referrers.go, catalog.go
//	hosted.go, uploads.go  hosted repositories: manifests, blobs, pushes
//	group.go           groups: members in order, merged tags and referrers
//	hosts.go           allowlist proxies (any registry from hosts) and forward_ns;
//	                   hosts parsed by internal/reghost, the host table (LRU)
//	conns.go           connection bounds per listener and client, body deadlines
//	logins.go          failed logins: logged, counted, throttled; bcrypt in slots
//	blob_limit.go      an upstream blob cut at its declared size or max_blob_size
//	upload_quota.go    unfinished uploads capped per owner and in all
//	metrics_http.go    /metrics shows a caller the repositories it may pull
//	budget.go          upstream pull budgets and URLs on metrics and the status page
//	health.go          upstream health from real requests
//	prefetch.go, list.go, ui.go, ops.go  operator features
//	repo.go, respond.go, errors.go, metrics.go, panic.go, validate.go
package server
