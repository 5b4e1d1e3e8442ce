package replicate

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/berth-registry/berth/upstream"
)

func TestGlob(t *testing.T) {
	for _, c := range []struct {
		pattern, name string
		want          bool
	}{
		{"team/*", "team/app", true},
		{"team/*", "team/app/sub", false},
		{"team/**", "team/app/sub", true},
		{"**", "a/b/c", true},
		{"**/app", "x/y/app", true},
		{"**/app", "x/y/apps", false},
		{"app?", "app1", true},
		{"a.b", "aXb", false}, // regexp metacharacters stand for themselves
		{"v1*", "v1.2.3", true},
		{"v1*", "v2", false},
	} {
		if got := glob(c.pattern, c.name); got != c.want {
			t.Errorf("glob(%q, %q) = %v", c.pattern, c.name, got)
		}
	}
}

func TestChooseTags(t *testing.T) {
	tags := []string{"latest", "v1.0.0", "1.2.0", "v1.10.0", "v2.0.0-rc.1", "v2.0.0", "0.9.1", "nightly",
		"sha256-" + strings.Repeat("a", 64) + ".sig", "sha256-" + strings.Repeat("b", 64)}
	for _, c := range []struct {
		rule Rule
		want string
	}{
		{Rule{}, "latest,v1.0.0,1.2.0,v1.10.0,v2.0.0-rc.1,v2.0.0,0.9.1,nightly"},
		{Rule{Tags: []string{"v*"}}, "v1.0.0,v1.10.0,v2.0.0-rc.1,v2.0.0"},
		{Rule{Semver: ">=1.2 <2"}, "1.2.0,v1.10.0"},
		{Rule{Semver: "^1.0"}, "v1.0.0,1.2.0,v1.10.0"},
		{Rule{Semver: "~1.2.0"}, "1.2.0"},
		{Rule{Semver: "^0.9"}, "0.9.1"},
		{Rule{Semver: "=2.0.0"}, "v2.0.0"},
		{Rule{Semver: ">=2.0.0-0"}, "v2.0.0-rc.1,v2.0.0"},
		{Rule{Newest: 3}, "v2.0.0,v2.0.0-rc.1,v1.10.0"},
		{Rule{Tags: []string{"latest", "nightly"}, Newest: 5}, "latest,nightly"},
	} {
		if got := strings.Join(c.rule.chooseTags(tags), ","); got != c.want {
			t.Errorf("%+v: %s, want %s", c.rule, got, c.want)
		}
	}
}

func TestRuleCheck(t *testing.T) {
	good := Rule{Name: "r", To: "internal/mirror", Repositories: []string{"team/**"}, Semver: ">=1 <2", Platforms: []string{"linux/arm64/v8"}}
	if err := good.Check(); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []Rule{
		{Name: "", To: "internal"},
		{Name: "a b", To: "internal"},
		{Name: "r", To: ""},
		{Name: "r", To: "internal/UPPER"},
		{Name: "r", To: "internal", Semver: ">=one"},
		{Name: "r", To: "internal", Semver: "!1.0"},
		{Name: "r", To: "internal", Platforms: []string{"linux"}},
		{Name: "r", To: "internal", Newest: -1},
		{Name: "r", To: "internal", Concurrency: 1000},
		{Name: "r", To: "internal", Tags: []string{""}},
	} {
		if err := bad.Check(); err == nil {
			t.Errorf("%+v passed the check", bad)
		}
	}
}

// pages answers a paged list from names, n at a time, with Link headers
// shaped by link.
func pages(names []string, link func(last string) string) func(url.Values) (*http.Response, error) {
	return func(q url.Values) (*http.Response, error) {
		start := 0
		if last := q.Get("last"); last != "" {
			for start < len(names) && names[start] <= last {
				start++
			}
		}
		end := min(start+3, len(names))
		page := names[start:end]
		hdr := http.Header{}
		if end < len(names) {
			hdr.Set("Link", link(page[len(page)-1]))
		}
		body := `{"tags":["` + strings.Join(page, `","`) + `"]}`
		return &http.Response{StatusCode: 200, Header: hdr, Body: io.NopCloser(strings.NewReader(body))}, nil
	}
}

func TestListPagesAndBounds(t *testing.T) {
	var names []string
	for i := range 10 {
		names = append(names, fmt.Sprintf("t%02d", i))
	}
	got, err := list(context.Background(), "x", "tags", pages(names, func(last string) string {
		return `</v2/x/tags/list?last=` + last + `&n=3>; rel="next"`
	}))
	if err != nil || strings.Join(got, ",") != strings.Join(names, ",") {
		t.Fatalf("paged list: %v %v", got, err)
	}
	// A Link on another host is not followed there: only last= is read.
	got, err = list(context.Background(), "x", "tags", pages(names, func(last string) string {
		return `<http://169.254.169.254/v2/x/tags/list?last=` + last + `>; rel="next"`
	}))
	if err != nil || len(got) != 10 {
		t.Fatalf("foreign link: %v %v", got, err)
	}
	// A list that goes back (or stands still) never ends: an error.
	_, err = list(context.Background(), "x", "tags", pages(names, func(string) string {
		return `</v2/x/tags/list?last=t01>; rel="next"`
	}))
	if err == nil || !strings.Contains(err.Error(), "does not end") {
		t.Fatalf("endless list: %v", err)
	}
	// Not a list.
	_, err = list(context.Background(), "x", "tags", func(url.Values) (*http.Response, error) {
		return &http.Response{StatusCode: 200, Header: http.Header{}, Body: io.NopCloser(strings.NewReader(`{"tags":"nope"}`))}, nil
	})
	if err == nil {
		t.Fatal("a string taken for a list")
	}
}

// Distribution answers 400 to an n over its catalog's maxentries: the
// list is read again in the pages the source chooses.
func TestListWithoutN(t *testing.T) {
	names := []string{"a", "b", "c", "d", "e"}
	paged := pages(names, func(last string) string { return `</v2/_catalog?last=` + last + `&n=3>; rel="next"` })
	got, err := list(context.Background(), "catalog", "tags", func(q url.Values) (*http.Response, error) {
		if q.Has("n") {
			return nil, &upstream.Error{StatusCode: http.StatusBadRequest, Code: "PAGINATION_NUMBER_INVALID"}
		}
		return paged(q)
	})
	if err != nil || strings.Join(got, "") != "abcde" {
		t.Fatalf("%v %v", got, err)
	}
}

// A source that pages names of megabytes is stopped by the bytes the
// list holds, before the page or name count would stop it.
func TestListBytesBound(t *testing.T) {
	defer func(v int) { maxListBytes = v }(maxListBytes)
	maxListBytes = 1 << 20
	big := strings.Repeat("a", 300<<10)
	page := 0
	_, err := list(context.Background(), "x", "tags", func(url.Values) (*http.Response, error) {
		page++
		hdr := http.Header{"Link": {fmt.Sprintf(`</v2/x/tags/list?last=%s%05d>; rel="next"`, big[:10], page)}}
		body := fmt.Sprintf(`{"tags":["%s%05d"]}`, big, page)
		return &http.Response{StatusCode: 200, Header: hdr, Body: io.NopCloser(strings.NewReader(body))}, nil
	})
	if err == nil || !strings.Contains(err.Error(), "1 MiB of names") || page > 5 {
		t.Fatalf("after %d pages of 300 KiB names: %v", page, err)
	}
}
