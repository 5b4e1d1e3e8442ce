package main

import (
	"errors"
	"fmt"
)

// LimitsConfig is the [limits] table: what clients together and one
// client alone may make berth hold. Past a bound the client gets 429 and
// the others are still served. Zero fields take the defaults noted.
type LimitsConfig struct {
	// MaxConnections bounds the open connections of each listener.
	// Default: three quarters of the open-file limit, at most 8192, so
	// that blob files and upstream connections always find descriptors.
	MaxConnections int `toml:"max_connections"`
	// MaxConnectionsPerClient bounds one client address's connections
	// (default 512); addresses in auth.trusted_proxies count only toward
	// the total.
	MaxConnectionsPerClient int `toml:"max_connections_per_client"`
	// MaxDownloads and MaxDownloadsPerClient bound upstream blob
	// downloads under way (defaults 256 and 32).
	MaxDownloads          int `toml:"max_downloads"`
	MaxDownloadsPerClient int `toml:"max_downloads_per_client"`
	// MaxBlobSize bounds an upstream blob no manifest gave a size, and a
	// pushed blob (default 16GiB).
	MaxBlobSize Size `toml:"max_blob_size"`
	// Unfinished upload sessions: how many and how many bytes, in all
	// and per user (an anonymous client: per address). Defaults 1000,
	// 100, 32GiB and 8GiB.
	MaxUploadSessions        int  `toml:"max_upload_sessions"`
	MaxUploadSessionsPerUser int  `toml:"max_upload_sessions_per_user"`
	MaxUploadBytes           Size `toml:"max_upload_bytes"`
	MaxUploadBytesPerUser    Size `toml:"max_upload_bytes_per_user"`
}

func (l *LimitsConfig) check() error {
	for name, v := range map[string]int64{
		"max_connections": int64(l.MaxConnections), "max_connections_per_client": int64(l.MaxConnectionsPerClient),
		"max_downloads": int64(l.MaxDownloads), "max_downloads_per_client": int64(l.MaxDownloadsPerClient),
		"max_blob_size": int64(l.MaxBlobSize), "max_upload_sessions": int64(l.MaxUploadSessions),
		"max_upload_sessions_per_user": int64(l.MaxUploadSessionsPerUser), "max_upload_bytes": int64(l.MaxUploadBytes),
		"max_upload_bytes_per_user": int64(l.MaxUploadBytesPerUser),
	} {
		if v < 0 {
			return fmt.Errorf("config: limits.%s must not be negative", name)
		}
	}
	if l.MaxConnections > 0 && l.MaxConnectionsPerClient > l.MaxConnections {
		return errors.New("config: limits.max_connections_per_client is above max_connections")
	}
	return nil
}
