package fetch

import (
	"bytes"
	"context"
	"errors"
	"io"
	"syscall"
	"testing"
	"time"

	"github.com/berth-registry/berth/store"
	"github.com/berth-registry/berth/store/storetest"
)

// storeTemps makes a download's temp files in st.
func storeTemps(st *store.Store) func(ctx context.Context, alg string) (TempBlob, error) {
	return func(ctx context.Context, alg string) (TempBlob, error) { return st.NewBlobWriter(ctx, alg) }
}

// slowCommit is a temp file whose Commit waits until release is closed.
type slowCommit struct {
	TempBlob
	release chan struct{}
}

func (c slowCommit) Commit(ctx context.Context, want store.Digest, size int64, links ...store.Link) (store.BlobInfo, error) {
	<-c.release
	return c.TempBlob.Commit(ctx, want, size, links...)
}

// startDownload joins a download of blob whose commit blocks until
// release is closed, and whose body is body.
func startDownload(t *testing.T, blob, body []byte, release chan struct{}) (*Download, chan error) {
	t.Helper()
	st := storetest.Open(t)
	g := NewGroup(Config{Timeout: time.Minute, NewTemp: func(ctx context.Context, alg string) (TempBlob, error) {
		w, err := st.NewBlobWriter(ctx, alg)
		return slowCommit{w, release}, err
	}})
	committed := make(chan error, 1)
	dl, _, err := g.Join(context.Background(), Job{
		Want: store.DigestOf(blob),
		Fetch: func(ctx context.Context, _, _ int64) (io.ReadCloser, int64, error) {
			return io.NopCloser(bytes.NewReader(body)), int64(len(body)), nil
		},
		Ended: func(err error) { committed <- err },
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(dl.Release)
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
	got, err := io.ReadAll(dl.Reader(ctx, int64(len(blob))))
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
			rd := dl.Reader(ctx, int64(len(body)))
			got, err := io.ReadAll(rd)
			if !errors.Is(err, ErrDownloadFailed) || !errors.Is(err, store.ErrDigestMismatch) {
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

// fullDisk is a temp file on a disk that fills up after room bytes, or
// whose commit fails.
type fullDisk struct {
	TempBlob
	room      int64
	commitErr error
}

func (f *fullDisk) Write(p []byte) (int, error) {
	if int64(len(p)) > f.room {
		n, _ := f.TempBlob.Write(p[:f.room])
		f.room = 0
		return n, syscall.ENOSPC
	}
	f.room -= int64(len(p))
	return f.TempBlob.Write(p)
}

func (f *fullDisk) Commit(ctx context.Context, want store.Digest, size int64, links ...store.Link) (store.BlobInfo, error) {
	if f.commitErr != nil {
		return store.BlobInfo{}, f.commitErr
	}
	return f.TempBlob.Commit(ctx, want, size, links...)
}

// TestDownloadOnFailingDisk: a disk that fills mid-blob ends every reader
// with ErrStoreWrite (their cue to pass the upstream through) after a
// correct prefix of what was written; a commit that fails after verification does
// not take back the verified bytes readers already have, and the failure
// reaches the download's end.
func TestDownloadOnFailingDisk(t *testing.T) {
	blob := bytes.Repeat([]byte("berth"), 200_000) // 1 MB
	d := store.DigestOf(blob)
	body := func(ctx context.Context, _, _ int64) (io.ReadCloser, int64, error) {
		return io.NopCloser(bytes.NewReader(blob)), int64(len(blob)), nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	t.Run("full mid-blob", func(t *testing.T) {
		st := storetest.Open(t)
		g := NewGroup(Config{Timeout: time.Minute, NewTemp: func(ctx context.Context, alg string) (TempBlob, error) {
			w, err := st.NewBlobWriter(ctx, alg)
			return &fullDisk{TempBlob: w, room: 300_000}, err
		}})
		ended := make(chan error, 1)
		dl, _, err := g.Join(ctx, Job{Want: d, Fetch: body, Ended: func(err error) { ended <- err }})
		if err != nil {
			t.Fatal(err)
		}
		defer dl.Release()
		got, err := io.ReadAll(dl.Reader(ctx, int64(len(blob))))
		if !errors.Is(err, ErrStoreWrite) || !errors.Is(err, syscall.ENOSPC) {
			t.Fatalf("reader error %v, want ErrStoreWrite with ENOSPC", err)
		}
		// Readers see whole chunks that reached the disk: a prefix of
		// the blob, never past what fitted.
		if len(got) == 0 || len(got) > 300_000 || !bytes.Equal(got, blob[:len(got)]) {
			t.Fatalf("reader got %d bytes, want a prefix of the 300000 written", len(got))
		}
		if err := <-ended; !errors.Is(err, ErrStoreWrite) {
			t.Fatalf("download ended with %v", err)
		}
		if _, err := st.StatBlob(ctx, d); !store.IsNotFound(err) {
			t.Fatalf("a blob that did not fit is in the store: %v", err)
		}
	})

	t.Run("commit fails", func(t *testing.T) {
		st := storetest.Open(t)
		g := NewGroup(Config{Timeout: time.Minute, NewTemp: func(ctx context.Context, alg string) (TempBlob, error) {
			w, err := st.NewBlobWriter(ctx, alg)
			return &fullDisk{TempBlob: w, room: 1 << 30, commitErr: syscall.EIO}, err
		}})
		ended := make(chan error, 1)
		dl, _, err := g.Join(ctx, Job{Want: d, Fetch: body, Ended: func(err error) { ended <- err }})
		if err != nil {
			t.Fatal(err)
		}
		defer dl.Release()
		if err := <-ended; !errors.Is(err, syscall.EIO) {
			t.Fatalf("download ended with %v, want the commit's EIO", err)
		}
		if err := dl.WaitVerified(ctx); err != nil {
			t.Fatalf("verified bytes taken back after a failed commit: %v", err)
		}
		got, err := io.ReadAll(dl.Reader(ctx, int64(len(blob))))
		if err != nil || !bytes.Equal(got, blob) {
			t.Fatalf("read %d bytes, %v", len(got), err)
		}
		if _, err := st.StatBlob(ctx, d); !store.IsNotFound(err) {
			t.Fatalf("a blob whose commit failed is in the store: %v", err)
		}
	})
}

// TestJoinAfterTheBlobIsStored: a join that comes after a download ended
// (its caller looked at the store just before the blob landed) starts no
// second download: ErrStored sends it to the store.
func TestJoinAfterTheBlobIsStored(t *testing.T) {
	st := storetest.Open(t)
	blob := []byte("a config blob")
	d := store.DigestOf(blob)
	fetches := 0
	g := NewGroup(Config{Timeout: time.Minute, NewTemp: storeTemps(st),
		Stored: func(ctx context.Context, d store.Digest) bool { _, err := st.StatBlob(ctx, d); return err == nil }})
	job := func(ended chan error) Job {
		return Job{Want: d, Link: store.Link{Repo: "r/a", Kind: store.LinkFetched},
			Fetch: func(ctx context.Context, _, _ int64) (io.ReadCloser, int64, error) {
				fetches++
				return io.NopCloser(bytes.NewReader(blob)), int64(len(blob)), nil
			},
			Ended: func(err error) { ended <- err }}
	}
	ended := make(chan error, 1)
	dl, leader, err := g.Join(context.Background(), job(ended))
	if err != nil || !leader {
		t.Fatalf("first join: %v %v", leader, err)
	}
	dl.Release()
	if err := <-ended; err != nil {
		t.Fatal(err)
	}
	for g.Active() > 0 {
		time.Sleep(time.Millisecond)
	}
	if _, _, err := g.Join(context.Background(), job(make(chan error, 1))); !errors.Is(err, ErrStored) {
		t.Fatalf("a join after the blob was stored: %v, want ErrStored", err)
	}
	if fetches != 1 {
		t.Fatalf("fetched %d times", fetches)
	}
}
