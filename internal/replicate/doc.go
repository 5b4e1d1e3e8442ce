// Package replicate copies images from a registry into a hosted
// repository: a whole registry (its catalog) or listed repositories,
// chosen tags, all platforms or some, and the referrers (signatures,
// SBOMs, attestations) of what it copies.
//
// A run is incremental: a tag whose digest the target already holds costs
// one HEAD, a blob the target holds costs nothing, and a blob berth holds
// for another repository is linked, not fetched. Everything is committed
// as it arrives (blobs before the manifests that name them, children
// before their index, an image before its tag), so a run that is killed
// resumes where it stopped: nothing already committed is fetched again.
//
// The source is hostile until proven otherwise: tag lists and catalogs are
// paged with a bound on pages and names and must advance, manifests are at
// most 4 MiB and must hash to the digest they were asked by, blobs must
// hash to their digest and size, and a failure is counted against the
// repository and tag it belongs to without stopping the rest of the run.
//
// Source is what upstream.Client offers; Target is a hosted repository
// (server.ReplicaTarget). Runner keeps the status and the metrics of
// named rules for the status page and /metrics.
package replicate
