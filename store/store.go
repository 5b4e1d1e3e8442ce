package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/berth-registry/berth/internal/guard"
	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

// Errors returned by Store methods; match them with errors.Is.
var (
	// ErrNotFound is returned when a blob, manifest, tag or link is not in
	// the index (or its file is gone).
	ErrNotFound = errors.New("not found")
	// ErrDigestMismatch is returned by BlobWriter.Commit when the written
	// bytes do not hash to the expected digest. Nothing is stored.
	ErrDigestMismatch = errors.New("digest mismatch")
	// ErrSizeMismatch is returned by BlobWriter.Commit when the number of
	// bytes written differs from the expected size. Nothing is stored.
	ErrSizeMismatch = errors.New("size mismatch")
	// ErrClosed is returned by methods called after Close.
	ErrClosed = errors.New("store closed")
	// ErrLocked is returned by Open when another process (a running
	// berth) holds the data directory's index.
	ErrLocked = errors.New("data dir is in use by a running berth")
)

var (
	bucketBlobs     = []byte("blobs")
	bucketLinks     = []byte("links")
	bucketManifests = []byte("manifests")
	bucketTags      = []byte("tags")
	bucketAccess    = []byte("access")
	bucketReferrers = []byte("referrers")
	bucketRefs      = []byte("refs")
	bucketMeta      = []byte("meta")
	bucketPending   = []byte("pending")
	bucketDeleting  = []byte("deleting")
	allBuckets      = [][]byte{bucketBlobs, bucketLinks, bucketManifests, bucketTags, bucketAccess, bucketUploads,
		bucketReferrers, bucketRefs, bucketMeta, bucketPending, bucketDeleting, bucketVerdicts}

	metaBytes = []byte("bytes")
	metaCount = []byte("count")
)

// Options tune a Store. The zero value is ready to use.
type Options struct {
	// Logger receives the store's log lines. Nil discards them.
	Logger *slog.Logger
	// FlushInterval is how often in-memory access times are written to
	// the index. Zero means 5s.
	FlushInterval time.Duration
	// MaxSize caps the bytes of cached (not hosted) content; above
	// HighWater×MaxSize the least recently used is evicted down to
	// LowWater×MaxSize. Zero means no cap.
	MaxSize   int64
	HighWater float64 // zero means 0.9
	LowWater  float64 // zero means 0.8
	// ManualEviction turns off the background evictor: eviction happens
	// only when Evict is called (offline tools, tests).
	ManualEviction bool
	// OpenTimeout bounds the wait for the index lock (held by a running
	// berth). Zero means 5s.
	OpenTimeout time.Duration
	// KeepTmp leaves tmp/ as it is at open (for verify, which reports
	// leftovers instead of removing them).
	KeepTmp bool
}

// Store is berth's local content store. It is safe for concurrent use.
type Store struct {
	dir string
	db  *bolt.DB
	log *slog.Logger

	bytes    atomic.Int64 // sum of blob sizes in the index
	tmpBytes atomic.Int64 // bytes of blobs being written in tmp/ (BlobWriter), toward max_size too
	count    atomic.Int64 // number of blobs in the index

	accessMu sync.Mutex
	access   map[string]accessEntry // digest → last access and hits, not yet flushed
	// flushMu is held by a flush from taking the pending entries until
	// they are committed (or put back); readers that add pending to
	// flushed hold it shared, so they never see an entry in neither.
	flushMu sync.RWMutex

	uploads keyedLocks // serializes the requests of one upload
	digests keyedLocks // serializes commit and delete of one digest
	cache   *memCache  // recently read manifests and tags

	opts     Options
	pinMu    sync.Mutex
	pins     map[string]int  // digest → open readers
	evicting map[string]bool // digests being deleted: not opened
	evictc   chan struct{}
	evictMu  sync.Mutex
	counters counters

	stop   chan struct{}
	wg     sync.WaitGroup
	closed atomic.Bool

	// The store's work by area, each a part of Store (its methods are
	// Store's): upload sessions (uploads.go), eviction and collection
	// (evict.go), the check and repair of berth verify (check.go), and
	// the access times and pulls of blobs (below), the listings of
	// retention (listing.go).
	uploadArea
	evictor
	verifier
	accessLog
	lister
}

