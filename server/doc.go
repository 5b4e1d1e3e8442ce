// Package server is berth's HTTP side: the /v2 registry API (OCI
// distribution spec), routing of requests to repositories, the pull-through
// cache rules, metrics and health endpoints.
//
// It knows the store and upstream clients only through the small
// interfaces it declares (Store, Upstream). Handlers return errors; one
// function (writeError) renders every registry error.
package server
