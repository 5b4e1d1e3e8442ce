package main

import (
	"context"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"
)

// TestMainRunAndDrain starts berth on 127.0.0.1:0 with a temp data dir,
// answers /v2/ on the main and an extra listener, and stops cleanly when
// its context ends.
func TestMainRunAndDrain(t *testing.T) {
	up := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer up.Close()
	cfg := &Config{
		DataDir: t.TempDir(), Listen: "127.0.0.1:0",
		Repositories: []RepositoryConfig{{Name: "up", Kind: "proxy", URL: up.URL}},
		Listeners:    []ListenerConfig{{Listen: "127.0.0.1:0", Repository: "up"}},
	}
	if err := cfg.setDefaults(); err != nil {
		t.Fatal(err)
	}
	m, err := NewMain(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	addrs := m.Addrs()
	if len(addrs) != 2 {
		t.Fatalf("listeners %v", addrs)
	}
	for _, a := range addrs {
		resp, err := http.Get("http://" + a + "/v2/")
		if err != nil || resp.StatusCode != 200 || resp.Header.Get("Docker-Distribution-API-Version") != "registry/2.0" {
			t.Fatalf("%s: %v %v", a, resp, err)
		}
		resp.Body.Close()
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
}
