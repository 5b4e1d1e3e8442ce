package server

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"

	"github.com/berth-registry/berth/internal/policy"
	"github.com/berth-registry/berth/internal/sigverify"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/sigstore/sigstore-go/pkg/sign"
	"github.com/sigstore/sigstore/pkg/cryptoutils"
	"github.com/sigstore/sigstore/pkg/signature"
	"google.golang.org/protobuf/encoding/protojson"
)

// signer signs images as cosign does with a key.
type signer struct{ priv *ecdsa.PrivateKey }

func newSigner(t testing.TB) signer {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return signer{k}
}

func (s signer) verifier(t testing.TB) *sigverify.Verifier {
	pemKey, err := cryptoutils.MarshalPublicKeyToPEM(s.priv.Public())
	if err != nil {
		t.Fatal(err)
	}
	v, err := sigverify.NewKey("test.pub", pemKey)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// sign pushes to the upstream the tag scheme's signature of digest
// names (which cosign would make of the image with digest at).
func (s signer) sign(t testing.TB, up *fakeUpstream, repo string, at, names v1.Hash) {
	t.Helper()
	payload := fmt.Sprintf(`{"critical":{"identity":{"docker-reference":"x/%s"},"image":{"docker-manifest-digest":%q},"type":"cosign container image signature"},"optional":null}`, repo, names.String())
	sv, err := signature.LoadSigner(s.priv, crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	sig, err := sv.SignMessage(strings.NewReader(payload))
	if err != nil {
		t.Fatal(err)
	}
	img := mutate.MediaType(mutate.ConfigMediaType(empty.Image, types.OCIConfigJSON), types.OCIManifestSchema1)
	img, err = mutate.Append(img, mutate.Addendum{
		Layer:       static.NewLayer([]byte(payload), sigverify.MediaTypeSimpleSigning),
		Annotations: map[string]string{sigverify.AnnotationSignature: base64.StdEncoding.EncodeToString(sig)},
	})
	if err != nil {
		t.Fatal(err)
	}
	up.push(repo, at.Algorithm+"-"+at.Hex+".sig", img)
}

func withSignatures(vs ...*sigverify.Verifier) berthOpt {
	return withPolicy(policy.Policy{Name: "prod", RequireSignature: true, Verifiers: vs})
}

func TestPolicySignatures(t *testing.T) {
	up := newFakeUpstream(t)
	key, other := newSigner(t), newSigner(t)
	signed := up.push("app", "signed", randomImage(t, 512, 1))
	key.sign(t, up, "app", signed, signed)
	up.push("app", "unsigned", randomImage(t, 512, 1))
	byOther := up.push("app", "other", randomImage(t, 512, 1))
	other.sign(t, up, "app", byOther, byOther)
	// A valid signature of another image, put where this one's goes.
	replayed := up.push("app", "replayed", randomImage(t, 512, 1))
	key.sign(t, up, "app", replayed, signed)
	b := newTestBerth(t, up, withSignatures(key.verifier(t)))

	if _, err := remote.Image(b.ref("app:signed")); err != nil {
		t.Fatalf("a signed image: %v", err)
	}
	_, err := remote.Image(b.ref("app:unsigned"))
	denied(t, err, `not signed by a key of policy "prod": no signature of sha256:`)
	_, err = remote.Image(b.ref("app:other"))
	denied(t, err, `not signed by a key of policy "prod": 1 signature(s) found, none verifies`)
	_, err = remote.Image(b.ref("app:replayed"))
	denied(t, err, "the signature is of "+signed.String())
	_, err = remote.Image(b.ref("app@" + replayed.String()))
	denied(t, err, "the signature is of "+signed.String())
	// A client verifying for itself gets the signature: it needs none.
	if _, err := remote.Image(b.ref("app:sha256-" + signed.Hex + ".sig")); err != nil {
		t.Fatalf("the signature itself: %v", err)
	}
	// The signature lookups were berth's own: no client cache result.
	// The client's misses are its 4 first pulls by tag; the digest and
	// the signature it asked for were cached by then.
	if got := b.cacheCount("manifest", "miss"); got != 4 {
		t.Errorf("client manifest misses %v; want 4", got)
	}
}

// TestPolicySignatureCost: concurrent cold pulls share one signature
// look-up; a warm pull asks the upstream nothing for it.
func TestPolicySignatureCost(t *testing.T) {
	up := newFakeUpstream(t)
	key := newSigner(t)
	d := up.push("app", "v1", randomImage(t, 512, 1))
	key.sign(t, up, "app", d, d)
	b := newTestBerth(t, up, withSignatures(key.verifier(t)))
	ref := b.ref("app@" + d.String())
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := remote.Get(ref)
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	sigTag := "/manifests/sha256-" + d.Hex + ".sig"
	if n := up.countPath("GET", sigTag); n != 1 {
		t.Errorf("8 cold pulls fetched the signature %d times, want 1", n)
	}
	// One whole pull, so that every blob is cached and any eager
	// download the cold pulls started finds its blob on disk.
	img, err := remote.Image(ref)
	if err != nil {
		t.Fatal(err)
	}
	ls, _ := img.Layers()
	for _, l := range ls {
		rc, err := l.Compressed()
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, rc)
		rc.Close()
	}
	waitNoDownloads(t, b.srv)
	before := up.count("GET manifest") + up.count("HEAD manifest") + up.count("GET blob") + up.count("GET other")
	for range 3 {
		if _, err := remote.Get(ref); err != nil {
			t.Fatal(err)
		}
	}
	if after := up.count("GET manifest") + up.count("HEAD manifest") + up.count("GET blob") + up.count("GET other"); after != before {
		t.Errorf("warm pulls asked the upstream %d more times", after-before)
	}
}

// TestPolicySignedIndex: an index signed, its platform manifest pulled by
// digest afterwards passes (the index's verdict); before the index was
// served, the unsigned child is refused by itself.
func TestPolicySignedIndex(t *testing.T) {
	up := newFakeUpstream(t)
	key := newSigner(t)
	idx, err := random.Index(256, 1, 2)
	if err != nil {
		t.Fatal(err)
	}
	d := up.pushIndex("multi", "v1", idx)
	key.sign(t, up, "multi", d, d)
	im, _ := idx.IndexManifest()
	child := im.Manifests[0].Digest
	b := newTestBerth(t, up, withSignatures(key.verifier(t)))
	_, err = remote.Get(b.ref("multi@" + im.Manifests[1].Digest.String()))
	denied(t, err, "not signed")
	if _, err := remote.Index(b.ref("multi:v1")); err != nil {
		t.Fatalf("the signed index: %v", err)
	}
	if _, err := remote.Get(b.ref("multi@" + child.String())); err != nil {
		t.Fatalf("a child of the signed index: %v", err)
	}
}

// TestPolicyBundleReferrer: cosign's newer layout, a Sigstore bundle
// stored as a referrer of the image, verifies too.
func TestPolicyBundleReferrer(t *testing.T) {
	up := newFakeUpstream(t)
	kp, err := sign.NewEphemeralKeypair(nil)
	if err != nil {
		t.Fatal(err)
	}
	d := up.push("app", "v1", randomImage(t, 512, 1))
	stmt := fmt.Sprintf(`{"_type":"https://in-toto.io/Statement/v1","subject":[{"digest":{"sha256":%q}}],"predicateType":%q}`, d.Hex, sigverify.PredicateSign)
	pb, err := sign.Bundle(&sign.DSSEData{Data: []byte(stmt), PayloadType: "application/vnd.in-toto+json"}, kp, sign.BundleOptions{})
	if err != nil {
		t.Fatal(err)
	}
	bundleJSON, _ := protojson.Marshal(pb)
	const bt = "application/vnd.dev.sigstore.bundle.v0.3+json"
	// The artifact type is the config's media type (a manifest without
	// an artifactType field: what the referrers API falls back to).
	img := mutate.MediaType(mutate.ConfigMediaType(empty.Image, bt), types.OCIManifestSchema1)
	img, err = mutate.Append(img, mutate.Addendum{Layer: static.NewLayer(bundleJSON, bt)})
	if err != nil {
		t.Fatal(err)
	}
	img = mutate.Subject(img, v1.Descriptor{MediaType: types.DockerManifestSchema2, Digest: d, Size: 1}).(v1.Image)
	bd, _ := img.Digest()
	ref, _ := name.ParseReference(strings.TrimPrefix(up.seed.URL, "http://")+"/app@"+bd.String(), name.Insecure)
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	pemKey, _ := kp.GetPublicKeyPem()
	v, err := sigverify.NewKey("bundle.pub", []byte(pemKey))
	if err != nil {
		t.Fatal(err)
	}
	b := newTestBerth(t, up, withSignatures(v))
	if _, err := remote.Image(b.ref("app:v1")); err != nil {
		t.Fatalf("an image signed by a bundle referrer: %v", err)
	}
}

// TestPolicyHostileSignatures: signature material that is malformed,
// oversized or points at the image itself is a clear refusal, never a
// crash, never a pass.
func TestPolicyHostileSignatures(t *testing.T) {
	up := newFakeUpstream(t)
	key := newSigner(t)
	b := newTestBerth(t, up, withSignatures(key.verifier(t)))
	sigTag := func(d v1.Hash) string { return d.Algorithm + "-" + d.Hex + ".sig" }
	layer := func(payload []byte, mt types.MediaType, ann map[string]string) v1.Image {
		img := mutate.MediaType(mutate.ConfigMediaType(empty.Image, types.OCIConfigJSON), types.OCIManifestSchema1)
		img, err := mutate.Append(img, mutate.Addendum{Layer: static.NewLayer(payload, mt), Annotations: ann})
		if err != nil {
			t.Fatal(err)
		}
		return img
	}
	cases := map[string]func(d v1.Hash) v1.Image{
		"the signature tag is the image itself": func(d v1.Hash) v1.Image { return nil },
		"an oversized payload": func(d v1.Hash) v1.Image {
			return layer(make([]byte, sigverify.MaxPayload+1), sigverify.MediaTypeSimpleSigning, map[string]string{sigverify.AnnotationSignature: "AAAA"})
		},
		"a signature that is not base64": func(d v1.Hash) v1.Image {
			return layer([]byte(`{}`), sigverify.MediaTypeSimpleSigning, map[string]string{sigverify.AnnotationSignature: "%%%"})
		},
		"no signature annotation": func(d v1.Hash) v1.Image {
			return layer([]byte(`{}`), sigverify.MediaTypeSimpleSigning, nil)
		},
		"a garbage bundle as a layer": func(d v1.Hash) v1.Image {
			return layer([]byte(`{"mediaType":`), "application/vnd.dev.sigstore.bundle.v0.3+json", nil)
		},
	}
	for name, mk := range cases {
		t.Run(name, func(t *testing.T) {
			img := randomImage(t, 256, 1)
			repo := "hostile/" + strings.ReplaceAll(name, " ", "-")
			d := up.push(repo, "v1", img)
			sig := mk(d)
			if sig == nil {
				sig = img // the ".sig" tag names the image's own manifest
			}
			up.push(repo, sigTag(d), sig)
			_, err := remote.Image(b.ref(repo + ":v1"))
			denied(t, err, `not signed by a key of policy "prod"`)
		})
	}
	// Many signature layers: at most maxSignatures are read.
	d := up.push("hostile/many", "v1", randomImage(t, 256, 1))
	img := mutate.MediaType(mutate.ConfigMediaType(empty.Image, types.OCIConfigJSON), types.OCIManifestSchema1)
	for i := range maxSignatures * 3 {
		var err error
		img, err = mutate.Append(img, mutate.Addendum{Layer: static.NewLayer([]byte(fmt.Sprintf(`{"n":%d}`, i)), sigverify.MediaTypeSimpleSigning),
			Annotations: map[string]string{sigverify.AnnotationSignature: "AAAA"}})
		if err != nil {
			t.Fatal(err)
		}
	}
	up.push("hostile/many", sigTag(d), img)
	before := up.count("GET blob")
	_, err := remote.Image(b.ref("hostile/many:v1"))
	denied(t, err, fmt.Sprintf("%d signature(s) found, none verifies", maxSignatures))
	if n := up.count("GET blob") - before; n > maxSignatures {
		t.Errorf("read %d signature blobs, the bound is %d", n, maxSignatures)
	}
}

// TestPolicyBadSignatureFirst: an unreadable signature layer before a
// good one does not hide it.
func TestPolicyBadSignatureFirst(t *testing.T) {
	up := newFakeUpstream(t)
	key := newSigner(t)
	d := up.push("app", "v1", randomImage(t, 256, 1))
	key.sign(t, up, "app", d, d)
	sigRef := "app:" + d.Algorithm + "-" + d.Hex + ".sig"
	ref, _ := name.ParseReference(strings.TrimPrefix(up.seed.URL, "http://")+"/"+sigRef, name.Insecure)
	good, err := remote.Image(ref)
	if err != nil {
		t.Fatal(err)
	}
	bad := mutate.MediaType(mutate.ConfigMediaType(empty.Image, types.OCIConfigJSON), types.OCIManifestSchema1)
	bad, _ = mutate.Append(bad, mutate.Addendum{Layer: static.NewLayer(make([]byte, sigverify.MaxPayload+1), sigverify.MediaTypeSimpleSigning),
		Annotations: map[string]string{sigverify.AnnotationSignature: "AAAA"}})
	gl, _ := good.Manifest()
	goodLayers, _ := good.Layers()
	both, err := mutate.Append(bad, mutate.Addendum{Layer: goodLayers[0], Annotations: gl.Layers[0].Annotations})
	if err != nil {
		t.Fatal(err)
	}
	up.push("app", d.Algorithm+"-"+d.Hex+".sig", both)
	b := newTestBerth(t, up, withSignatures(key.verifier(t)))
	if _, err := remote.Image(b.ref("app:v1")); err != nil {
		t.Fatalf("a good signature after a bad one: %v", err)
	}
}

// TestPolicySignaturesThroughGroup: a group requiring signatures finds
// them in whichever member holds the image: pushed to its hosted member,
// or on a proxy member's upstream.
func TestPolicySignaturesThroughGroup(t *testing.T) {
	f := newGroupBerth(t, "local")
	key := newSigner(t)
	p := policy.Policy{Name: "prod", RequireSignature: true, Verifiers: []*sigverify.Verifier{key.verifier(t)}}
	if err := p.Check(); err != nil {
		t.Fatal(err)
	}
	if err := f.srv.SetPolicies(map[string]*policy.Policy{"all": &p}); err != nil {
		t.Fatal(err)
	}
	// Pushed through the group into its hosted member, then signed there.
	local := randomImage(t, 256, 1)
	if err := remote.Write(f.ref("team/app:v1"), local); err != nil {
		t.Fatal(err)
	}
	ld, _ := local.Digest()
	pushed := newFakeUpstream(t) // where the signature manifest is made, then copied in
	key.sign(t, pushed, "team/app", ld, ld)
	sigRef, _ := name.ParseReference(strings.TrimPrefix(pushed.seed.URL, "http://")+"/team/app:sha256-"+ld.Hex+".sig", name.Insecure)
	sig, err := remote.Image(sigRef)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(f.ref("team/app:sha256-"+ld.Hex+".sig"), sig); err != nil {
		t.Fatal(err)
	}
	unsigned := randomImage(t, 256, 1)
	if err := remote.Write(f.ref("team/other:v1"), unsigned); err != nil {
		t.Fatal(err)
	}
	// On the proxy member's upstream.
	hd := f.pub.push("library/tool", "v1", randomImage(t, 256, 1))
	key.sign(t, f.pub, "library/tool", hd, hd)

	for _, ref := range []string{"team/app:v1", "library/tool:v1"} {
		if _, err := remote.Image(f.ref(ref)); err != nil {
			t.Errorf("%s through the group: %v", ref, err)
		}
	}
	_, err = remote.Image(f.ref("team/other:v1"))
	denied(t, err, `not signed by a key of policy "prod"`)
}
