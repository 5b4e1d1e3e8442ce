package server

import (
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/berth-registry/berth/store"
)

// blobHeaders sets the headers of a blob answer (end-2).
func blobHeaders(w http.ResponseWriter, d store.Digest) {
	h := w.Header()
	h.Set("Content-Type", "application/octet-stream")
	h.Set("Docker-Content-Digest", d.String())
	h.Set("Etag", `"`+d.String()+`"`)
}

// serveBlobFile writes a blob with http.ServeContent (Range, HEAD,
// conditional requests, sendfile) (end-2).
func serveBlobFile(w http.ResponseWriter, r *http.Request, d store.Digest, f io.ReadSeeker) {
	blobHeaders(w, d)
	w.Header().Set("Cache-Control", "max-age=31536000, immutable")
	http.ServeContent(w, r, "", time.Time{}, f)
}

// serveManifest writes a stored manifest with its headers (end-3).
func serveManifest(w http.ResponseWriter, r *http.Request, m store.Manifest) error {
	h := w.Header()
	h.Set("Content-Type", m.MediaType)
	h.Set("Docker-Content-Digest", m.Digest.String())
	h.Set("Etag", `"`+m.Digest.String()+`"`)
	if inm := r.Header.Get("If-None-Match"); inm != "" && etagMatch(inm, m.Digest.String()) {
		w.WriteHeader(http.StatusNotModified)
		return nil
	}
	h.Set("Content-Length", strconv.Itoa(len(m.Body)))
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodGet {
		infoOf(r.Context()).pulled = m.Digest // a pull, counted when the response is done
	}
	if r.Method != http.MethodHead {
		w.Write(m.Body)
	}
	return nil
}

func etagMatch(header, digest string) bool {
	for _, t := range strings.Split(header, ",") {
		t = strings.TrimPrefix(strings.TrimSpace(t), "W/")
		if t == "*" || strings.Trim(t, `"`) == digest {
			return true
		}
	}
	return false
}

func writeTagList(w http.ResponseWriter, r *http.Request, name string, tags []string) error {
	if tags == nil {
		tags = []string{}
	}
	return writeJSON(w, r, map[string]any{"name": name, "tags": tags})
}

func writeJSON(w http.ResponseWriter, r *http.Request, v any) error {
	w.Header().Set("Content-Type", "application/json")
	return writeJSONTyped(w, r, v)
}

// writeJSONTyped writes v as JSON with the Content-Type already set.
func writeJSONTyped(w http.ResponseWriter, r *http.Request, v any) error {
	body, err := json.Marshal(v)
	if err != nil {
		return err
	}
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		w.Write(body)
	}
	return nil
}

// decodeJSON reads an upstream JSON body of at most 32 MiB.
func decodeJSON(r io.Reader, v any) error {
	return json.NewDecoder(io.LimitReader(r, 32<<20)).Decode(v)
}

// statusWriter records the status and body bytes of a response. It keeps
// io.ReaderFrom so that files are still sent with sendfile.
type statusWriter struct {
	http.ResponseWriter
	status int
	bytes  int64
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(p)
	w.bytes += int64(n)
	return n, err
}

func (w *statusWriter) ReadFrom(r io.Reader) (int64, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	var n int64
	var err error
	if rf, ok := w.ResponseWriter.(io.ReaderFrom); ok {
		n, err = rf.ReadFrom(r)
	} else {
		n, err = io.Copy(w.ResponseWriter, r)
	}
	w.bytes += n
	return n, err
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (w *statusWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}
