package server

import (
	"bytes"
	"context"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/berth-registry/berth/store"
	"github.com/berth-registry/berth/store/storetest"
)

// startDownload joins a download of blob whose commit blocks until
// release is closed, and whose body is body.
func startDownload(t *testing.T, blob, body []byte, release chan struct{}) (*download, chan error) {
	t.Helper()
	st := storetest.Open(t)
	g := newFetchGroup(time.Minute, nil, nil)
	committed := make(chan error, 1)
	dl, _, err := g.join(store.DigestOf(blob),
		func() (*store.BlobWriter, error) { return st.NewBlobWriter(context.Background(), "sha256") },
		func(ctx context.Context) (io.ReadCloser, int64, error) {
			return io.NopCloser(bytes.NewReader(body)), int64(len(body)), nil
		},
		func(ctx context.Context, w *store.BlobWriter) error {
			<-release
			_, err := w.Commit(ctx, store.DigestOf(blob), -1)
			return err
		},
		func(err error) { committed <- err })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(dl.release)
	return dl, committed
}

// TestReadersFinishBeforeCommit: once the digest is verified a reader gets
// the whole blob while the commit (fsync, rename, index) is still going.
func TestReadersFinishBeforeCommit(t *testing.T) {
	blob := bytes.Repeat([]byte("berth"), 100_000)
	release := make(chan struct{})
	defer close(release)
	dl, _ := startDownload(t, blob, blob, release)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	got, err := io.ReadAll(dl.reader(ctx, int64(len(blob))))
	if err != nil || !bytes.Equal(got, blob) {
		t.Fatalf("read %d bytes, %v, before the commit finished", len(got), err)
	}
}

// TestUnverifiedLastByteHeld: a body that does not hash to the digest is
// never read whole, commit or not; the reader ends one byte short with
// the download's error.
func TestUnverifiedLastByteHeld(t *testing.T) {
	for name, body := range map[string][]byte{
		"wrong":    bytes.Repeat([]byte("htreb"), 100_000),
		"empty":    {},
		"one byte": {'x'},
	} {
		t.Run(name, func(t *testing.T) {
			blob := bytes.Repeat([]byte("berth"), 100_000)
			release := make(chan struct{})
			close(release)
			dl, committed := startDownload(t, blob, body, release)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			rd := dl.reader(ctx, int64(len(body)))
			got, err := io.ReadAll(rd)
			if !errors.Is(err, errDownloadFailed) || !errors.Is(err, store.ErrDigestMismatch) {
				t.Fatalf("read error %v, want the digest mismatch", err)
			}
			if len(body) > 0 && len(got) != len(body)-1 {
				t.Fatalf("read %d of %d bytes", len(got), len(body))
			}
			if len(got) == len(body) && len(body) > 0 {
				t.Fatal("whole unverified body read")
			}
			if err := <-committed; !errors.Is(err, store.ErrDigestMismatch) {
				t.Fatalf("download ended with %v", err)
			}
		})
	}
}
