package server

import (
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"sync"

	"github.com/berth-registry/berth/internal/fetch"
)

// copyBufs are the buffers of streamed downloads that cannot use sendfile.
var copyBufs = sync.Pool{New: func() any { b := make([]byte, 256<<10); return &b }}

// streamTo sends a whole blob while it downloads: each stretch that has
// arrived goes out with sendfile from the temp file (which stays open
// when it is committed or removed), so following a download costs no
// user-space copy; 256 KiB buffered copies if the file cannot be
// reopened. A send that fails is recorded on rd (rd.Err).
func streamTo(rd *fetch.Reader, w http.ResponseWriter, log *slog.Logger) {
	d := rd.Digest()
	blobHeaders(w, d)
	w.Header().Set("Content-Length", strconv.FormatInt(rd.Size(), 10))
	w.WriteHeader(http.StatusOK)
	f, err := rd.OpenFile()
	if err != nil {
		log.Warn("cannot reopen a download for sendfile, copying", "digest", d, "err", err)
		bp := copyBufs.Get().(*[]byte)
		defer copyBufs.Put(bp)
		if _, err := io.CopyBuffer(writerOnly{w}, rd, *bp); err != nil {
			rd.Fail(err)
		}
		return
	}
	defer f.Close()
	for {
		n, err := rd.Available()
		if err != nil {
			rd.Fail(err)
			return
		}
		if _, err := f.Seek(rd.Offset(), io.SeekStart); err != nil {
			rd.Fail(err)
			return
		}
		m, err := io.CopyN(w, f, n)
		rd.Advance(m)
		if err != nil {
			rd.Fail(err)
			return
		}
	}
}

// writerOnly hides a writer's ReadFrom, so io.Copy uses its buffer.
type writerOnly struct{ io.Writer }
