package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
)

// Upload sessions hold disk until they finish or expire (upload_ttl), so
// what one owner (a user, or an anonymous client's address) and all
// together may hold is capped by sessions and by bytes received; a
// session or chunk past a cap is answered 429 and the others go on. A
// chunk that would pass a byte cap is cut there and fails whole (the
// store keeps the upload as it was before the chunk).

// UploadLimits are the caps; zero fields take the defaults.
type UploadLimits struct {
	Sessions, SessionsPerOwner int   // 1000, 100
	Bytes, BytesPerOwner       int64 // 32 GiB, 8 GiB
}

func (l *UploadLimits) setDefaults() {
	if l.Sessions <= 0 {
		l.Sessions = 1000
	}
	if l.SessionsPerOwner <= 0 {
		l.SessionsPerOwner = 100
	}
	if l.Bytes <= 0 {
		l.Bytes = 32 << 30
	}
	if l.BytesPerOwner <= 0 {
		l.BytesPerOwner = 8 << 30
	}
}

// uploadOwner names who a push belongs to, for the caps.
func uploadOwner(r *http.Request) string {
	if p := infoOf(r.Context()).principal; p.user != nil {
		return "user:" + p.user.Name
	}
	return "addr:" + clientAddr(r)
}

// errUploadQuota is a push past a cap.
var errUploadQuota = errors.New("upload quota")

func (h *hosted) quotaError(bound, msg string) error {
	s := h.s
	s.m.refused.WithLabelValues(bound).Inc()
	return &regError{Code: codeTooManyRequests, Message: msg, Header: http.Header{"Retry-After": {"30"}}}
}

// uploadSessionRoom refuses a new session past the session caps.
func (h *hosted) uploadSessionRoom(ctx context.Context, owner string) error {
	s := h.s
	use, err := s.pushes.UploadUsage(ctx)
	if err != nil {
		return err
	}
	l := s.opts.Uploads
	if use.Sessions >= l.Sessions || use.Owner[owner].Sessions >= l.SessionsPerOwner {
		return h.quotaError("uploads", fmt.Sprintf("too many unfinished uploads (%d of yours, %d in all): finish or cancel some", use.Owner[owner].Sessions, use.Sessions))
	}
	if use.Bytes >= l.Bytes || use.Owner[owner].Bytes >= l.BytesPerOwner {
		return h.quotaError("upload_bytes", "unfinished uploads hold too many bytes: finish or cancel some")
	}
	return nil
}

// uploadBody bounds a chunk of owner's at the bytes the caps leave; the
// returned check tells whether the chunk was cut (then it is 429).
func (h *hosted) uploadBody(ctx context.Context, owner string, body io.Reader) (io.Reader, func(error) error, error) {
	s := h.s
	use, err := s.pushes.UploadUsage(ctx)
	if err != nil {
		return nil, nil, err
	}
	l := s.opts.Uploads
	room := min(l.Bytes-use.Bytes, l.BytesPerOwner-use.Owner[owner].Bytes, s.opts.MaxBlobSize)
	if room <= 0 {
		return nil, nil, h.quotaError("upload_bytes", "unfinished uploads hold too many bytes: finish or cancel some")
	}
	cb := &boundedReader{r: body, left: room, errOver: errUploadQuota}
	return cb, func(err error) error {
		if cb.over {
			return h.quotaError("upload_bytes", fmt.Sprintf("the chunk passes the bytes unfinished uploads may hold (%d left)", room))
		}
		return err
	}, nil
}
