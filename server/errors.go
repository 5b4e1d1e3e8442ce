package server

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"

	"github.com/berth-registry/berth/store"
	"github.com/berth-registry/berth/upstream"
)

// Registry error codes of the distribution spec, and the status each one
// is answered with.
const (
	codeBlobUnknown         = "BLOB_UNKNOWN"
	codeBlobUploadInvalid   = "BLOB_UPLOAD_INVALID"
	codeBlobUploadUnknown   = "BLOB_UPLOAD_UNKNOWN"
	codeDigestInvalid       = "DIGEST_INVALID"
	codeManifestBlobUnknown = "MANIFEST_BLOB_UNKNOWN"
	codeManifestInvalid     = "MANIFEST_INVALID"
	codeManifestUnknown     = "MANIFEST_UNKNOWN"
	codeNameInvalid         = "NAME_INVALID"
	codeNameUnknown         = "NAME_UNKNOWN"
	codeSizeInvalid         = "SIZE_INVALID"
	codeUnauthorized        = "UNAUTHORIZED"
	codeDenied              = "DENIED"
	codeUnsupported         = "UNSUPPORTED"
	codeTooManyRequests     = "TOOMANYREQUESTS"
	codeRangeInvalid        = "RANGE_INVALID"
	codeNotFound            = "NOT_FOUND"   // no such endpoint
	codeUnavailable         = "UNAVAILABLE" // upstream unreachable, nothing cached
	codeUnknown             = "UNKNOWN"
	codeStorageFull         = "STORAGE_FULL" // berth's disk is full: 507
)

var statusOf = map[string]int{
	codeBlobUnknown:         http.StatusNotFound,
	codeBlobUploadInvalid:   http.StatusBadRequest,
	codeBlobUploadUnknown:   http.StatusNotFound,
	codeDigestInvalid:       http.StatusBadRequest,
	codeManifestBlobUnknown: http.StatusBadRequest,
	codeManifestInvalid:     http.StatusBadRequest,
	codeManifestUnknown:     http.StatusNotFound,
	codeNameInvalid:         http.StatusBadRequest,
	codeNameUnknown:         http.StatusNotFound,
	codeSizeInvalid:         http.StatusBadRequest,
	codeUnauthorized:        http.StatusUnauthorized,
	codeDenied:              http.StatusForbidden,
	codeUnsupported:         http.StatusMethodNotAllowed,
	codeTooManyRequests:     http.StatusTooManyRequests,
	codeRangeInvalid:        http.StatusRequestedRangeNotSatisfiable,
	codeNotFound:            http.StatusNotFound,
	codeUnavailable:         http.StatusServiceUnavailable,
	codeUnknown:             http.StatusInternalServerError,
	codeStorageFull:         http.StatusInsufficientStorage,
}

// regError is the one error type handlers return for protocol errors.
type regError struct {
	Code    string
	Message string
	Detail  any
	// Status overrides the code's status (413 for an oversize manifest).
	Status int
	// Header is added to the response (Retry-After, Range, ...).
	Header http.Header
}

func (e *regError) Error() string { return e.Code + ": " + e.Message }

func errf(code, format string, args ...any) *regError {
	return &regError{Code: code, Message: fmt.Sprintf(format, args...)}
}

// withDetail returns e with a detail object.
func (e *regError) withDetail(d any) *regError { e.Detail = d; return e }

// errUpstreamBroken marks an upstream answer that arrived but cannot be
// used: a body cut short, bytes that do not match their digest, a
// manifest that does not parse. Clients get 503 UNAVAILABLE naming it.
var errUpstreamBroken = errors.New("upstream sent a broken answer")

// fromUpstream maps an upstream failure to the error the client sees.
// notFound is the code for an upstream 404 (MANIFEST_UNKNOWN, BLOB_UNKNOWN).
func fromUpstream(err error, notFound, what string) error {
	var ue *upstream.Error
	switch {
	case errors.Is(err, upstream.ErrNotFound):
		return errf(notFound, "%s not found upstream", what)
	case errors.As(err, &ue) && ue.StatusCode == http.StatusTooManyRequests:
		e := errf(codeTooManyRequests, "upstream rate limit for %s", what)
		if ue.RetryAfter != "" {
			e.Header = http.Header{"Retry-After": {ue.RetryAfter}}
		}
		return e
	case errors.Is(err, upstream.ErrDenied):
		return errf(codeDenied, "upstream denied access to %s", what)
	case errors.Is(err, upstream.ErrUnavailable):
		return errf(codeUnavailable, "upstream unavailable for %s and nothing cached", what).withDetail(err.Error())
	case errors.Is(err, errUpstreamBroken):
		return errf(codeUnavailable, "%s: %v; nothing cached", what, err)
	}
	return fmt.Errorf("upstream %s: %w", what, err)
}

type errorBody struct {
	Errors []errorEntry `json:"errors"`
}

type errorEntry struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	Detail  any    `json:"detail,omitempty"`
}

// writeError renders err as a registry error response and returns the
// status written. Unknown errors become 500 UNKNOWN with a generic message
// (the real one is logged by the caller, once).
func writeError(w http.ResponseWriter, r *http.Request, err error) int {
	var re *regError
	if !errors.As(err, &re) {
		switch {
		case errors.Is(err, store.ErrDigestInvalid):
			re = errf(codeDigestInvalid, "%v", err)
		default:
			re = errf(codeUnknown, "internal error")
		}
	}
	status := re.Status
	if status == 0 {
		status = statusOf[re.Code]
	}
	if status == 0 {
		status = http.StatusInternalServerError
	}
	for k, v := range re.Header {
		w.Header()[k] = v
	}
	body, _ := json.Marshal(errorBody{Errors: []errorEntry{{Code: re.Code, Message: re.Message, Detail: re.Detail}}})
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	if r.Method != http.MethodHead {
		w.Write(body)
	}
	return status
}
