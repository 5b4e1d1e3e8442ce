package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/berth-registry/berth/internal/policy"
	"github.com/berth-registry/berth/internal/shared"
	"github.com/berth-registry/berth/internal/sigverify"
	"github.com/berth-registry/berth/store"
)

// A policy that requires signatures finds them through the repository's
// kind, behind its gate (a signature need not be signed), in cosign's two
// layouts: the tag "sha256-<hex>.sig" whose layers are signed payloads,
// and Sigstore bundles among the image's referrers (the referrers API, or
// its fallback tag "sha256-<hex>" where the registry has no API). What
// is read is bounded: maxSignatures of each layout, payloads and bundles
// by sigverify's limits, manifests by maxManifestSize. The lookups are
// berth's own: not counted as a client's cache results.
const maxSignatures = 8

// signatureSources are cosign's layouts, looked at in this order: the
// tag scheme first, which most signed images use, so that a verified
// one costs no referrers look-up.
func (g *gate) signatureSources() []func(context.Context, imageRef, store.Digest) ([]sigverify.Signature, error) {
	return []func(context.Context, imageRef, store.Digest) ([]sigverify.Signature, error){g.tagSignatures, g.bundleSignatures}
}

// tagSignatures reads the tag scheme's payloads.
func (g *gate) tagSignatures(ctx context.Context, img imageRef, d store.Digest) ([]sigverify.Signature, error) {
	tag := d.Algorithm() + "-" + d.Hex() + ".sig"
	pm, err := g.signatureManifest(ctx, img, route{kind: routeManifest, name: img.name, ref: tag})
	if err != nil || pm == nil || pm.image == nil {
		return nil, err
	}
	// A layer that cannot be read is skipped, not the end: a bad one
	// first must not hide a good one after it. At most maxSignatures
	// are tried.
	var out []sigverify.Signature
	var errs []error
	tried := 0
	for _, l := range pm.image.Layers {
		if tried == maxSignatures {
			break
		}
		if string(l.MediaType) != sigverify.MediaTypeSimpleSigning {
			continue
		}
		tried++
		payload, err := g.smallBlob(ctx, img, l.Digest.String(), l.Size, sigverify.MaxPayload)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out = append(out, sigverify.Signature{Payload: payload, Annotations: l.Annotations})
	}
	return out, errors.Join(errs...)
}

// bundleSignatures reads the bundles among d's referrers.
func (g *gate) bundleSignatures(ctx context.Context, img imageRef, d store.Digest) ([]sigverify.Signature, error) {
	var digests []string
	refs, err := g.repository.referrers(ctx, img, d, "")
	if err == nil {
		for _, r := range refs {
			if strings.HasPrefix(r.ArtifactType, sigverify.BundleArtifactPrefix) {
				digests = append(digests, r.Digest)
			}
		}
	} else {
		// No referrers API: the fallback tag lists them in an index.
		pm, ferr := g.signatureManifest(ctx, img, route{kind: routeManifest, name: img.name, ref: d.Algorithm() + "-" + d.Hex()})
		if ferr != nil || pm == nil || pm.index == nil {
			return nil, ferr
		}
		// cosign lists its bundles there under the empty config's
		// type: each manifest says what it is.
		for _, m := range pm.index.Manifests {
			if referrerEntry(m.ArtifactType) {
				digests = append(digests, m.Digest.String())
			}
		}
	}
	var out []sigverify.Signature
	var errs []error
	for i, ds := range digests {
		if i == maxSignatures {
			break
		}
		md, err := store.ParseDigest(ds)
		if err != nil {
			continue
		}
		pm, err := g.signatureManifest(ctx, img, route{kind: routeManifest, name: img.name, ref: ds, digest: md})
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if pm == nil || pm.image == nil || len(pm.image.Layers) != 1 || !strings.HasPrefix(string(pm.image.Layers[0].MediaType), sigverify.BundleArtifactPrefix) {
			continue
		}
		l := pm.image.Layers[0]
		b, err := g.smallBlob(ctx, img, l.Digest.String(), l.Size, sigverify.MaxBundle)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out = append(out, sigverify.Signature{Bundle: b})
	}
	return out, errors.Join(errs...)
}

// signatureManifest finds a manifest of a signature through the kind:
// nil when there is none.
func (g *gate) signatureManifest(ctx context.Context, img imageRef, rt route) (*parsedManifest, error) {
	a, err := g.repository.manifest(ctx, img, rt, false)
	if err != nil {
		if memberMiss(err, rt) && !isUnavailable(err, rt) {
			return nil, nil
		}
		return nil, err
	}
	pm, err := parseManifest(a.m.Body, a.m.MediaType)
	if err != nil {
		return nil, nil // not a manifest berth reads: no signature
	}
	return pm, nil
}

