package fetch

import (
	"bytes"
	"context"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/berth-registry/berth/store"
	"github.com/berth-registry/berth/store/storetest"
)

// BenchmarkFanOut: one in-flight download read by 20 clients at once.
func BenchmarkFanOut(b *testing.B) {
	st := storetest.Open(b)
	blob := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
	d := store.DigestOf(blob)
	b.SetBytes(int64(len(blob)) * 20)
	for b.Loop() {
		g := NewGroup(Config{Timeout: time.Minute, NewTemp: storeTemps(st)})
		var wg sync.WaitGroup
		for i := 0; i < 20; i++ {
			dl, _, err := g.Join(context.Background(), Job{Want: d, Fetch: func(ctx context.Context, _, _ int64) (io.ReadCloser, int64, error) {
				return io.NopCloser(bytes.NewReader(blob)), int64(len(blob)), nil
			}})
			if err != nil {
				b.Fatal(err)
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer dl.Release()
				dl.Wait(context.Background())
				n, _ := io.Copy(io.Discard, dl.Reader(context.Background(), int64(len(blob))))
				if n != int64(len(blob)) {
					b.Errorf("read %d", n)
				}
			}()
		}
		wg.Wait()
	}
}
