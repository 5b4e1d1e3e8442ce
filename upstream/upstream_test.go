package upstream

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"
)

func TestParseChallenge(t *testing.T) {
	for _, tt := range []struct {
		in     string
		scheme string
		params map[string]string
	}{
		{`Bearer realm="https://auth.docker.io/token",service="registry.docker.io"`, "Bearer",
			map[string]string{"realm": "https://auth.docker.io/token", "service": "registry.docker.io"}},
		{`Bearer realm="https://x/token",service="x",scope="repository:a/b:pull,push"`, "Bearer",
			map[string]string{"realm": "https://x/token", "service": "x", "scope": "repository:a/b:pull,push"}},
		{`Basic realm="Registry Realm"`, "Basic", map[string]string{"realm": "Registry Realm"}},
		{`Bearer realm=unquoted, service=s`, "Bearer", map[string]string{"realm": "unquoted", "service": "s"}},
		{`Bearer realm="esc\"aped"`, "Bearer", map[string]string{"realm": `esc"aped`}},
		{`Bearer`, "Bearer", map[string]string{}},
		{`Bearer realm="unterminated`, "Bearer", map[string]string{"realm": "unterminated"}},
	} {
		scheme, params := parseChallenge(tt.in)
		if scheme != tt.scheme || len(params) != len(tt.params) {
			t.Errorf("%q: %q %v", tt.in, scheme, params)
			continue
		}
		for k, v := range tt.params {
			if params[k] != v {
				t.Errorf("%q: %s=%q, want %q", tt.in, k, params[k], v)
			}
		}
	}
}

func TestErrorClasses(t *testing.T) {
	for status, want := range map[int]error{404: ErrNotFound, 429: ErrUnavailable, 503: ErrUnavailable, 500: ErrUnavailable,
		408: ErrUnavailable, 401: ErrDenied, 403: ErrDenied} {
		if err := (&Error{StatusCode: status}); !errors.Is(err, want) {
			t.Errorf("%d is not %v", status, want)
		}
	}
	if errors.Is(&Error{StatusCode: 400}, ErrUnavailable) {
		t.Error("400 classed as unavailable")
	}
	if err := error(&transportError{io.ErrUnexpectedEOF}); !errors.Is(err, ErrUnavailable) || !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Error("transport error classes")
	}
}

func TestRetryAfter(t *testing.T) {
	if d, ok := retryAfter("7"); !ok || d != 7*time.Second {
		t.Errorf("seconds: %v %v", d, ok)
	}
	if d, ok := retryAfter(time.Now().Add(time.Hour).UTC().Format(http.TimeFormat)); !ok || d < 59*time.Minute {
		t.Errorf("date: %v %v", d, ok)
	}
	if _, ok := retryAfter("soon"); ok {
		t.Error("garbage accepted")
	}
}

func TestRetryTransport(t *testing.T) {
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/flaky":
			if calls.Add(1) < 3 {
				w.WriteHeader(502)
				return
			}
			io.WriteString(w, "ok")
		case "/bad":
			calls.Add(1)
			w.WriteHeader(400)
		}
	}))
	defer srv.Close()
	rt := &retryTransport{inner: http.DefaultTransport, attempts: 3, base: time.Millisecond, maxWait: time.Second}

	req, _ := http.NewRequest("GET", srv.URL+"/flaky", nil)
	resp, err := rt.RoundTrip(req)
	if err != nil || resp.StatusCode != 200 || calls.Load() != 3 {
		t.Fatalf("flaky: %v %v after %d calls", resp, err, calls.Load())
	}
	resp.Body.Close()

	calls.Store(0)
	req, _ = http.NewRequest("GET", srv.URL+"/bad", nil)
	resp, _ = rt.RoundTrip(req)
	if resp.StatusCode != 400 || calls.Load() != 1 {
		t.Fatalf("400 was retried: %d calls", calls.Load())
	}
	resp.Body.Close()

	// Non-idempotent requests are never retried.
	calls.Store(0)
	req, _ = http.NewRequest("POST", srv.URL+"/flaky", http.NoBody)
	resp, _ = rt.RoundTrip(req)
	if calls.Load() != 1 {
		t.Fatalf("POST retried: %d calls", calls.Load())
	}
	resp.Body.Close()

	// A cancelled context stops the backoff.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	req, _ = http.NewRequestWithContext(ctx, "GET", srv.URL+"/flaky", nil)
	if _, err := rt.RoundTrip(req); err == nil {
		t.Fatal("cancelled request succeeded")
	}
}

func TestNewValidatesURL(t *testing.T) {
	for _, u := range []string{"ftp://x", "https://", "https://x/path", "https://user:pw@x", "https://x?q=1", "::"} {
		if _, err := New(Options{URL: u}); err == nil {
			t.Errorf("%q accepted", u)
		}
	}
	c, err := New(Options{URL: "http://127.0.0.1:5000/"})
	if err != nil || c.Host() != "127.0.0.1:5000" || c.URL() != "http://127.0.0.1:5000" {
		t.Fatalf("%v %v", c, err)
	}
}
