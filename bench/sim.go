package main

import (
	"flag"
	"fmt"
	"os"
	"text/tabwriter"
)

// Toward a thousand nodes, on paper: a fluid model (no network) of N
// nodes pulling a new layer at the same moment. Each box is a node in a
// tree below the upstream: the WAN link feeds the top cache, a cache's
// NIC is shared fairly among the children it streams to (water-filling:
// a child that cannot take its share leaves it to the others), and a
// child never holds more of the layer than its parent has (berth streams
// while it caches). Time advances in steps of 1 ms. Three topologies:
//
//   - one berth: every node pulls from it;
//   - a 3-node cluster behind a balancer that hashes by digest: the layer
//     has one owner, so every byte goes owner → balancer → node (for one
//     hot layer the balancer and the owner's NIC are the path; hashing
//     spreads many layers, not one);
//   - tiers: a site berth below the WAN, one rack berth per 40 nodes
//     below it, each rack's nodes pulling from their rack berth.
//
// Without a cache, every node crosses the WAN itself.

var (
	simLayerGB = flag.Float64("sim-layer-gb", 1, "simulation: the new layer's size, GB")
	simWAN     = flag.Float64("sim-wan-gbit", 1, "simulation: the WAN link, Gbit/s")
	simNode    = flag.Float64("sim-node-gbit", 10, "simulation: a node's NIC, Gbit/s")
	simCache   = flag.Float64("sim-cache-gbit", 25, "simulation: a berth's (and the balancer's) NIC, Gbit/s")
	simRack    = flag.Int("sim-rack", 40, "simulation: nodes per rack berth")
)

// box is a cache, balancer or node in the model.
type box struct {
	parent   *box
	children []*box
	nic      float64 // bytes a second in and out (each way)
	got      float64 // bytes of the layer held
	rate     float64 // bytes a second it receives this step
	done     float64 // when it held the whole layer (s); 0: not yet
	node     bool    // a pulling node (the time to the last one is the result)
}

func (b *box) add(c *box) *box {
	c.parent = b
	b.children = append(b.children, c)
	return c
}

// simResult is one topology at one N.
type simResult struct {
	last     float64 // seconds to the last node
	upstream float64 // bytes over the WAN
}

// simulate runs the model: top is fed by the WAN at wan bytes a second
// (its own NIC permitting); it returns when every node holds size bytes.
func simulate(top *box, size, wan float64) simResult {
	const dt = 1e-3
	var all []*box
	var walk func(b *box)
	walk = func(b *box) {
		all = append(all, b)
		for _, c := range b.children {
			walk(c)
		}
	}
	walk(top)
	for t := dt; t < 1e5; t += dt {
		// Rates top-down: a child's want is its NIC, and never more than
		// its parent will have by the end of the step.
		top.rate = min(wan, top.nic, (size-top.got)/dt)
		for _, b := range all {
			var active []*box
			for _, c := range b.children {
				if c.got < size {
					active = append(active, c)
				}
			}
			share(b, active, dt, size)
		}
		finished := true
		for _, b := range all {
			b.got = min(size, b.got+b.rate*dt)
			if b.got >= size && b.done == 0 {
				b.done = t
			}
			if b.node && b.done == 0 {
				finished = false
			}
		}
		if finished {
			last := 0.0
			for _, b := range all {
				if b.node {
					last = max(last, b.done)
				}
			}
			return simResult{last: last, upstream: size}
		}
	}
	return simResult{last: -1, upstream: size}
}

// share water-fills b's NIC among active children: each is capped by its
// NIC and by what b holds ahead of it (plus what b receives this step).
func share(b *box, active []*box, dt, size float64) {
	for _, c := range b.children {
		c.rate = 0
	}
	capOf := func(c *box) float64 {
		ahead := (b.got + b.rate*dt - c.got) / dt
		return max(0, min(c.nic, ahead, (size-c.got)/dt))
	}
	left, todo := b.nic, active
	for len(todo) > 0 && left > 1e-9 {
		fair := left / float64(len(todo))
		var next []*box
		used := 0.0
		for _, c := range todo {
			if want := capOf(c) - c.rate; want <= fair {
				c.rate += want
				used += want
			} else {
				c.rate += fair
				used += fair
				next = append(next, c)
			}
		}
		left -= used
		if len(next) == len(todo) {
			break // everyone took a fair share: the NIC is full
		}
		todo = next
	}
}

// simTopologies builds each topology for n nodes.
func simTopologies(n int) map[string]*box {
	gbit := func(g float64) float64 { return g * 1e9 / 8 }
	node := func() *box { return &box{nic: gbit(*simNode), node: true} }
	one := &box{nic: gbit(*simCache)}
	for range n {
		one.add(node())
	}
	owner := &box{nic: gbit(*simCache)}
	lb := owner.add(&box{nic: gbit(*simCache)})
	for range n {
		lb.add(node())
	}
	site := &box{nic: gbit(*simCache)}
	for r := 0; r < n; r += *simRack {
		rack := site.add(&box{nic: gbit(*simCache)})
		for range min(*simRack, n-r) {
			rack.add(node())
		}
	}
	return map[string]*box{"one berth": one, "3-node cluster (hash by digest)": owner, "tiers (site, a berth per rack)": site}
}

// simReport prints the simulation's table.
func simReport() {
	size := *simLayerGB * 1e9
	wan := *simWAN * 1e9 / 8
	tw := tabwriter.NewWriter(os.Stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "\nsimulation: %.0f GB layer pulled by N nodes at once; WAN %.0f Gbit/s, node NIC %.0f Gbit/s, berth/balancer NIC %.0f Gbit/s, %d nodes a rack\n",
		*simLayerGB, *simWAN, *simNode, *simCache, *simRack)
	fmt.Fprintln(tw, "topology\tN\ttime to the last node s\tupstream GB\tWAN time s (floor)\tlast node ÷ WAN time")
	for _, n := range []int{10, 100, 1000} {
		tops := simTopologies(n)
		for _, name := range []string{"one berth", "3-node cluster (hash by digest)", "tiers (site, a berth per rack)"} {
			r := simulate(tops[name], size, wan)
			fmt.Fprintf(tw, "%s\t%d\t%.2f\t%.0f\t%.2f\t%.2f\n", name, n, r.last, r.upstream/1e9, size/wan, r.last/(size/wan))
		}
		direct := float64(n) * size / wan
		fmt.Fprintf(tw, "no cache (every node over the WAN)\t%d\t%.2f\t%.0f\t%.2f\t%.2f\n", n, direct, float64(n)*size/1e9, size/wan, direct/(size/wan))
	}
	tw.Flush()
}
