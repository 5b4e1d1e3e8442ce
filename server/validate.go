package server

import (
	"fmt"
	"regexp"
	"slices"
	"strings"
)

// repositoryNameRe is the grammar of a berth repository name: the first
// path segment of the images it serves.
var repositoryNameRe = regexp.MustCompile(`^[a-z0-9]+([._-][a-z0-9]+)*$`)

// ValidateRepositories checks the rules that tie repositories together,
// the one place they are written: names are valid and unique, kinds are
// known, group members exist and form no cycle, push_to is a hosted
// member, anonymous pushes are for hosted repositories, and the default
// repository (when not "") exists. New calls it; so does berth
// check-config, before anything is opened.
func ValidateRepositories(repos []Repository, defaultRepository string) error {
	byName := map[string]*Repository{}
	for i := range repos {
		r := &repos[i]
		where := fmt.Sprintf("repository[%d]", i)
		if r.Name != "" {
			where = fmt.Sprintf("repository %q", r.Name)
		}
		if !repositoryNameRe.MatchString(r.Name) {
			return fmt.Errorf("%s: name must be lowercase letters, digits and . _ - (no slash)", where)
		}
		if byName[r.Name] != nil {
			return fmt.Errorf("%s: duplicate name", where)
		}
		byName[r.Name] = r
		switch r.Kind {
		case KindProxy, KindHosted:
			if len(r.Members) > 0 || r.PushTo != "" {
				return fmt.Errorf("%s: members and push_to are for groups", where)
			}
		case KindGroup:
			if len(r.Members) == 0 {
				return fmt.Errorf("%s: members is required for a group", where)
			}
		case "":
			return fmt.Errorf("%s: kind is required (proxy, hosted or group)", where)
		default:
			return fmt.Errorf("%s: kind %q: want proxy, hosted or group", where, r.Kind)
		}
		if r.AnonymousPush && r.Kind != KindHosted {
			return fmt.Errorf("%s: anonymous_push is for hosted repositories", where)
		}
	}
	for _, r := range repos {
		if r.Kind != KindGroup {
			continue
		}
		for _, m := range r.Members {
			if byName[m] == nil {
				return fmt.Errorf("repository %q: member %q is not a configured repository", r.Name, m)
			}
		}
		if r.PushTo != "" && (byName[r.PushTo].kind() != KindHosted || !slices.Contains(r.Members, r.PushTo)) {
			return fmt.Errorf("repository %q: push_to %q must be one of its hosted members", r.Name, r.PushTo)
		}
		if cycle := groupCycle(byName, r.Name, nil); cycle != nil {
			return fmt.Errorf("group cycle: %s", strings.Join(cycle, " → "))
		}
	}
	if defaultRepository != "" && byName[defaultRepository] == nil {
		return fmt.Errorf("default_repository %q is not a configured repository", defaultRepository)
	}
	return nil
}

func (r *Repository) kind() string {
	if r == nil {
		return ""
	}
	return r.Kind
}

// groupCycle returns a path of group names that leads from name back to a
// group already on path, or nil.
func groupCycle(byName map[string]*Repository, name string, path []string) []string {
	if i := slices.Index(path, name); i >= 0 {
		return append(slices.Clone(path[i:]), name)
	}
	r := byName[name]
	if r == nil || r.Kind != KindGroup {
		return nil
	}
	path = append(path, name)
	for _, m := range r.Members {
		if c := groupCycle(byName, m, path); c != nil {
			return c
		}
	}
	return nil
}
