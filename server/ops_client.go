package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"

	"github.com/berth-registry/berth/internal/replicate"
)

// AdminClient does the Ops (and prefetch) on a running berth over its
// admin listener: Base is its URL ("http://localhost" for a Unix socket,
// whose dialing HTTP's transport does).
type AdminClient struct {
	Base string
	HTTP *http.Client
}

var _ Ops = AdminClient{}

// UnreachableError is an admin listener that did not answer: no berth
// runs there.
type UnreachableError struct{ Err error }

func (e *UnreachableError) Error() string { return e.Err.Error() }
func (e *UnreachableError) Unwrap() error { return e.Err }

// ErrNotAdmin: what answered is not a berth admin listener (a 404 without
// a registry error: the registry's own address, say).
var ErrNotAdmin = errors.New("not a berth admin listener")

func (a AdminClient) do(ctx context.Context, method, path string, body io.Reader) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, a.Base+path, body)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := a.HTTP.Do(req)
	if err != nil {
		return nil, &UnreachableError{err}
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		return nil, adminFailure(resp)
	}
	return resp, nil
}

// adminFailure reads the registry error a non-200 answer carries.
func adminFailure(resp *http.Response) error {
	var body struct {
		Errors []struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"errors"`
	}
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if json.Unmarshal(raw, &body) == nil && len(body.Errors) > 0 {
		return fmt.Errorf("the running berth answered %s: %s: %s", resp.Status, body.Errors[0].Code, body.Errors[0].Message)
	}
	if resp.StatusCode == http.StatusNotFound {
		return fmt.Errorf("%w (it answered 404)", ErrNotAdmin)
	}
	return fmt.Errorf("the running berth answered %s: %s", resp.Status, strings.TrimSpace(string(raw)))
}

func (a AdminClient) GC(ctx context.Context, req GCRequest) (GCReply, error) {
	q := url.Values{}
	if req.Grace >= 0 {
		q.Set("grace", req.Grace.String())
	}
	if req.DryRun {
		q.Set("dry_run", "1")
	}
	var res GCReply
	resp, err := a.do(ctx, http.MethodPost, "/admin/gc?"+q.Encode(), nil)
	if err != nil {
		return res, err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(io.LimitReader(resp.Body, 16<<20)).Decode(&res); err != nil {
		return res, fmt.Errorf("reading the running berth's answer: %w", err)
	}
	return res, nil
}

func (a AdminClient) Backup(ctx context.Context, w io.Writer) (int64, error) {
	resp, err := a.do(ctx, http.MethodGet, "/admin/backup", nil)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	return io.Copy(w, resp.Body)
}

func (a AdminClient) List(ctx context.Context, filter string) ([]ListEntry, error) {
	resp, err := a.do(ctx, http.MethodGet, "/admin/ls?filter="+url.QueryEscape(filter), nil)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var list []ListEntry
	if err := json.NewDecoder(resp.Body).Decode(&list); err != nil {
		return nil, fmt.Errorf("reading the running berth's answer: %w", err)
	}
	return list, nil
}

// PrefetchRequest is the body of POST /admin/prefetch.
type PrefetchRequest struct {
	Images       []string `json:"images"`
	Platforms    []string `json:"platforms"`
	AllPlatforms bool     `json:"all_platforms"`
	AllTags      bool     `json:"all_tags"`
}

// Prefetch asks the running berth to prefetch req's images; each event
// it streams goes to progress (called from this goroutine).
func (a AdminClient) Prefetch(ctx context.Context, req PrefetchRequest, progress func(PrefetchEvent)) error {
	return streamEvents(ctx, a, "/admin/prefetch", req, progress)
}

// Replicate asks the running berth to run a replication; each event it
// streams goes to progress (called from this goroutine).
func (a AdminClient) Replicate(ctx context.Context, req ReplicateRequest, progress func(replicate.Event)) error {
	return streamEvents(ctx, a, "/admin/replicate", req, progress)
}

// streamEvents posts req to path and hands each JSON line of the answer
// to progress.
func streamEvents[E any](ctx context.Context, a AdminClient, path string, req any, progress func(E)) error {
	body, err := json.Marshal(req)
	if err != nil {
		return err
	}
	resp, err := a.do(ctx, http.MethodPost, path, strings.NewReader(string(body)))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	dec := json.NewDecoder(resp.Body)
	for {
		var ev E
		if err := dec.Decode(&ev); err == io.EOF {
			return nil
		} else if err != nil {
			return fmt.Errorf("reading the running berth's answer: %w", err)
		}
		progress(ev)
	}
}

// lineEvents sends events as JSON lines, flushed, from any goroutine.
type lineEvents struct {
	mu  sync.Mutex
	enc *json.Encoder
	w   http.ResponseWriter
}

func (p *lineEvents) send(ev any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.enc.Encode(ev)
	http.NewResponseController(p.w).Flush()
}
