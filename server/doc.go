// Package server is berth's HTTP side: the /v2 registry API (OCI
// distribution spec), routing of requests to repositories, the pull-through
// cache rules, metrics and health endpoints.
//
// It knows the store and upstream clients only through the small
// interfaces it declares, each by the code that needs it (store.go,
// Upstream in server.go); downloads are internal/fetch's. Handlers return
// errors; errors.go maps them to registry codes (the one code → status
// table) and writeError renders every one.
//
// # The request path
//
// A configured repository is a *repo (its settings and runtime state)
// whose impl is one of three kinds behind the repository interface
// (kinds.go): *proxy, *hosted or *group. A request goes:
//
//	v2Handler (routes.go)    authenticate; count and log when the handler returns
//	 └ dispatch              parse the path (path.go); resolve picks the *repo and
//	   │                     the image name from ?ns=, the path and the listener
//	   ├ authorizeRoute      refuse writes the kind cannot take; check the grant
//	   └ rp.impl.serve(w, r, imageRef, route)
//	      ├ proxy.serve      manifest (cache rules, revalidation, misses, eager
//	      │                  layers), blob (hit, HEAD, or a fetch.Download it joins
//	      │                  and follows), tags and referrers from the upstream
//	      ├ hosted.serve     the store: manifests, blobs, uploads, tags, referrers
//	      └ group.serve      writes to its push_to member; reads ask its members
//	                         in order through the same interface (manifest, blob,
//	                         tags, referrers), remembering who served an image
//
// An imageRef is the repository and the name within it; its path() is the
// store path and at(ref) the key of a tag or digest. Prefetch calls the same
// interface in Go (manifest, cacheBlob), under berth's own principal. The
// operator commands' contract is Ops (ops.go): StoreOps on a stopped berth,
// AdminClient over the admin socket to the running one.
//
// # Where things are
//
//	routes.go          listeners, the /v2 handler, dispatch, resolve
//	kinds.go           the repository interface, imageRef, the kinds' types
//	path.go            the /v2 path grammar (parsed from the end)
//	auth.go, token.go  users, grants, challenges; the token endpoint
//	proxy_manifest.go  a proxy's manifests: tag freshness, revalidation, misses
//	proxy_blob.go      a proxy's blobs: hit, HEAD, miss, ranges, cacheBlob
//	proxy_fetch.go     a proxy's download jobs and upstream byte fetchers
//	stream.go          sending a download to a client (sendfile as it grows)
//	eager.go           downloads started when a manifest is served
//	proxy_tags.go, proxy_referrers.go, catalog.go
//	hosted.go, uploads.go  hosted repositories: manifests, blobs, pushes
//	group.go           groups: members in order, merged tags and referrers
//	hosts.go           allowlist proxies (any registry from hosts) and forward_ns:
//	                   hosts parsed by internal/reghost, made and kept in a table
//	conns.go           connection bounds per listener and client, body deadlines
//	logins.go          failed logins: logged, counted, throttled; bcrypt in slots
//	blob_limit.go      an upstream blob cut at its declared size or max_blob_size
//	upload_quota.go    unfinished uploads capped per owner and in all
//	metrics_http.go    /metrics shows a caller the repositories it may pull
//	budget.go          upstream pull budgets and URLs on metrics and the status page
//	health.go          upstream health from real requests
//	ops.go, ops_client.go  the operator commands' contract, both sides
//	prefetch.go, list.go, ui.go  prefetch, berth ls, the status page
//	replicate.go       a hosted repository as internal/replicate's target (written
//	                   as a push would), /admin/replicate, the Replication table
//	repo.go, respond.go, errors.go, metrics.go, panic.go, validate.go
package server
