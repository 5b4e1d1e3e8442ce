package main

import (
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"
)

func (b *bench) run() error {
	t0 := time.Now()
	if *only == "sim" {
		simReport()
		return nil
	}
	upAddr, err := b.startUpstream()
	if err != nil {
		return err
	}
	log.Printf("seeding the upstream: a %d MiB layer, an 8×16 MiB image, 200 small repositories", *bigMiB)
	if err := b.seed(upAddr); err != nil {
		return err
	}
	for r := 1; r <= *repeats && *only != "curve"; r++ {
		switch *only {
		case "wan", "wan-pull":
			if err := b.wanRun(upAddr, r); err != nil {
				return err
			}
			continue
		case "cold", "cold20":
			if err := b.coldOnly(r); err != nil {
				return err
			}
			continue
		}
		if err := b.loopbackRun(r); err != nil {
			return err
		}
		if !*wanSkip {
			if err := b.wanRun(upAddr, r); err != nil {
				return err
			}
		}
	}
	if *only == "" {
		if err := b.startup(); err != nil {
			return err
		}
	}
	if *only == "" || *only == "curve" {
		if err := b.curveAll(); err != nil {
			return err
		}
	}
	b.report(time.Since(t0))
	b.curveReport()
	if *only == "" {
		simReport()
	}
	return nil
}

// startUpstream starts the upstream registry (distribution) and the
// counting proxy in front of it, and returns the registry's address.
func (b *bench) startUpstream() (string, error) {
	upData, _ := os.MkdirTemp(*outDir, "upstream")
	port := freePort()
	cfg := filepath.Join(upData, "config.yml")
	os.WriteFile(cfg, []byte(fmt.Sprintf("version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: 127.0.0.1:%d\n", filepath.Join(upData, "data"), port)), 0o644)
	up, err := b.start(filepath.Join(*toolsDir, "registry"), "serve", cfg)
	if err != nil {
		return "", err
	}
	b.upProc = up
	b.procs = b.procs[:len(b.procs)-1]
	upAddr := fmt.Sprintf("127.0.0.1:%d", port)
	if _, err := waitUp("http://" + upAddr + "/v2/"); err != nil {
		return "", err
	}
	if b.up, err = newCountingProxy(upAddr); err != nil {
		return "", err
	}
	return upAddr, nil
}

// loopbackRun is run r on loopback: the cold pull direct, then berth and
// distribution through each phase, then nginx serving the blob files
// berth cached (warm only).
func (b *bench) loopbackRun(r int) error {
	log.Printf("run %d/%d: direct", r, *repeats)
	if err := b.coldSingle(&system{name: "direct", addr: b.up.addr}); err != nil {
		return fmt.Errorf("direct: %w", err)
	}
	var berthData string
	for _, name := range []string{"berth", "distribution"} {
		data, _ := os.MkdirTemp(*outDir, name)
		var s *system
		var err error
		if name == "berth" {
			s, err = b.startBerth(data)
			berthData = data
		} else {
			s, err = b.startDistribution(data)
		}
		if err != nil {
			return err
		}
		log.Printf("run %d/%d: %s", r, *repeats, name)
		for _, phase := range []func(*system) error{b.coldSingle, b.cold20, b.warm, b.tags} {
			if err := phase(s); err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
		}
		b.record("peak RSS MiB", name, peakRSSMiB(s.pid))
		b.record("server CPU s, whole run", name, cpuSeconds(s.pid))
		s.stop()
		if name != "berth" {
			os.RemoveAll(data)
		}
	}
	s, err := b.startNginx(berthData)
	if err != nil {
		return err
	}
	log.Printf("run %d/%d: nginx (warm reference)", r, *repeats)
	if err := b.warm(s); err != nil {
		return err
	}
	b.record("peak RSS MiB", "nginx", peakRSSMiB(s.pid))
	s.stop()
	os.RemoveAll(berthData)
	return nil
}

