package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"syscall"
	"time"

	"github.com/berth-registry/berth/internal/fetch"

	"github.com/berth-registry/berth/store"
	"github.com/berth-registry/berth/upstream"
)

// errCode is a registry error code and the one status it is answered
// with. This table is the only place berth picks the status of an error.
type errCode struct {
	name   string // the "code" of the JSON body
	status int
}

func (c errCode) String() string { return c.name }

// Error codes of the distribution spec (and Docker's extensions), each
// with its status.
var (
	codeBlobUnknown         = errCode{"BLOB_UNKNOWN", http.StatusNotFound}
	codeBlobUploadInvalid   = errCode{"BLOB_UPLOAD_INVALID", http.StatusBadRequest}
	codeBlobUploadUnknown   = errCode{"BLOB_UPLOAD_UNKNOWN", http.StatusNotFound}
	codeDigestInvalid       = errCode{"DIGEST_INVALID", http.StatusBadRequest}
	codeManifestBlobUnknown = errCode{"MANIFEST_BLOB_UNKNOWN", http.StatusBadRequest}
	codeManifestInvalid     = errCode{"MANIFEST_INVALID", http.StatusBadRequest}
	codeManifestTooLarge    = errCode{"MANIFEST_INVALID", http.StatusRequestEntityTooLarge} // over maxManifestSize (spec: 413)
	codeManifestUnknown     = errCode{"MANIFEST_UNKNOWN", http.StatusNotFound}
	codeNameInvalid         = errCode{"NAME_INVALID", http.StatusBadRequest}
	codeNameUnknown         = errCode{"NAME_UNKNOWN", http.StatusNotFound}
	codeSizeInvalid         = errCode{"SIZE_INVALID", http.StatusBadRequest}
	codeUnauthorized        = errCode{"UNAUTHORIZED", http.StatusUnauthorized}
	codeDenied              = errCode{"DENIED", http.StatusForbidden}
	codeUnsupported         = errCode{"UNSUPPORTED", http.StatusMethodNotAllowed}
	codePaginationInvalid   = errCode{"PAGINATION_NUMBER_INVALID", http.StatusBadRequest} // bad ?n=
	codeTooManyRequests     = errCode{"TOOMANYREQUESTS", http.StatusTooManyRequests}
	codeRangeInvalid        = errCode{"RANGE_INVALID", http.StatusRequestedRangeNotSatisfiable}
	codeNotFound            = errCode{"NOT_FOUND", http.StatusNotFound}               // no such endpoint or page
	codeUnavailable         = errCode{"UNAVAILABLE", http.StatusServiceUnavailable}   // upstream unreachable, nothing cached
	codeUnknown             = errCode{"UNKNOWN", http.StatusInternalServerError}      // berth's own failure
	codeStorageFull         = errCode{"STORAGE_FULL", http.StatusInsufficientStorage} // berth's disk is full
	codeRequestInvalid      = errCode{"INVALID_REQUEST", http.StatusBadRequest}       // token endpoint, admin: bad form or body
)

// regError is the one error type for protocol errors.
type regError struct {
	Code    errCode
	Message string
	Detail  any
	// Header is added to the response (Retry-After, ...).
	Header http.Header
}

func (e *regError) Error() string { return e.Code.name + ": " + e.Message }

func errf(code errCode, format string, args ...any) *regError {
	return &regError{Code: code, Message: fmt.Sprintf(format, args...)}
}

// withDetail returns e with a detail object.
func (e *regError) withDetail(d any) *regError { e.Detail = d; return e }

// errUpstreamBroken marks an upstream answer that arrived but cannot be
// used: a body cut short, bytes that do not match their digest or length,
// a manifest that does not parse. Clients get 503 UNAVAILABLE naming it.
var errUpstreamBroken = fetch.ErrUpstreamBroken

// diskFull reports an error of a full filesystem (or quota).
func diskFull(err error) bool {
	return errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT)
}