// The parts of a Store: each reaches the store it is part of.
type (
	uploadArea struct{ s *Store }
	evictor    struct{ s *Store }
	verifier   struct{ s *Store }
	accessLog  struct{ s *Store }
	lister     struct{ s *Store }
)

// Open opens (creating if needed) the store in dir. It empties dir/tmp,
// which holds only work in progress, and starts the access-time flusher.
func Open(dir string, opts Options) (*Store, error) {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	for _, sub := range []string{"blobs", "tmp", "uploads"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o750); err != nil {
			return nil, fmt.Errorf("store: %w", err)
		}
	}

	timeout := opts.OpenTimeout
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	db, err := openIndex(dir, timeout, opts.KeepTmp)
	if err != nil {
		return nil, err
	}
	if opts.HighWater <= 0 {
		opts.HighWater = 0.9
	}
	if opts.LowWater <= 0 {
		opts.LowWater = 0.8
	}
	schema, err := checkSchema(db)
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("store: %s: %w", dir, err)
	}
	s := &Store{dir: dir, db: db, log: log, access: map[string]accessEntry{}, stop: make(chan struct{}), opts: opts,
		pins: map[string]int{}, evicting: map[string]bool{}, evictc: make(chan struct{}, 1), cache: newMemCache()}
	s.uploadArea, s.evictor, s.verifier, s.accessLog, s.lister = uploadArea{s}, evictor{s}, verifier{s}, accessLog{s}, lister{s}
	err = db.Update(func(tx *bolt.Tx) error { return s.prepare(tx, schema) })
	if err == nil {
		err = s.recover()
	}
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("store: %w", err)
	}
	interval := opts.FlushInterval
	if interval <= 0 {
		interval = 5 * time.Second
	}
	s.wg.Add(2)
	go s.flushLoop(interval)
	go s.evictLoop()
	s.maybeEvict()
	return s, nil
}

// openIndex opens (takes the lock of) dir's index, then empties dir/tmp
// unless keepTmp: only once the lock is held, never under a running
// berth.
func openIndex(dir string, timeout time.Duration, keepTmp bool) (*bolt.DB, error) {
	db, err := bolt.Open(filepath.Join(dir, "index.db"), 0o600, &bolt.Options{Timeout: timeout})
	if errors.Is(err, bolterrors.ErrTimeout) {
		return nil, fmt.Errorf("store: %s: %w", dir, ErrLocked)
	}
	if err != nil {
		return nil, fmt.Errorf("store: open index: %w", err)
	}
	if !keepTmp {
		if err := emptyDir(filepath.Join(dir, "tmp")); err != nil {
			db.Close()
			return nil, fmt.Errorf("store: empty tmp: %w", err)
		}
	}
	return db, nil
}

// prepare makes the buckets, reads the blob totals (counting them once on
// a first open, or an index from before the totals were kept: afterwards
// start-up reads two keys) and migrates the index from schema.
func (s *Store) prepare(tx *bolt.Tx, schema int64) error {
	for _, b := range allBuckets {
		if _, err := tx.CreateBucketIfNotExists(b); err != nil {
			return err
		}
	}
	meta := tx.Bucket(bucketMeta)
	if meta.Get(metaCount) == nil {
		var n, total int64
		err := tx.Bucket(bucketBlobs).ForEach(func(k, v []byte) error {
			var rec blobRecord
			if err := json.Unmarshal(v, &rec); err != nil {
				return fmt.Errorf("blob record %s: %w", k, err)
			}
			n++
			total += rec.Size
			return nil
		})
		if err != nil {
			return err
		}
		if err := meta.Put(metaCount, encodeInt(n)); err != nil {
			return err
		}
		if err := meta.Put(metaBytes, encodeInt(total)); err != nil {
			return err
		}
	}
	s.count.Store(decodeInt(meta.Get(metaCount)))
	s.bytes.Store(decodeInt(meta.Get(metaBytes)))
	return s.migrate(tx, schema)
}