// report prints the table (median of the runs, min–max beside it) and
// writes JSON.
func (b *bench) report(took time.Duration) {
	order := []string{
		"cold 1 client, 8×16 MiB image: wall s", "cold 1 client, 8×16 MiB image: MB/s", "cold 1 client: first layer byte ms",
		"cold 1 client: server CPU s", "cold 1 client: upstream registry CPU s", "cold 1 client: machine CPU s",
		"cold 20 clients, one 256 MiB blob: wall s", "cold 20 clients: MB/s delivered", "cold 20 clients: first byte p50 ms",
		"cold 20 clients: first byte p99 ms", "cold 20 clients: upstream GETs of the blob", "cold 20 clients: upstream bytes ÷ blob size",
		"warm 1 client (hashing): MB/s", "warm 1 client: first byte ms", "warm 20 clients (hashing): MB/s",
		"warm 20 clients: first byte p50 ms", "warm 20 connections (wrk, no hashing): MB/s", "warm: server CPU s per GB served",
		"warm: machine CPU s per GB (server+client+kernel)",
		"warm 20 conns, client discards in kernel: MB/s", "warm, discarding client: server CPU s per GB",
		"warm, discarding client: machine CPU s per GB",
		"cached tags, 200 repos, c=32 (wrk): requests/s", "cached tags: p50 ms", "cached tags: p99 ms",
		"cached tags: upstream requests per request", "peak RSS MiB", "server CPU s, whole run",
		"long path: cold 8×16 MiB image, 3 layers at a time: wall s",
		fmt.Sprintf("long path: cold %d MiB blob, 1 client(s): wall s", *bigMiB), "long path: 1 client: MB/s",
		"long path: 1 client(s): upstream bytes ÷ blob size",
		fmt.Sprintf("long path: cold %d MiB blob, 20 client(s): wall s", *bigMiB),
		"long path: 20 client(s): upstream bytes ÷ blob size",
		"long path: stream cut at half: pull completed (1 yes)", "long path: stream cut at half: MiB fetched twice",
	}
	for k := range b.results {
		if !contains(order, k) {
			order = append(order, k)
		}
	}
	cell := func(v []float64) string {
		if len(v) == 0 {
			return "-"
		}
		lo, hi := v[0], v[0]
		for _, x := range v {
			lo, hi = min(lo, x), max(hi, x)
		}
		if len(v) == 1 || lo == hi {
			return fmt.Sprintf("%.4g", median(v))
		}
		return fmt.Sprintf("%.4g (%.4g–%.4g)", median(v), lo, hi)
	}
	ratio := func(a, p []float64) string {
		if len(a) == 0 || len(p) == 0 || median(p) == 0 {
			return "-"
		}
		return fmt.Sprintf("%.2f", median(a)/median(p))
	}
	tw := tabwriter.NewWriter(os.Stdout, 2, 4, 2, ' ', 0)
	pin := "servers not pinned"
	if *srvCPUs != "" {
		pin = "servers pinned to CPU " + *srvCPUs + ", clients and upstream on the others"
	}
	fmt.Fprintf(tw, "\nberth benchmark (%d runs; median (min–max)); %s; %s\n", *repeats, pin, time.Now().UTC().Format(time.RFC3339))
	fmt.Fprintln(tw, "metric\tberth\tdistribution (proxy)\tnginx (files)\tdirect (no cache)\tlink alone\tberth/distribution\tberth/nginx\tberth/direct\tberth/link")
	fmt.Fprintln(tw, strings.Repeat("-", 20)+"\t-----\t-----\t-----\t-----\t-----\t-----\t-----\t-----\t-----")
	type row struct {
		Metric      string               `json:"metric"`
		Values      map[string][]float64 `json:"values"`
		Median      map[string]float64   `json:"median"`
		RatioDist   string               `json:"berth_over_distribution"`
		RatioNginx  string               `json:"berth_over_nginx"`
		RatioDirect string               `json:"berth_over_direct"`
		RatioLink   string               `json:"berth_over_link"`
	}
	var rows []row
	for _, k := range order {
		v := b.results[k]
		if v == nil {
			continue
		}
		rd, rn, rdir, rl := ratio(v["berth"], v["distribution"]), ratio(v["berth"], v["nginx"]), ratio(v["berth"], v["direct"]), ratio(v["berth"], v["link"])
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", k, cell(v["berth"]), cell(v["distribution"]), cell(v["nginx"]), cell(v["direct"]), cell(v["link"]),
			rd, rn, rdir, rl)
		med := map[string]float64{}
		for sys, vals := range v {
			med[sys] = median(vals)
		}
		rows = append(rows, row{k, v, med, rd, rn, rdir, rl})
	}
	tw.Flush()
	fmt.Printf("\nbenchmark took %s; results in %s\n", took.Round(time.Second), filepath.Join(*outDir, "bench.json"))
	writeJSON(filepath.Join(*outDir, "bench.json"), rows)
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// coldOnly is the loopback cold pull of one client (-only cold) or of the
// big blob by 20 (-only cold20), for each system on a fresh cache.
func (b *bench) coldOnly(r int) error {
	log.Printf("run %d/%d: loopback cold pull (%s)", r, *repeats, *only)
	phase := b.coldSingle
	if *only == "cold20" {
		phase = b.cold20
	} else if err := b.coldSingle(&system{name: "direct", addr: b.up.addr}); err != nil {
		return err
	}
	for _, name := range []string{"berth", "distribution"} {
		data, _ := os.MkdirTemp(*outDir, name)
		start := b.startBerth
		if name == "distribution" {
			start = b.startDistribution
		}
		s, err := start(data)
		if err != nil {
			return err
		}
		var traced chan error
		if s.pprof != "" {
			traced = make(chan error, 2)
			for kind, path := range map[string]string{"trace": "trace", "cpu": "profile"} {
				go func() {
					traced <- saveProfile(s.pprof, path, filepath.Join(*traceDir, fmt.Sprintf("cold-%d.%s", r, kind)))
				}()
			}
			time.Sleep(200 * time.Millisecond) // the trace has started
		}
		err = phase(s)
		if traced != nil {
			for range 2 {
				if terr := <-traced; err == nil {
					err = terr
				}
			}
		}
		s.stop()
		os.RemoveAll(data)
		if err != nil {
			return err
		}
	}
	return nil
}

// saveProfile saves two seconds of berth's runtime trace (go tool trace)
// or CPU profile (go tool pprof).
func saveProfile(pprofAddr, kind, file string) error {
	resp, err := http.Get("http://" + pprofAddr + "/debug/pprof/" + kind + "?seconds=2")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", kind, resp.Status)
	}
	if err := os.MkdirAll(filepath.Dir(file), 0o755); err != nil {
		return err
	}
	f, err := os.Create(file)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