// registryError maps any error a handler returns to the registry error
// the client sees. Store and upstream sentinels are matched with
// errors.Is; what a "not found" means depends on the route (a manifest,
// a blob, an upload, a repository). The second result is false for
// errors that are berth's own failure (500, logged by the caller).
func registryError(err error, rt route) (*regError, bool) {
	var re *regError
	var ue *upstream.Error
	what := rt.what()
	switch {
	case errors.As(err, &re):
		return re, true
	case diskFull(err):
		return errf(codeStorageFull, "berth's disk is full; nothing was stored (the operator must free space)"), true
	case errors.Is(err, store.ErrDigestInvalid):
		return errf(codeDigestInvalid, "%v", err), true
	case errors.Is(err, errUpstreamBroken):
		return errf(codeUnavailable, "%s: %v; nothing cached", what, err), true
	case errors.As(err, &ue) && ue.StatusCode == http.StatusTooManyRequests:
		e := errf(codeTooManyRequests, "upstream rate limit for %s", what)
		if ue.RetryAfter != "" {
			e.Header = http.Header{"Retry-After": {ue.RetryAfter}}
		}
		return e, true
	case errors.Is(err, upstream.ErrDenied):
		return errf(codeDenied, "upstream denied access to %s", what), true
	case errors.Is(err, upstream.ErrUnavailable):
		return errf(codeUnavailable, "upstream unavailable for %s and nothing cached", what).withDetail(err.Error()), true
	case errors.Is(err, upstream.ErrNotFound):
		return errf(rt.notFound(), "%s not found upstream", what), true
	case errors.Is(err, store.ErrUploadUnknown):
		return errf(codeBlobUploadUnknown, "upload unknown or expired"), true
	case errors.Is(err, store.ErrNotFound):
		return errf(rt.notFound(), "%s unknown", what), true
	case errors.Is(err, store.ErrDigestMismatch):
		return errf(codeDigestInvalid, "%v", err), true
	case errors.Is(err, store.ErrSizeMismatch):
		return errf(codeSizeInvalid, "%v", err), true
	case errors.Is(err, store.ErrRangeInvalid):
		return errf(codeRangeInvalid, "%v", err), true
	}
	return errf(codeUnknown, "internal error"), false
}

// notFound is the code of "not found" on the route.
func (rt route) notFound() errCode {
	switch rt.kind {
	case routeManifest, routeReferrers:
		return codeManifestUnknown
	case routeBlob:
		return codeBlobUnknown
	case routeUploads, routeUpload:
		return codeBlobUploadUnknown
	case routeTags, routeCatalog:
		return codeNameUnknown
	}
	return codeNotFound
}

// what names the route's object in messages.
func (rt route) what() string {
	switch rt.kind {
	case routeManifest:
		return "manifest " + rt.name + ":" + rt.ref
	case routeBlob:
		return "blob " + rt.ref
	case routeReferrers:
		return "referrers of " + rt.name + "@" + rt.ref
	case routeTags:
		return "repository " + rt.name
	case routeUploads, routeUpload:
		return "upload to " + rt.name
	}
	return "request"
}

// errorFormat is how an error body is written.
type errorFormat int

const (
	formatRegistry errorFormat = iota // {"errors":[{code,message,detail}]}
	formatToken                       // the same, plus "details", as Docker's token clients read it
	formatText                        // plain text, for the status page
)

type errorBody struct {
	Errors  []errorEntry `json:"errors"`
	Details string       `json:"details,omitempty"`
}

type errorEntry struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	Detail  any    `json:"detail,omitempty"`
}

// writeError is the one place an error response is written: it maps err
// (registryError), logs berth's own failures once, and renders the body.
// It returns the status written. A client that left is not logged.
func (s *Server) writeError(w http.ResponseWriter, r *http.Request, err error, rt route, format errorFormat) int {
	re, known := registryError(err, rt)
	switch {
	case re.Code == codeStorageFull:
		// The server's problem, not the client's: 507, logged and counted,
		// shown on the status page.
		s.diskFullAt.Store(time.Now().UnixNano())
		s.m.diskFull.Inc()
		s.log.Error("disk full: request refused, nothing stored", "method", r.Method, "path", r.URL.Path, "err", err)
	case !known && !errors.Is(err, context.Canceled):
		s.log.Error("request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	}
	for k, v := range re.Header {
		w.Header()[k] = v
	}
	status := re.Code.status
	var body []byte
	switch format {
	case formatText:
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		body = []byte(re.Code.name + ": " + re.Message + "\n")
	default:
		eb := errorBody{Errors: []errorEntry{{Code: re.Code.name, Message: re.Message, Detail: re.Detail}}}
		if format == formatToken {
			eb.Details = re.Message
		}
		body, _ = json.Marshal(eb)
		w.Header().Set("Content-Type", "application/json")
	}
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	if r.Method != http.MethodHead {
		w.Write(body)
	}
	return status
}

// handle adapts an endpoint that returns its error (admin, token) to an
// http.HandlerFunc that writes it with writeError.
func (s *Server) handle(format errorFormat, f func(w http.ResponseWriter, r *http.Request) error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		sw := &statusWriter{ResponseWriter: w}
		if err := f(sw, r); err != nil && sw.status == 0 {
			s.writeError(sw, r, err, route{}, format)
		}
	}
}
