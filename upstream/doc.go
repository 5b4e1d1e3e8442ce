// Package upstream is a client for one remote registry: ping, token or
// basic auth (go-containerregistry's transport does the token dance),
// retries with bounded backoff, redirects to blob storage without the
// Authorization header, and manifest, blob and tag requests. It has no
// store and no cache; callers decide what to keep.
//
// Transport layers, outermost first:
//
//	retry  (GET/HEAD on network errors, 408, 429, 5xx; bounded backoff)
//	auth   (per image name: bearer token or basic, from the ping challenge)
//	user agent
//	observe (a hook for metrics: one call per HTTP exchange)
//	http.Transport (pooled connections, header timeout)
package upstream
