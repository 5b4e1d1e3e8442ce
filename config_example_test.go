package main

import (
	"os"
	"reflect"
	"regexp"
	"strings"
	"testing"
)

// TestExampleConfigListsEveryKey: config.example.toml names every key the
// config takes (set, or commented out where optional), so that an
// operator can run from it; a key added to config.go without the example
// fails here. It also loads as it is.
func TestExampleConfigListsEveryKey(t *testing.T) {
	text, err := os.ReadFile("config.example.toml")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := loadConfig(strings.NewReader(string(text))); err != nil {
		t.Fatalf("config.example.toml does not load: %v", err)
	}
	var missing []string
	var walk func(t reflect.Type, prefix string)
	walk = func(ty reflect.Type, prefix string) {
		for i := 0; i < ty.NumField(); i++ {
			f := ty.Field(i)
			key, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
			if key == "" || key == "-" {
				continue
			}
			ft := f.Type
			for ft.Kind() == reflect.Slice || ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			if ft.Kind() == reflect.Struct && ft.PkgPath() == "github.com/berth-registry/berth" {
				// A table: its header must be there, then its keys.
				if !regexp.MustCompile(`(?m)^#?\s*\[\[?` + regexp.QuoteMeta(prefix+key) + `\]\]?`).Match(text) {
					missing = append(missing, "["+prefix+key+"]")
				}
				walk(ft, prefix+key+".")
				continue
			}
			if !regexp.MustCompile(`(?m)^#?\s*` + regexp.QuoteMeta(key) + `\s*=`).Match(text) {
				missing = append(missing, prefix+key)
			}
		}
	}
	walk(reflect.TypeOf(Config{}), "")
	if len(missing) > 0 {
		t.Errorf("config.example.toml lacks %d keys: %s", len(missing), strings.Join(missing, ", "))
	}
}
