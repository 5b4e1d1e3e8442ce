package lru

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func TestCapEvictsLeastRecentlyUsed(t *testing.T) {
	c := New[string, int](3, 0)
	c.Add("a", 1)
	c.Add("b", 2)
	c.Add("c", 3)
	if _, ok := c.Get("a"); !ok { // a is now the most recently used
		t.Fatal("a missing")
	}
	c.Add("d", 4)
	if _, ok := c.Get("b"); ok {
		t.Error("b survived; it was the least recently used")
	}
	for _, k := range []string{"a", "c", "d"} {
		if _, ok := c.Get(k); !ok {
			t.Errorf("%s evicted", k)
		}
	}
	if c.Len() != 3 {
		t.Errorf("Len = %d, want 3", c.Len())
	}
}

func TestTTL(t *testing.T) {
	clk := &clock{t: time.Unix(1000, 0)}
	c := New[string, int](10, time.Minute)
	c.now = clk.now
	c.Add("a", 1)
	c.AddTTL("b", 2, time.Hour)
	c.AddTTL("forever", 3, 0)
	clk.t = clk.t.Add(59 * time.Second)
	if _, ok := c.Get("a"); !ok {
		t.Error("a expired early")
	}
	clk.t = clk.t.Add(time.Second)
	if _, ok := c.Get("a"); ok {
		t.Error("a outlived its ttl")
	}
	if c.Len() != 2 {
		t.Errorf("expired entry not dropped on Get: Len = %d", c.Len())
	}
	clk.t = clk.t.Add(100 * time.Hour)
	if _, ok := c.Get("b"); ok {
		t.Error("b outlived its ttl")
	}
	if _, ok := c.Get("forever"); !ok {
		t.Error("an entry without ttl expired")
	}
}

func TestCost(t *testing.T) {
	c := New[string, []byte](100, 0).WithCost(10, func(_ string, b []byte) int64 { return int64(len(b)) })
	c.Add("a", make([]byte, 4))
	c.Add("b", make([]byte, 4))
	c.Add("c", make([]byte, 4)) // 12 > 10: a goes
	if _, ok := c.Get("a"); ok {
		t.Error("a kept past the cost cap")
	}
	if c.Cost() != 8 {
		t.Errorf("Cost = %d, want 8", c.Cost())
	}
	c.Add("huge", make([]byte, 11))
	if _, ok := c.Get("huge"); ok {
		t.Error("a value over the cap was kept")
	}
	c.Add("b", make([]byte, 1)) // replacing adjusts the cost
	if c.Cost() != 5 {
		t.Errorf("Cost after replace = %d, want 5", c.Cost())
	}
	c.Remove("b")
	c.Remove("c")
	if c.Cost() != 0 || c.Len() != 0 {
		t.Errorf("after removes: cost %d len %d", c.Cost(), c.Len())
	}
}

func TestUpdateAndTake(t *testing.T) {
	c := New[string, []string](10, time.Minute)
	add := func(v string) {
		c.Update("k", func(old []string, found bool) []string { return append(old, v) })
	}
	add("x")
	add("y")
	v, ok := c.Take("k")
	if !ok || fmt.Sprint(v) != "[x y]" {
		t.Fatalf("Take = %v %v", v, ok)
	}
	if _, ok := c.Take("k"); ok {
		t.Error("Take did not remove")
	}
}

// TestBoundedUnderLoad: many writers with distinct keys never push the
// cache past its cap.
func TestBoundedUnderLoad(t *testing.T) {
	c := New[int, int](64, time.Second)
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 5000; i++ {
				c.Add(g*10000+i, i)
				c.Get(g*10000 + i/2)
				if n := c.Len(); n > 64 {
					t.Errorf("Len %d over cap", n)
					return
				}
			}
		}()
	}
	wg.Wait()
	if c.Len() != 64 {
		t.Errorf("Len = %d, want 64", c.Len())
	}
}

// TestEvictAndBytes: the cost of long keys bounds the entries, each
// entry the caps push out is reported once, and what is removed by hand
// is not reported.
func TestEvictAndBytes(t *testing.T) {
	var evicted []string
	c := New[string, int](1000, 0).WithCost(10*(100+entryOverhead), StringBytes[int]).
		WithEvict(func(k string, _ int) { evicted = append(evicted, k) })
	long := func(i int) string { return strings.Repeat("x", 99) + string(rune('a'+i)) }
	for i := 0; i < 15; i++ {
		c.Add(long(i), i)
	}
	if c.Len() != 10 || c.Cost() != 10*(100+entryOverhead) {
		t.Fatalf("Len %d, Cost %d: want 10 entries of %d", c.Len(), c.Cost(), 100+entryOverhead)
	}
	if len(evicted) != 5 || evicted[0] != long(0) || evicted[4] != long(4) {
		t.Fatalf("evicted %d entries, want the 5 oldest", len(evicted))
	}
	c.Remove(long(14))
	if len(evicted) != 5 {
		t.Error("Remove reported an eviction")
	}
	if v := c.Values(); len(v) != 9 || v[0] != 13 || v[8] != 5 {
		t.Errorf("Values = %v, want 13..5", v)
	}
}