// Close flushes access times and closes the index. Blob files already
// opened by callers stay readable.
func (s *Store) Close() error {
	if !s.closed.CompareAndSwap(false, true) {
		return nil
	}
	close(s.stop)
	s.wg.Wait()
	s.flushAccess()
	return s.db.Close()
}

// Dir returns the data directory.
func (s *Store) Dir() string { return s.dir }

// Stats returns the total size and number of blobs (manifests included).
func (s *Store) Stats() (bytes, count int64) { return s.bytes.Load(), s.count.Load() }

// Ping reports whether the index is open and readable.
func (s *Store) Ping(ctx context.Context) error {
	if s.closed.Load() {
		return ErrClosed
	}
	return s.db.View(func(tx *bolt.Tx) error { return nil })
}

// guarded runs f; a panic in it is logged and counted (Counters.Panics)
// instead of ending the process, and the loop that called it goes on.
func (s *Store) guarded(where string, f func()) {
	defer guard.Recover(s.log, "store "+where, func() { s.counters.panics.Add(1) })
	f()
}

func emptyDir(dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			return err
		}
	}
	return nil
}

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

func encodeInt(v int64) []byte {
	b := make([]byte, 8)
	for i := 7; i >= 0; i-- {
		b[i] = byte(v)
		v >>= 8
	}
	return b
}

func decodeInt(b []byte) int64 {
	var v int64
	for _, c := range b {
		v = v<<8 | int64(c)
	}
	return v
}

// SchemaVersion is the layout of index.db this berth reads and writes.
// The index records the version that last wrote it: an older index is
// migrated when opened, a newer one is refused (ErrSchemaNewer), so an
// older binary never misreads what a newer one wrote.
//
//	1  the layout before versions were recorded
//	2  links go with their blobs (the migration drops dangling links)
const SchemaVersion = 2

// ErrSchemaNewer is returned by Open for an index written by a newer
// berth.
var ErrSchemaNewer = errors.New("index.db was written by a newer berth")

var metaSchema = []byte("schema")

// schemaOf is the index's recorded version: 1 when it has data but no
// version, 0 when it is new.
func schemaOf(tx *bolt.Tx) int64 {
	meta := tx.Bucket(bucketMeta)
	if meta == nil {
		if tx.Bucket(bucketBlobs) != nil {
			return 1
		}
		return 0
	}
	if v := meta.Get(metaSchema); len(v) == 8 {
		return decodeInt(v)
	}
	return 1
}

// checkSchema returns the index's version (0: new) and refuses one newer
// than this binary, before anything is written to it.
func checkSchema(db *bolt.DB) (v int64, err error) {
	return v, db.View(func(tx *bolt.Tx) error {
		if v = schemaOf(tx); v > SchemaVersion {
			return fmt.Errorf("%w: its schema is %d, this berth reads up to %d; run the newer berth, or restore a backup made by this version (see README, Upgrading)", ErrSchemaNewer, v, SchemaVersion)
		}
		return nil
	})
}

// migrate brings an older index up to SchemaVersion, in the open
// transaction, and records the version.
func (s *Store) migrate(tx *bolt.Tx, from int64) error {
	if from == SchemaVersion {
		return nil
	}
	if from >= 1 && from < 2 {
		links := tx.Bucket(bucketLinks)
		dangling := danglingLinks(tx)
		for _, k := range dangling {
			if err := links.Delete(k); err != nil {
				return err
			}
		}
		s.log.Info("index migrated", "from", from, "to", 2, "dangling_links_dropped", len(dangling))
	}
	return tx.Bucket(bucketMeta).Put(metaSchema, encodeInt(SchemaVersion))
}

// Backup writes a consistent copy of index.db to w while the store serves
// (one read transaction; writers go on). Blob files are immutable and
// are copied as they are, after the index.
func (s *Store) Backup(w io.Writer) (int64, error) {
	var n int64
	err := s.db.View(func(tx *bolt.Tx) error {
		var err error
		n, err = tx.WriteTo(w)
		return err
	})
	return n, err
}
