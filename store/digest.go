package store

import (
	"crypto/sha256"
	"crypto/sha512"
	"errors"
	"fmt"
	"hash"
	"path/filepath"
	"strings"
)

// ErrDigestInvalid is returned by ParseDigest for a string that is not a
// sha256 or sha512 digest in canonical (lowercase hex) form.
var ErrDigestInvalid = errors.New("invalid digest")

// Digest is a validated content digest such as "sha256:<64 hex>".
type Digest struct {
	alg string
	hex string
}

// ParseDigest validates s and returns it as a Digest. Only sha256 and sha512
// are supported; the encoded part must be lowercase hex of the right length.
func ParseDigest(s string) (Digest, error) {
	alg, hexPart, ok := strings.Cut(s, ":")
	if !ok {
		return Digest{}, fmt.Errorf("%w: %q has no algorithm", ErrDigestInvalid, s)
	}
	var want int
	switch alg {
	case "sha256":
		want = 64
	case "sha512":
		want = 128
	default:
		return Digest{}, fmt.Errorf("%w: unsupported algorithm %q", ErrDigestInvalid, alg)
	}
	if len(hexPart) != want {
		return Digest{}, fmt.Errorf("%w: %s needs %d hex characters", ErrDigestInvalid, alg, want)
	}
	for i := 0; i < len(hexPart); i++ {
		c := hexPart[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return Digest{}, fmt.Errorf("%w: non-hex character in %q", ErrDigestInvalid, s)
		}
	}
	return Digest{alg: alg, hex: hexPart}, nil
}

// MustDigest is ParseDigest for tests and constants; it panics on error.
func MustDigest(s string) Digest {
	d, err := ParseDigest(s)
	if err != nil {
		panic(err)
	}
	return d
}

// DigestOf returns the sha256 digest of b.
func DigestOf(b []byte) Digest {
	sum := sha256.Sum256(b)
	return Digest{alg: "sha256", hex: fmt.Sprintf("%x", sum[:])}
}

// String returns the digest as "<alg>:<hex>".
func (d Digest) String() string {
	if d.alg == "" {
		return ""
	}
	return d.alg + ":" + d.hex
}

// Algorithm returns "sha256" or "sha512".
func (d Digest) Algorithm() string { return d.alg }

// Hex returns the encoded part of the digest.
func (d Digest) Hex() string { return d.hex }

// IsZero reports whether d is the zero Digest.
func (d Digest) IsZero() bool { return d.alg == "" }

// Verify reports whether b hashes to d.
func (d Digest) Verify(b []byte) bool {
	h := d.NewHash()
	h.Write(b)
	return fmt.Sprintf("%x", h.Sum(nil)) == d.hex
}

// NewHash returns a fresh hash of d's algorithm.
func (d Digest) NewHash() hash.Hash { return newHash(d.alg) }

func newHash(alg string) hash.Hash {
	if alg == "sha512" {
		return sha512.New()
	}
	return sha256.New()
}

// relPath is the file of d below the data directory.
func (d Digest) relPath() string {
	return filepath.Join("blobs", d.alg, d.hex[:2], d.hex)
}
