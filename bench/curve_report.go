package main

import (
	"fmt"
	"log"
	"maps"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
)

// curveTargets are the bounds at a million blobs.
var curveTargets = map[string]string{
	"cost curve: start-up to the first manifest answered: ms": "≤ 1000 at 1M",
	"cost curve: idle RSS: MiB":                               "≤ 128 at 1M",
	"cost curve: manifest p99 during GC ÷ idle":               "≤ 2 at 1M",
}

// curveReport prints the cost curve as a table (median of the runs at
// each size, the exponent of n it grows with) and plots it with gnuplot
// into build/bench/cost-curve.png.
func (b *bench) curveReport() {
	if len(b.curve) == 0 {
		return
	}
	sizeSet := map[int]bool{}
	for _, pts := range b.curve {
		for n := range pts {
			sizeSet[n] = true
		}
	}
	sizes := slices.Sorted(maps.Keys(sizeSet))
	metrics := slices.Sorted(maps.Keys(b.curve))
	tw := tabwriter.NewWriter(os.Stdout, 2, 4, 2, ' ', 0)
	head := "\ncost curve (blobs in the store)"
	for _, n := range sizes {
		head += fmt.Sprintf("\t%d", n)
	}
	fmt.Fprintln(tw, head+"\texponent of n\ttarget")
	for _, m := range metrics {
		row := strings.TrimPrefix(m, "cost curve: ")
		for _, n := range sizes {
			if v := b.curve[m][n]; len(v) > 0 {
				row += fmt.Sprintf("\t%.4g", median(v))
			} else {
				row += "\t-"
			}
		}
		e := exponent(b.curve[m])
		es := "-"
		if !math.IsNaN(e) {
			es = fmt.Sprintf("%.2f", e)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", row, es, curveTargets[m])
	}
	tw.Flush()
	if err := b.curvePlot(sizes, metrics); err != nil {
		log.Printf("cost curve plot: %v", err)
	}
}

// curvePlot writes the curve's data and a gnuplot script next to the
// results and renders cost-curve.png: times, sizes and latencies against
// the store's size, log-log.
func (b *bench) curvePlot(sizes []int, metrics []string) error {
	panels := []struct {
		title, unit string
		match       func(string) bool
	}{
		{"passes and start-up", "seconds", func(m string) bool {
			return strings.HasSuffix(m, ": s") || strings.HasSuffix(m, ": ms") && strings.Contains(m, "start-up")
		}},
		{"memory and index", "MiB", func(m string) bool { return strings.HasSuffix(m, ": MiB") }},
		{"manifest p99 of a warm hammer", "ms", func(m string) bool { return strings.Contains(m, "p99") && strings.HasSuffix(m, ": ms") }},
	}
	dat := filepath.Join(*outDir, "cost-curve.dat")
	png := filepath.Join(*outDir, "cost-curve.png")
	var data, script strings.Builder
	fmt.Fprintf(&script, "set terminal pngcairo size 1500,520 noenhanced font ',10'\nset output %q\nset multiplot layout 1,3 title 'berth: cost against blobs in the store (log-log)'\nset logscale xy\nset key top left\nset grid\nset xlabel 'blobs'\n", png)
	block := 0
	for _, p := range panels {
		var plots []string
		for _, m := range metrics {
			if !p.match(m) {
				continue
			}
			scale := 1.0
			if p.unit == "seconds" && strings.HasSuffix(m, ": ms") {
				scale = 1e-3
			}
			fmt.Fprintf(&data, "# %s\n", m)
			for _, n := range sizes {
				if v := b.curve[m][n]; len(v) > 0 {
					fmt.Fprintf(&data, "%d %g\n", n, median(v)*scale)
				}
			}
			fmt.Fprint(&data, "\n\n")
			name := strings.TrimPrefix(m, "cost curve: ")
			name = name[:strings.LastIndex(name, ":")]
			plots = append(plots, fmt.Sprintf("%q index %d with linespoints title %q", dat, block, fmt.Sprintf("%s (n^%.2f)", name, exponent(b.curve[m]))))
			block++
		}
		if len(plots) == 0 {
			continue
		}
		fmt.Fprintf(&script, "set title %q\nset ylabel %q\nplot %s\n", p.title, p.unit, strings.Join(plots, ", "))
	}
	fmt.Fprint(&script, "unset multiplot\n")
	if err := os.WriteFile(dat, []byte(data.String()), 0o644); err != nil {
		return err
	}
	gp := filepath.Join(*outDir, "cost-curve.gp")
	if err := os.WriteFile(gp, []byte(script.String()), 0o644); err != nil {
		return err
	}
	if out, err := exec.Command("gnuplot", gp).CombinedOutput(); err != nil {
		return fmt.Errorf("gnuplot: %v: %s", err, out)
	}
	fmt.Printf("cost curve plotted: %s\n", png)
	return nil
}
