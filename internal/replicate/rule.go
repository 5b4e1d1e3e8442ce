package replicate

import (
	"fmt"
	"regexp"
	"slices"
	"strings"

	"golang.org/x/mod/semver"
)

// Rule says what a run copies. The zero value of each filter chooses
// everything.
type Rule struct {
	// Name identifies the rule in metrics, logs and the status page.
	Name string `json:"name"`
	// To is the hosted repository copied into, optionally with a path
	// prefix for the images ("internal" or "internal/mirror").
	To string `json:"to"`
	// Repositories are the source's repositories: names, or globs matched
	// against its catalog ("*" within a path segment, "**" across
	// segments). Empty: every repository of the catalog.
	Repositories []string `json:"repositories,omitempty"`
	// Exclude are globs of repositories left out.
	Exclude []string `json:"exclude,omitempty"`
	// Tags are globs of the tags copied (empty: all).
	Tags []string `json:"tags,omitempty"`
	// Semver keeps only tags that are semantic versions within the range
	// (">=1.2 <2", "^1.4", "~1.4.2", "=1.0.0"; comparators separated by
	// spaces or commas, all of which must hold).
	Semver string `json:"semver,omitempty"`
	// Newest keeps the N greatest tags left after the other filters, by
	// semantic version (tags that are not versions rank below those that
	// are, among themselves by name). Zero: all.
	Newest int `json:"newest,omitempty"`
	// Platforms ("os/arch[/variant]") of multi-platform images; empty:
	// every platform. An index is kept whole (its digest does not
	// change); children of other platforms are not copied.
	Platforms []string `json:"platforms,omitempty"`
	// NoReferrers leaves out the referrers (signatures, SBOMs,
	// attestations) of copied images, both those of the referrers API and
	// the tag scheme (sha256-<hex>[.sig|.att|.sbom] tags).
	NoReferrers bool `json:"no_referrers,omitempty"`
	// Delete mirrors deletions: a tag the target holds under the rule's
	// filters that the source no longer has is deleted.
	Delete bool `json:"delete,omitempty"`
	// DryRun reads the source and reports what would be copied and its
	// size, writing nothing and fetching no blob.
	DryRun bool `json:"dry_run,omitempty"`
	// Concurrency is how many blobs are fetched at once (default 4).
	Concurrency int `json:"concurrency,omitempty"`
}

// maxConcurrency bounds Rule.Concurrency: each stream is an upstream
// connection (the source's own caps still apply).
const maxConcurrency = 32