// smallBlob reads blob ds of the image, which its manifest says is size
// bytes: at most limit.
func (g *gate) smallBlob(ctx context.Context, img imageRef, ds string, size, limit int64) ([]byte, error) {
	if size > limit || size < 0 {
		return nil, fmt.Errorf("a signature blob of %d bytes (the limit is %d)", size, limit)
	}
	d, err := store.ParseDigest(ds)
	if err != nil {
		return nil, err
	}
	if err := g.repository.cacheBlob(ctx, img, d); err != nil {
		return nil, err
	}
	f, err := g.s.blobs.OpenBlob(ctx, d)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err == nil && int64(len(b)) > limit {
		err = fmt.Errorf("signature blob %s is over %d bytes", d, limit)
	}
	return b, err
}

// isUnavailable: the error says the registry could not answer, not that
// there is nothing.
func isUnavailable(err error, rt route) bool {
	re, _ := registryError(err, rt)
	return re.Code == codeUnavailable || re.Code == codeTooManyRequests
}

// checkSignature decides digest d of img on its signatures: allowed (and
// remembered) when one verifies with a verifier of the policy. Clients
// asking at once for the same digest share one look-up.
func (g *gate) checkSignature(ctx context.Context, p *gatePolicy, img imageRef, d string) policy.Verdict {
	key := "signature\x00" + g.rp.Name + "\x00" + img.name + "\x00" + p.key(d)
	v, err := shared.Do(ctx, &g.s.flight, key, time.Minute, func(ctx context.Context) (any, error) {
		return g.verifySignatures(ctx, p, img, d), nil
	})
	if err != nil {
		return policy.Verdict{Decision: policy.Deny, Rule: "signature", Reason: fmt.Sprintf("the signature check of policy %q did not finish: %v", p.Name, err)}
	}
	return v.(policy.Verdict)
}

// verifySignatures reads the signatures of d and tries each with each
// verifier of the policy. A refusal is not remembered: the image may be
// signed later.
func (g *gate) verifySignatures(ctx context.Context, p *gatePolicy, img imageRef, d string) (v policy.Verdict) {
	notSigned := func(why string) policy.Verdict {
		return policy.Verdict{Decision: policy.Deny, Rule: "signature", Reason: fmt.Sprintf("not signed by a key of policy %q: %s", p.Name, why)}
	}
	defer func() {
		// Hostile signature material must not end the process: a panic
		// in the verifier is a refusal.
		if r := recover(); r != nil {
			g.s.log.Error("signature verification panicked", "repository", g.rp.Name, "digest", d, "panic", r)
			v = notSigned("its signature could not be checked")
		}
	}()
	md, err := store.ParseDigest(d)
	if err != nil {
		return notSigned(err.Error())
	}
	// Berth's own look-ups: not a client's cache results.
	ctx = context.WithValue(ctx, infoKey{}, &reqInfo{principal: principal{internal: true}})
	var why []string
	var errs []error
	found := 0
	for _, source := range g.signatureSources() {
		sigs, err := source(ctx, img, md)
		if err != nil {
			errs = append(errs, err)
		}
		found += len(sigs)
		for _, sig := range sigs {
			for _, ver := range p.Verifiers {
				err := ver.Verify(sig, d)
				if err == nil {
					ok := policy.Verdict{Decision: policy.Allow, Rule: "signature", Reason: fmt.Sprintf("signed by %s (policy %q)", ver, p.Name)}
					g.remember(ctx, p, d, ok)
					return ok
				}
				if len(why) < 3 {
					why = append(why, err.Error())
				}
			}
		}
	}
	switch {
	case found > 0:
		return notSigned(fmt.Sprintf("%d signature(s) found, none verifies: %s", found, strings.Join(why, "; ")))
	case len(errs) > 0:
		return notSigned(fmt.Sprintf("no signature could be read (%v)", errors.Join(errs...)))
	}
	return notSigned(fmt.Sprintf("no signature of %s found (cosign sign names it %s-%s.sig)", d, md.Algorithm(), md.Hex()))
}

// signatureArtifact: the manifest is a signature (the tag scheme's
// payloads, a bundle, or the fallback index listing bundles), which a
// client verifying for itself pulls; it needs no signature of its own. It
// holds nothing a runtime could run.
func signatureArtifact(a manifestAnswer) bool {
	if a.head != nil {
		return false
	}
	pm, err := parseManifest(a.m.Body, a.m.MediaType)
	if err != nil {
		return false
	}
	switch {
	case pm.image != nil && len(pm.image.Layers) > 0:
		for _, l := range pm.image.Layers {
			mt := string(l.MediaType)
			if mt != sigverify.MediaTypeSimpleSigning && !strings.HasPrefix(mt, sigverify.BundleArtifactPrefix) {
				return false
			}
		}
		return true
	case pm.index != nil && len(pm.index.Manifests) > 0:
		// The fallback tag's index of referrers; each manifest it
		// lists is judged by itself when fetched.
		for _, m := range pm.index.Manifests {
			if !referrerEntry(m.ArtifactType) {
				return false
			}
		}
		return true
	}
	return false
}

// referrerEntry: an index entry of this artifact type may be a bundle (a
// bundle's own type, or the empty config's type cosign writes there).
func referrerEntry(artifactType string) bool {
	return strings.HasPrefix(artifactType, sigverify.BundleArtifactPrefix) || artifactType == "application/vnd.oci.empty.v1+json"
}
