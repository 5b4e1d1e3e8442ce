package main

import (
	"fmt"
	"reflect"
	"strings"

	"github.com/BurntSushi/toml"
)

// unknownKeyError names each key the config does not know, where it is
// (which [[repository]], by its name) and the key it most likely meant:
// `unknown key(s): repository.tagttl (in repository "dockerhub": did you
// mean tag_ttl?)`.
func unknownKeyError(keys []toml.Key, raw map[string]any) error {
	var parts []string
	for _, k := range keys {
		s := k.String()
		var notes []string
		if where := keyOwners(k, raw); where != "" {
			notes = append(notes, "in "+where)
		}
		if sug := suggestKey(k); sug != "" {
			notes = append(notes, "did you mean "+sug+"?")
		}
		if len(notes) > 0 {
			s += " (" + strings.Join(notes, ": ") + ")"
		}
		parts = append(parts, s)
	}
	return fmt.Errorf("config: unknown key(s): %s", strings.Join(parts, ", "))
}

// knownKeys returns the toml keys of the table at path (without the last
// element of a key), from Config's struct tags.
func knownKeys(path []string) []string {
	t := reflect.TypeOf(Config{})
	for _, p := range path {
		f, ok := fieldByTag(t, p)
		if !ok {
			return nil
		}
		t = f.Type
		for t.Kind() == reflect.Slice || t.Kind() == reflect.Pointer {
			t = t.Elem()
		}
		if t.Kind() != reflect.Struct {
			return nil
		}
	}
	var out []string
	for i := 0; i < t.NumField(); i++ {
		if tag, _, _ := strings.Cut(t.Field(i).Tag.Get("toml"), ","); tag != "" && tag != "-" {
			out = append(out, tag)
		}
	}
	return out
}

func fieldByTag(t reflect.Type, tag string) (reflect.StructField, bool) {
	for i := 0; i < t.NumField(); i++ {
		if name, _, _ := strings.Cut(t.Field(i).Tag.Get("toml"), ","); name == tag {
			return t.Field(i), true
		}
	}
	return reflect.StructField{}, false
}

// suggestKey is the known key k most likely meant: the same but for case,
// '_' and '-', or one or two edits away.
func suggestKey(k toml.Key) string {
	if len(k) == 0 {
		return ""
	}
	last := k[len(k)-1]
	norm := func(s string) string { return strings.NewReplacer("_", "", "-", "").Replace(strings.ToLower(s)) }
	best, bestD := "", 3
	for _, c := range knownKeys(k[:len(k)-1]) {
		if norm(c) == norm(last) {
			return c
		}
		if d := editDistance(strings.ToLower(last), c); d < bestD {
			best, bestD = c, d
		}
	}
	return best
}

// keyOwners names the array-table entries that hold key k
// (`repository "dockerhub"`), "" for a plain table.
func keyOwners(k toml.Key, raw map[string]any) string {
	if len(k) != 2 {
		return ""
	}
	list, ok := raw[k[0]].([]map[string]any)
	if !ok {
		return ""
	}
	var names []string
	for i, e := range list {
		if _, has := e[k[1]]; !has {
			continue
		}
		switch n := e["name"].(type) {
		case string:
			names = append(names, fmt.Sprintf("%s %q", k[0], n))
		default:
			if l, ok := e["listen"].(string); ok {
				names = append(names, fmt.Sprintf("%s %q", k[0], l))
			} else {
				names = append(names, fmt.Sprintf("%s #%d", k[0], i+1))
			}
		}
	}
	return strings.Join(names, ", ")
}

// editDistance is the Levenshtein distance of a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur := make([]int, len(b)+1)
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev = cur
	}
	return prev[len(b)]
}