var (
	nameRE = regexp.MustCompile(`^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*$`)
	tagRE  = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$`)
	// referrerTagRE is the tag scheme of referrers: cosign's
	// sha256-<hex>.sig/.att/.sbom and the OCI fallback sha256-<hex>.
	referrerTagRE = regexp.MustCompile(`^sha256-([a-f0-9]{64})(?:\.(?:sig|att|sbom))?$`)
)

// ValidName reports whether s is a repository name of the distribution
// spec (at most 255 bytes).
func ValidName(s string) bool { return len(s) <= 255 && nameRE.MatchString(s) }

// Check reports what is wrong with r, in words an operator can act on.
func (r *Rule) Check() error {
	if r.Name == "" || len(r.Name) > 100 || strings.ContainsAny(r.Name, " \t\n\"\\") {
		return fmt.Errorf("replication rule name %q: want a short name without spaces or quotes", r.Name)
	}
	repo, prefix, _ := strings.Cut(r.To, "/")
	if repo == "" || (prefix != "" && !ValidName(prefix)) {
		return fmt.Errorf("replication rule %q: to = %q: want a hosted repository, optionally /prefix", r.Name, r.To)
	}
	for _, g := range slices.Concat(r.Repositories, r.Exclude, r.Tags) {
		if _, err := globRE(g); err != nil || g == "" || len(g) > 255 {
			return fmt.Errorf("replication rule %q: bad pattern %q", r.Name, g)
		}
	}
	if _, err := parseRange(r.Semver); err != nil {
		return fmt.Errorf("replication rule %q: semver %q: %v", r.Name, r.Semver, err)
	}
	for _, p := range r.Platforms {
		if parts := strings.Split(p, "/"); len(parts) < 2 || len(parts) > 3 || parts[0] == "" || parts[1] == "" {
			return fmt.Errorf("replication rule %q: platform %q: want os/arch[/variant]", r.Name, p)
		}
	}
	if r.Newest < 0 || r.Concurrency < 0 || r.Concurrency > maxConcurrency {
		return fmt.Errorf("replication rule %q: newest and concurrency must be ≥ 0 (concurrency at most %d)", r.Name, maxConcurrency)
	}
	return nil
}

// glob matches name against pattern: "*" and "?" within a path
// segment, "**" across segments; other characters stand for themselves.
func glob(pattern, name string) bool {
	re, err := globRE(pattern)
	return err == nil && re.MatchString(name)
}

func globRE(pattern string) (*regexp.Regexp, error) {
	var b strings.Builder
	b.WriteString("^")
	for i := 0; i < len(pattern); i++ {
		switch c := pattern[i]; {
		case c == '*' && i+1 < len(pattern) && pattern[i+1] == '*':
			b.WriteString(".*")
			i++
		case c == '*':
			b.WriteString("[^/]*")
		case c == '?':
			b.WriteString("[^/]")
		default:
			b.WriteString(regexp.QuoteMeta(string(c)))
		}
	}
	b.WriteString("$")
	return regexp.Compile(b.String())
}

func anyGlob(patterns []string, name string) bool {
	return slices.ContainsFunc(patterns, func(p string) bool { return glob(p, name) })
}

// literal reports whether pattern names one repository (no glob).
func literal(pattern string) bool { return !strings.ContainsAny(pattern, "*?") }

// wantRepository reports whether the rule copies the source repository
// name.
func (r *Rule) wantRepository(name string) bool {
	if anyGlob(r.Exclude, name) {
		return false
	}
	return len(r.Repositories) == 0 || anyGlob(r.Repositories, name)
}

// chooseTags applies the tag filters to tags, in order: globs, semver
// range, newest N. Referrer-scheme tags are never chosen here (they follow
// the images they refer to).
func (r *Rule) chooseTags(tags []string) []string {
	rng, _ := parseRange(r.Semver)
	var out []string
	for _, t := range tags {
		if referrerTagRE.MatchString(t) {
			continue
		}
		if len(r.Tags) > 0 && !anyGlob(r.Tags, t) {
			continue
		}
		if rng != nil && !rng.holds(t) {
			continue
		}
		out = append(out, t)
	}
	if r.Newest > 0 && len(out) > r.Newest {
		slices.SortStableFunc(out, func(a, b string) int { return -compareTags(a, b) })
		out = out[:r.Newest]
	}
	return out
}

// wantPlatform reports whether a child of an index for platform p
// (os/arch, variant) is copied.
func (r *Rule) wantPlatform(os, arch, variant string) bool {
	if len(r.Platforms) == 0 {
		return true
	}
	return slices.Contains(r.Platforms, os+"/"+arch) || (variant != "" && slices.Contains(r.Platforms, os+"/"+arch+"/"+variant))
}

// canonical returns tag as a semantic version of x/mod/semver ("1.2" →
// "v1.2"), or "" when it is not one.
func canonical(tag string) string {
	v := tag
	if !strings.HasPrefix(v, "v") {
		v = "v" + v
	}
	if !semver.IsValid(v) {
		return ""
	}
	return v
}

// compareTags orders versions above other tags, versions by semver,
// others by name.
func compareTags(a, b string) int {
	va, vb := canonical(a), canonical(b)
	switch {
	case va != "" && vb != "":
		if c := semver.Compare(va, vb); c != 0 {
			return c
		}
	case va != "":
		return 1
	case vb != "":
		return -1
	}
	return strings.Compare(a, b)
}

// versionRange is a list of comparators that must all hold.
type versionRange []comparator

type comparator struct {
	op string // >=, >, <=, <, =
	v  string // canonical
}

// prereleases reports whether the range names a pre-release: only then
// are pre-release tags (v2.0.0-rc.1) within it, as in npm and Cargo.
func (rng versionRange) prereleases() bool {
	for _, c := range rng {
		if semver.Prerelease(c.v) != "" && c.v[len(c.v)-2:] != "-0" {
			return true
		}
		if c.op == ">=" && strings.HasSuffix(c.v, "-0") {
			return true
		}
	}
	return false
}

// parseRange parses a range ("" is nil: every tag).
func parseRange(s string) (versionRange, error) {
	fields := strings.FieldsFunc(s, func(r rune) bool { return r == ' ' || r == ',' })
	var rng versionRange
	for _, f := range fields {
		rest := strings.TrimLeft(f, "<>=^~")
		op := f[:len(f)-len(rest)]
		v := canonical(rest)
		if v == "" {
			return nil, fmt.Errorf("%q is not a version", rest)
		}
		switch op {
		case ">=", ">", "<=", "<", "=", "":
			if op == "" {
				op = "="
			}
			rng = append(rng, comparator{op, v})
		case "^": // same major (same minor for 0.x)
			upper := nextMajor(v)
			if semver.Major(v) == "v0" {
				upper = nextMinor(v)
			}
			rng = append(rng, comparator{">=", v}, comparator{"<", upper})
		case "~": // same minor
			rng = append(rng, comparator{">=", v}, comparator{"<", nextMinor(v)})
		default:
			return nil, fmt.Errorf("%q: want one of >= > <= < = ^ ~", op)
		}
	}
	return rng, nil
}

func nextMajor(v string) string {
	var major int
	fmt.Sscanf(semver.Major(v), "v%d", &major)
	return fmt.Sprintf("v%d.0.0-0", major+1)
}

func nextMinor(v string) string {
	var major, minor int
	fmt.Sscanf(semver.MajorMinor(v), "v%d.%d", &major, &minor)
	return fmt.Sprintf("v%d.%d.0-0", major, minor+1)
}

// holds reports whether tag is a version within the range.
func (rng versionRange) holds(tag string) bool {
	v := canonical(tag)
	if v == "" || (semver.Prerelease(v) != "" && !rng.prereleases()) {
		return false
	}
	for _, c := range rng {
		cmp := semver.Compare(v, c.v)
		ok := false
		switch c.op {
		case ">=":
			ok = cmp >= 0
		case ">":
			ok = cmp > 0
		case "<=":
			ok = cmp <= 0
		case "<":
			ok = cmp < 0
		case "=":
			ok = cmp == 0
		}
		if !ok {
			return false
		}
	}
	return true
}
