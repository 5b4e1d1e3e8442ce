package main

import (
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"runtime"
	"syscall"

	"github.com/urfave/cli/v2"
)

func configFromFlags(c *cli.Context) (*Config, error) {
	cfg := defaultConfig()
	if path := c.String("config"); path != "" {
		if c.IsSet("upstream") {
			return nil, errors.New("--upstream is for running without a config file")
		}
		var err error
		if cfg, err = loadConfigFile(path); err != nil {
			return nil, err
		}
	} else if u := c.String("upstream"); u != "" {
		cfg.Repositories = []RepositoryConfig{{Name: "upstream", Kind: "proxy", URL: u}}
	}
	if v := c.String("listen"); v != "" {
		cfg.Listen = v
	}
	if v := c.String("data-dir"); v != "" {
		cfg.DataDir = v
	}
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	return cfg, nil
}

// minProcs is the GOMAXPROCS to set, or 0 to keep Go's choice. On one
// CPU (a small VM, a cgroup limit, taskset) Go runs goroutines on one
// thread, and a goroutine in a blocking syscall (the fsyncs of a blob
// commit, bbolt's fdatasync) holds it until the runtime's monitor takes
// it back, up to 10 ms later: every request waits meanwhile. Two threads
// let the others run while one waits on the disk (the loopback bench's
// first layer byte: 31 ms with one, 16 ms with two). An operator's
// GOMAXPROCS is kept.
func minProcs(env string, current int) int {
	if env != "" || current >= 2 {
		return 0
	}
	return 2
}

func pprofMux() *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}

// newLogger returns the logger of cfg and its level, which SIGHUP may
// change.
func newLogger(cfg *Config, w io.Writer) (*slog.Logger, *slog.LevelVar) {
	level := new(slog.LevelVar)
	level.Set(logLevel(cfg))
	opts := &slog.HandlerOptions{Level: level}
	if cfg.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts)), level
	}
	return slog.New(slog.NewTextHandler(w, opts)), level
}

// logLevel is cfg's log_level (INFO when unset; a bad one was refused by
// the config check).
func logLevel(cfg *Config) slog.Level {
	var level slog.Level
	if err := level.UnmarshalText([]byte(cfg.LogLevel)); err != nil {
		return slog.LevelInfo
	}
	return level
}

// serveCommand: berth serve, run the registry.
func serveCommand(stdout, stderr io.Writer) *cli.Command {
	return &cli.Command{
		Name:  "serve",
		Usage: "run the registry",
		Flags: []cli.Flag{
			configFlag(),
			&cli.StringFlag{Name: "listen", Usage: "listen `ADDR` (overrides the file)"},
			&cli.StringFlag{Name: "data-dir", Usage: "data `DIR` (overrides the file)"},
			&cli.StringFlag{Name: "upstream", Usage: "proxy the registry at `URL` instead of Docker Hub (no config file)"},
			&cli.StringFlag{Name: "pprof", Usage: "serve Go's pprof profiles on `ADDR` (for profiling; keep it on loopback)"},
		},
		Action: func(c *cli.Context) error {
			cfg, err := configFromFlags(c)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(c.Context, os.Interrupt, syscall.SIGTERM)
			defer stop()
			log, level := newLogger(cfg, stderr)
			if n := minProcs(os.Getenv("GOMAXPROCS"), runtime.GOMAXPROCS(0)); n > 0 {
				runtime.GOMAXPROCS(n)
				log.Debug("one CPU: two Go threads run goroutines, so an fsync does not stall every request", "GOMAXPROCS", n)
			}
			m, err := NewMain(cfg, log)
			if err != nil {
				return err
			}
			if addr := c.String("pprof"); addr != "" {
				m.srv.Go("pprof listener", func() {
					if err := http.ListenAndServe(addr, pprofMux()); err != nil {
						m.log.Error("pprof listener", "addr", addr, "err", err)
					}
				})
			}
			defer m.Close()
			m.level, m.cfgPath = level, c.String("config")
			return m.Run(ctx)
		},
	}
}
