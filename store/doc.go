// Package store keeps berth's content on local disk: a bbolt index of
// repositories, tags, manifests and blob links, and content-addressed blob
// files. It knows nothing of HTTP or upstream registries.
//
// Layout of a data directory:
//
//	data_dir/
//	├── index.db                      bbolt: see the buckets below
//	├── blobs/
//	│   ├── sha256/ab/<hex>           blob and manifest bytes, one file each
//	│   └── sha512/cd/<hex>
//	├── uploads/<id>                  pushes in progress (chunked uploads);
//	                                  they survive a restart, expire after
//	                                  the upload TTL
//	└── tmp/                          downloads in progress and monolithic
//	                                  uploads; emptied at start
//
// Buckets of index.db (keys use "\x00" between a repository path and the
// rest; repository paths never contain it):
//
//	blobs      "<alg>:<hex>"            → blobRecord (size, created)
//	links      "<repo>\x00<digest>"     → linkRecord (how repo came to hold it)
//	manifests  "<repo>\x00<digest>"     → manifestRecord (media type, size)
//	tags       "<repo>\x00<tag>"        → tagRecord (digest, last checked)
//	access     "<alg>:<hex>"            → last access time (unix nanos)
//	uploads    "<id>"                   → Upload (repo, offset, hash state)
//	referrers  "<repo>\x00<subject>\x00<digest>" → referrer descriptor
//	refs       "<repo>\x00<digest>"     → the digests a manifest names (for gc and check)
//	meta       "schema", "count", "bytes" → index schema version, blob count and bytes
//	pending    "<alg>:<hex>"            → intent: a blob renamed into blobs/, index entry to follow
//	deleting   "<alg>:<hex>"            → intent: a blob out of the index, file to remove
//
// A repository path is "<berth repository>/<image name>", for example
// "dockerhub/library/nginx".
//
// Writes are durable and atomic: a blob is written to tmp/, hashed while it
// is written, fsynced; a "pending" intent is recorded; the file is renamed
// into blobs/, the directory fsynced, and only then is it entered in the
// index (and the intent dropped). Deletes record a "deleting" intent in
// the same transaction that drops the index entry, and remove the file
// after. At the next start recover finishes every intent it finds, so a
// crash at any instant leaves neither an index entry without a whole file
// nor a file the index does not know of.
//
// The warm read path writes nothing to bbolt: access times are kept in
// memory and flushed in one transaction every few seconds.
package store
