package server

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/berth-registry/berth/internal/audit"
	"github.com/berth-registry/berth/store"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

func withRetention(rt Retention, immutable ...string) berthOpt {
	return func(_ *Repository, o *Options) {
		for i := range o.Repositories {
			if o.Repositories[i].Name == "local" {
				o.Repositories[i].Retention, o.Repositories[i].ImmutableTags = &rt, immutable
			}
		}
	}
}

// signature pushes a referrer of subject to repo by digest.
func pushReferrer(t *testing.T, b *testBerth, repo string, subject v1.Hash) v1.Hash {
	t.Helper()
	sig := mutate.MediaType(randomImage(t, 100, 1), types.OCIManifestSchema1)
	sig = mutate.ConfigMediaType(sig, types.OCIConfigJSON)
	sig = mutate.Subject(sig, v1.Descriptor{MediaType: types.OCIManifestSchema1, Digest: subject, Size: 1}).(v1.Image)
	d, _ := sig.Digest()
	if err := remote.Write(b.ref(repo+"@"+d.String()), sig); err != nil {
		t.Fatal(err)
	}
	return d
}

// Retention: the newest 3 builds, latest and the immutable releases stay
// with what they name and their signatures; the rest goes with its
// children and referrers; a young untagged manifest stays. The dry run
// lists exactly what the run then removes, and garbage collection frees
// the bytes it reported.
func TestRetention(t *testing.T) {
	ev := &events{}
	b := newTestBerth(t, newFakeUpstream(t), withHosted, withAudit(ev),
		withRetention(Retention{KeepNewest: 3, Keep: []string{"latest"}, UntaggedAfter: time.Hour}, "v*"))
	ctx := context.Background()
	idx := mutate.AppendManifests(empty.Index,
		mutate.IndexAddendum{Add: randomImage(t, 500, 1), Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}},
		mutate.IndexAddendum{Add: randomImage(t, 500, 1), Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm64"}}})
	if err := remote.WriteIndex(b.ref("team/app:multi"), idx); err != nil {
		t.Fatal(err)
	}
	digest := map[string]v1.Hash{}
	for i := 1; i <= 10; i++ {
		tag := fmt.Sprintf("b%02d", i)
		img := randomImage(t, 1000, 1)
		if err := remote.Write(b.ref("team/app:"+tag), img); err != nil {
			t.Fatal(err)
		}
		digest[tag], _ = img.Digest()
	}
	if err := remote.Write(b.ref("team/app:latest"), mustImage(t, b, "team/app:b10")); err != nil {
		t.Fatal(err)
	}
	release := randomImage(t, 1000, 1)
	if err := remote.Write(b.ref("team/app:v1.0"), release); err != nil {
		t.Fatal(err)
	}
	oldSig := pushReferrer(t, b, "team/app", digest["b01"])
	newSig := pushReferrer(t, b, "team/app", digest["b10"])
	untagged := randomImage(t, 1000, 1)
	ud, _ := untagged.Digest()
	if err := remote.Write(b.ref("team/app@"+ud.String()), untagged); err != nil {
		t.Fatal(err)
	}

	dry, err := RunRetention(ctx, b.srv, "local", true)
	if err != nil {
		t.Fatal(err)
	}
	var wantTags []string
	for i := 1; i <= 7; i++ {
		wantTags = append(wantTags, fmt.Sprintf("team/app:b%02d", i))
	}
	wantTags = append(wantTags, "team/app:multi")
	slices.Sort(dry.Tags)
	if !slices.Equal(dry.Tags, wantTags) || len(dry.Manifests) != 7+3+1 || dry.Kept != 5 || dry.Bytes <= 0 {
		t.Fatalf("dry run: %+v\nwant tags %v, 11 manifests (7 builds, the index and its 2 children, b01's signature)", dry, wantTags)
	}
	if !slices.Contains(dry.Manifests, "team/app@"+oldSig.String()) || slices.Contains(dry.Manifests, "team/app@"+newSig.String()) || slices.Contains(dry.Manifests, "team/app@"+ud.String()) {
		t.Errorf("dry run manifests %v: want b01's signature, not b10's nor the young untagged one", dry.Manifests)
	}
	if tags, _ := b.store.Tags(ctx, "local/team/app"); len(tags) != 13 || len(ev.of(audit.Retention)) != 0 {
		t.Fatalf("the dry run removed something: %v", tags)
	}

	// Pulls of kept tags go on while the run removes the others.
	stop := make(chan struct{})
	pullErrs := make(chan error, 1)
	go func() {
		defer close(pullErrs)
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := remote.Image(b.ref("team/app:b10")); err != nil {
				pullErrs <- err
				return
			}
		}
	}()
	run, err := RunRetention(ctx, b.srv, "local", false)
	close(stop)
	if err := <-pullErrs; err != nil {
		t.Errorf("a pull of a kept tag during the run: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(run.Tags)
	slices.Sort(run.Manifests)
	slices.Sort(dry.Manifests)
	if !slices.Equal(run.Tags, dry.Tags) || !slices.Equal(run.Manifests, dry.Manifests) || run.Bytes != dry.Bytes {
		t.Fatalf("the run removed %v %v (%d bytes), the dry run listed %v %v (%d)", run.Tags, run.Manifests, run.Bytes, dry.Tags, dry.Manifests, dry.Bytes)
	}
	tags, _ := b.store.Tags(ctx, "local/team/app")
	if strings.Join(tags, ",") != "b08,b09,b10,latest,v1.0" {
		t.Errorf("tags after the run: %v", tags)
	}
	for _, ref := range []string{"team/app:b08", "team/app:latest", "team/app:v1.0", "team/app@" + ud.String(), "team/app@" + newSig.String()} {
		if _, err := remote.Head(b.ref(ref)); err != nil {
			t.Errorf("%s after the run: %v", ref, err)
		}
	}
	for _, ref := range []string{"team/app@" + digest["b01"].String(), "team/app@" + oldSig.String()} {
		wantStatus(t, b.get(http.MethodHead, "/v2/"+strings.Replace(ref, "@", "/manifests/", 1)), http.StatusNotFound, "")
	}
	if n := len(ev.of(audit.Retention)); n != len(run.Tags)+len(run.Manifests) {
		t.Errorf("%d retention audit events for %d removals", n, len(run.Tags)+len(run.Manifests))
	}
	gc, err := b.store.GC(store.GCOptions{Grace: 0})
	if err != nil || gc.Bytes != run.Bytes {
		t.Errorf("garbage collection freed %d bytes (%v), retention reported %d", gc.Bytes, err, run.Bytes)
	}
	if probs, err := b.store.Check(ctx, store.CheckOptions{}); err != nil || len(probs) != 0 {
		t.Errorf("store check: %v %v", probs, err)
	}
	if again, _ := RunRetention(ctx, b.srv, "local", false); len(again.Tags)+len(again.Manifests) != 0 {
		t.Errorf("a second run removed %+v", again)
	}
}

func mustImage(t *testing.T, b *testBerth, ref string) v1.Image {
	t.Helper()
	img, err := remote.Image(b.ref(ref))
	if err != nil {
		t.Fatal(err)
	}
	return img
}
