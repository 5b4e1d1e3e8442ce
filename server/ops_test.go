package server

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// TestOpsContract holds both Ops to one contract: StoreOps on the store
// berth uses, and AdminClient over the admin listener of the running
// server. The same image pushed, the same answers.
func TestOpsContract(t *testing.T) {
	b := newTestBerth(t, newFakeUpstream(t), withHosted)
	img := randomImage(t, 8<<10, 2)
	if err := remote.Write(b.ref("team/app:v1"), img); err != nil {
		t.Fatal(err)
	}
	want, _ := img.Digest()
	admin := httptest.NewServer(b.srv.AdminHandler("local"))
	t.Cleanup(admin.Close)
	for name, ops := range map[string]Ops{
		"store": StoreOps{Store: b.store, Known: []string{"hub", "local"}},
		"admin": AdminClient{Base: admin.URL, HTTP: admin.Client()},
	} {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			list, err := ops.List(ctx, "local/team/app")
			if err != nil {
				t.Fatal(err)
			}
			if len(list) != 1 || list[0].Repository != "local" || list[0].Image != "team/app" || list[0].Tag != "v1" || list[0].Digest != want.String() || list[0].Size <= 0 {
				t.Fatalf("List = %+v, want local team/app:v1 %s with its size", list, want)
			}
			if _, err := ops.List(ctx, "nosuch/app"); err == nil {
				t.Fatal("List of an unknown repository: no error")
			}
			// Nothing is unreferenced: a dry run and a real one free
			// nothing, and the reply says the grace asked for.
			res, err := ops.GC(ctx, GCRequest{Grace: 0, DryRun: true})
			if err != nil || res.Blobs != 0 || res.Grace != "0s" {
				t.Fatalf("GC = %+v, %v; want 0 blobs, grace 0s", res, err)
			}
			var buf bytes.Buffer
			n, err := ops.Backup(ctx, &buf)
			if err != nil || n == 0 || int64(buf.Len()) != n {
				t.Fatalf("Backup = %d bytes (%d written), %v", n, buf.Len(), err)
			}
		})
	}
}

// TestAdminClientErrors: a listener that is not there and one that is
// not an admin listener are told apart from the running berth's own
// refusals.
func TestAdminClientErrors(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	dead := httptest.NewServer(http.NotFoundHandler())
	url := dead.URL
	dead.Close()
	var unreachable *UnreachableError
	if _, err := (AdminClient{Base: url, HTTP: http.DefaultClient}).List(ctx, ""); !errors.As(err, &unreachable) {
		t.Fatalf("closed listener: %v, want UnreachableError", err)
	}
	notAdmin := httptest.NewServer(http.NotFoundHandler())
	defer notAdmin.Close()
	if _, err := (AdminClient{Base: notAdmin.URL, HTTP: notAdmin.Client()}).GC(ctx, GCRequest{}); !errors.Is(err, ErrNotAdmin) {
		t.Fatalf("plain 404: %v, want ErrNotAdmin", err)
	}
	b := newTestBerth(t, newFakeUpstream(t), withHosted)
	admin := httptest.NewServer(b.srv.AdminHandler("local"))
	defer admin.Close()
	_, err := (AdminClient{Base: admin.URL, HTTP: admin.Client()}).List(ctx, "nosuch")
	if err == nil || errors.Is(err, ErrNotAdmin) || !bytes.Contains([]byte(err.Error()), []byte("NAME_UNKNOWN")) {
		t.Fatalf("unknown repository: %v, want the berth's NAME_UNKNOWN", err)
	}
}
