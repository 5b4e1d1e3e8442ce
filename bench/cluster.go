package main

import (
	"flag"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/crypto/bcrypt"
)

var examplesDir = flag.String("examples", "examples", "the project's examples/ (the cluster's node.toml and nginx.conf)")

// The cluster on the long path: three berths from examples/cluster/
// node.toml as written (the origin swapped for the long path) behind
// nginx with examples/cluster/nginx.conf, pulling the 8×16 MiB image cold
// the way Docker does, with eager layers on (through the balancer, as
// external_url makes them) and off (as the example had to be before).
// Upstream bytes ÷ the image's bytes shows each blob crossing once.

var skipCluster = flag.Bool("no-cluster", false, "skip the cluster on the long path")

// wanCluster runs the cluster scenario once per eager setting.
func (b *bench) wanCluster(wan *wanProxy, r int) error {
	for _, eager := range []bool{true, false} {
		name := "eager layers through the balancer"
		if !eager {
			name = "eager layers off"
		}
		log.Printf("run %d/%d: long path: %s", r, *repeats, name)
		s, err := b.startCluster(wan.addr, eager)
		if err != nil {
			return err
		}
		var before int64
		for _, d := range append([]string{b.images.multiConfig}, b.images.multi...) {
			before += wan.bytes(d)
		}
		wall, err := b.dockerPull(s)
		var after int64
		for _, d := range append([]string{b.images.multiConfig}, b.images.multi...) {
			after += wan.bytes(d)
		}
		s.stop()
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		row := "long path, 3 berths behind nginx (" + name + "): cold 8×16 MiB image: wall s"
		b.record(row, "berth", wall.Seconds())
		b.record(row, "link", b.images.multiMiB*(1<<20)/(*wanLink*1e6)+float64(rttsInImage)*wanLatency.Seconds())
		b.record("long path, 3 berths behind nginx ("+name+"): upstream bytes ÷ image bytes", "berth", float64(after-before)/(b.images.multiMiB*(1<<20)))
	}
	return nil
}

// startCluster starts three berth nodes and nginx in front of them, on
// fresh data directories, proxying upAddr.
func (b *bench) startCluster(upAddr string, eager bool) (*system, error) {
	dir, err := os.MkdirTemp(*outDir, "cluster")
	if err != nil {
		return nil, err
	}
	keyFile := filepath.Join(dir, "token.key")
	os.WriteFile(keyFile, []byte(strings.Repeat("k", 64)), 0o600)
	hash, _ := bcrypt.GenerateFromPassword([]byte("ci-pw"), bcrypt.MinCost)
	htpasswd := filepath.Join(dir, "htpasswd")
	os.WriteFile(htpasswd, []byte("ci:"+string(hash)+"\n"), 0o600)
	lbAddr := fmt.Sprintf("127.0.0.1:%d", freePort())
	example, err := os.ReadFile(filepath.Join(*examplesDir, "cluster", "node.toml"))
	if err != nil {
		return nil, err
	}
	extra := ""
	if !eager {
		extra = "\neager_layers = false"
	}
	cfg := strings.NewReplacer(
		"/etc/berth/token.key", keyFile,
		"/etc/berth/htpasswd", htpasswd,
		"http://registry.internal:5000", "http://"+lbAddr,
		`url = "https://registry-1.docker.io"`, `url = "http://`+upAddr+`"`+extra,
	).Replace(string(example))
	cfgPath := filepath.Join(dir, "node.toml")
	os.WriteFile(cfgPath, []byte(cfg), 0o644)
	var stops []func()
	stopAll := func() {
		for i := len(stops) - 1; i >= 0; i-- {
			stops[i]()
		}
		os.RemoveAll(dir)
	}
	var nodes []string
	for i := range 3 {
		addr := fmt.Sprintf("127.0.0.1:%d", freePort())
		cmd, err := b.startServer(*berthBin, "serve", "--config", cfgPath, "--listen", addr, "--data-dir", filepath.Join(dir, fmt.Sprintf("node-%d", i)))
		if err != nil {
			stopAll()
			return nil, err
		}
		stops = append(stops, func() { stop(cmd) })
		if _, err := waitUp("http://" + addr + "/healthz"); err != nil {
			stopAll()
			return nil, err
		}
		nodes = append(nodes, addr)
	}
	conf, err := os.ReadFile(filepath.Join(*examplesDir, "cluster", "nginx.conf"))
	if err != nil {
		stopAll()
		return nil, err
	}
	c := string(conf)
	for i, p := range []string{"127.0.0.1:5001", "127.0.0.1:5002", "127.0.0.1:5003"} {
		c = strings.Replace(c, "server "+p, "server "+nodes[i], 1)
	}
	c = strings.NewReplacer("listen 5000;", "listen "+lbAddr+";",
		"pid /run/berth-nginx.pid;", "pid "+dir+"/nginx.pid;\nerror_log "+dir+"/error.log;").Replace(c)
	nginxConf := filepath.Join(dir, "nginx.conf")
	os.WriteFile(nginxConf, []byte(c), 0o644)
	cmd, err := b.startServer("nginx", "-c", nginxConf, "-p", dir, "-g", "daemon off;")
	if err != nil {
		stopAll()
		return nil, err
	}
	stops = append(stops, func() { stop(cmd) })
	if _, err := waitUp("http://" + lbAddr + "/healthz"); err != nil {
		stopAll()
		return nil, err
	}
	time.Sleep(100 * time.Millisecond)
	return &system{name: "cluster", addr: lbAddr, stop: stopAll}, nil
}
