package main

import (
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/berth-registry/berth/server"
)

// authOptions builds the server's access control from the config: users
// (inline hashes or the htpasswd file), the token key (made on first
// start, 0600), the realm settings.
func authOptions(cfg *Config) (server.AuthOptions, error) {
	o := server.AuthOptions{
		TokenTTL: time.Duration(cfg.Auth.TokenTTL), ExternalURL: cfg.Auth.ExternalURL,
		MaxUploadsPerClient: cfg.Auth.MaxUploadsPerClient,
	}
	for _, p := range cfg.Auth.TrustedProxies {
		if !strings.Contains(p, "/") {
			if strings.Contains(p, ":") {
				p += "/128"
			} else {
				p += "/32"
			}
		}
		_, n, err := net.ParseCIDR(p)
		if err != nil {
			return o, fmt.Errorf("auth.trusted_proxies: %w", err)
		}
		o.TrustedProxies = append(o.TrustedProxies, n)
	}
	var htp map[string]string
	if cfg.Auth.Htpasswd != "" {
		var err error
		if htp, err = loadHtpasswd(cfg.Auth.Htpasswd); err != nil {
			return o, err
		}
	}
	for _, u := range cfg.Users {
		hash := u.PasswordHash
		if hash == "" {
			if hash = htp[u.Name]; hash == "" {
				return o, fmt.Errorf("user %q has no password_hash and is not in %s", u.Name, cfg.Auth.Htpasswd)
			}
		}
		o.Users = append(o.Users, server.User{Name: u.Name, PasswordHash: []byte(hash), Pull: u.Pull, Push: u.Push})
	}
	keyFile := cfg.Auth.TokenKeyFile
	if keyFile == "" {
		keyFile = filepath.Join(cfg.DataDir, "token.key")
	}
	key, err := tokenKey(keyFile)
	if err != nil {
		return o, err
	}
	o.TokenKey = key
	return o, nil
}

// tokenKey reads the signing key, making a random one (0600) on first use.
func tokenKey(file string) ([]byte, error) {
	key, err := os.ReadFile(file)
	if err == nil {
		if len(key) < 32 {
			return nil, fmt.Errorf("token key %s: shorter than 32 bytes", file)
		}
		return key, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("token key: %w", err)
	}
	key = make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(file), 0o750); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(file, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("token key: %w", err)
	}
	defer f.Close()
	if _, err := f.Write(key); err != nil {
		return nil, err
	}
	return key, f.Sync()
}
