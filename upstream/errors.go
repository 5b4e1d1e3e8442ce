package upstream

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
)

// Sentinels matched with errors.Is against an *Error or a transport error.
var (
	// ErrNotFound is matched by an upstream 404.
	ErrNotFound = errors.New("upstream: not found")
	// ErrUnavailable is matched by network errors, timeouts, 408, 429 and
	// 5xx answers: the upstream could not answer now.
	ErrUnavailable = errors.New("upstream: unavailable")
	// ErrDenied is matched by 401 and 403 answers that survived the auth
	// exchange.
	ErrDenied = errors.New("upstream: access denied")
	// ErrBudgetSpent is matched by the 429 a Client answers itself, without
	// asking, while the upstream's pull budget is spent (it also matches
	// ErrUnavailable, as the upstream's own 429 would).
	ErrBudgetSpent = errors.New("upstream: pull budget spent")
)

// maxErrorBody caps how much of an error response body is read.
const maxErrorBody = 64 << 10

// Error is an upstream answer that was not a success.
type Error struct {
	Method     string
	URL        string
	StatusCode int
	// Code and Message are the first entry of the registry's error body,
	// when it had one.
	Code    string
	Message string
	// RetryAfter is the Retry-After header of a 429 or 503.
	RetryAfter string
	// Header holds the answer's headers (the rate-limit ones are read).
	Header http.Header
	// Refused is set on the 429 the Client answered itself because the
	// pull budget is spent; nothing was sent.
	Refused bool
}

func (e *Error) Error() string {
	msg := fmt.Sprintf("upstream %s %s: %d %s", e.Method, e.URL, e.StatusCode, http.StatusText(e.StatusCode))
	if e.Code != "" {
		msg += ": " + e.Code
		if e.Message != "" {
			msg += " " + e.Message
		}
	}
	return msg
}

// Is lets errors.Is match the sentinels by status.
func (e *Error) Is(target error) bool {
	switch target {
	case ErrNotFound:
		return e.StatusCode == http.StatusNotFound
	case ErrUnavailable:
		return e.StatusCode == http.StatusRequestTimeout || e.StatusCode == http.StatusTooManyRequests || e.StatusCode >= 500
	case ErrDenied:
		return e.StatusCode == http.StatusUnauthorized || e.StatusCode == http.StatusForbidden
	case ErrBudgetSpent:
		return e.Refused
	}
	return false
}

// errorFrom turns a non-success response into an *Error, reading at most
// maxErrorBody of its body, and closes the body.
func errorFrom(resp *http.Response) *Error {
	defer resp.Body.Close()
	e := &Error{
		StatusCode: resp.StatusCode,
		RetryAfter: resp.Header.Get("Retry-After"),
		Header:     resp.Header,
	}
	if resp.Request != nil {
		e.Method = resp.Request.Method
		e.URL = redactURL(resp.Request.URL.String())
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	var parsed struct {
		Errors []struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"errors"`
	}
	if json.Unmarshal(body, &parsed) == nil && len(parsed.Errors) > 0 {
		e.Code = parsed.Errors[0].Code
		e.Message = parsed.Errors[0].Message
	}
	return e
}

// redactURL drops the query string, which may carry signed CDN tokens.
func redactURL(u string) string {
	if i := strings.IndexByte(u, '?'); i >= 0 {
		return u[:i]
	}
	return u
}

// transportError marks a network-level failure as ErrUnavailable.
type transportError struct{ err error }

func (e *transportError) Error() string   { return "upstream: " + e.err.Error() }
func (e *transportError) Unwrap() []error { return []error{e.err, ErrUnavailable} }
