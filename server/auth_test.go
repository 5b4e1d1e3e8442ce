package server

import (
	"encoding/base64"
	"encoding/json"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/berth-registry/berth/store/storetest"
	"github.com/berth-registry/berth/upstream"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/crypto/bcrypt"
)

func TestMatchGlob(t *testing.T) {
	for _, tc := range []struct {
		glob, repo, image string
		want              bool
	}{
		{"*", "internal", "a/b", true},
		{"internal", "internal", "team-a/app", true},
		{"internal", "internal-2", "x", false},
		{"intern*", "internal", "x", true},
		{"internal/team-a/*", "internal", "team-a/app", true},
		{"internal/team-a/*", "internal", "team-a/sub/app", true},
		{"internal/team-a/*", "internal", "team-ab/app", false},
		{"internal/team-a/*", "internal", "team-b/app", false},
		{"internal/team-a/app", "internal", "team-a/app", true},
		{"internal/*/app", "internal", "x/app", true},
		{"internal/*/app", "internal", "x/y/app", false},
		{"dockerhub", "internal", "dockerhub", false},
	} {
		if got := matchGlob(tc.glob, tc.repo, tc.image); got != tc.want {
			t.Errorf("matchGlob(%q, %q, %q) = %v", tc.glob, tc.repo, tc.image, got)
		}
	}
}

func TestParseScopes(t *testing.T) {
	got, err := parseScopes([]string{"repository:a/b:pull,push", "repository:localhost:5000/x:pull registry:catalog:*"})
	if err != nil || len(got) != 3 || got[0].name != "a/b" || len(got[0].actions) != 2 || got[1].name != "localhost:5000/x" || got[2].typ != "registry" {
		t.Fatalf("%+v %v", got, err)
	}
	for _, bad := range []string{"repository", "repository:a", "repository:a:", "repository::pull", "repository:a:fly"} {
		if _, err := parseScopes([]string{bad}); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func FuzzParseScopes(f *testing.F) {
	for _, s := range []string{"repository:a/b:pull,push", "registry:catalog:*", "repository:h:1/x:pull", ":::", "a:b:c d:e:f"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		scopes, err := parseScopes([]string{s})
		if err != nil {
			return
		}
		for _, sc := range scopes {
			if sc.typ == "" || sc.name == "" || len(sc.actions) == 0 {
				t.Fatalf("%q parsed to %+v", s, sc)
			}
		}
	})
}

func FuzzAuthorization(f *testing.F) {
	a, _ := newAuth(AuthOptions{Users: []User{{Name: "u", PasswordHash: mustHash("pw")}}})
	good := a.signToken(tokenClaims{Audience: "berth", Expires: time.Now().Add(time.Hour).Unix(), Subject: "u"})
	for _, s := range []string{"Basic dTpwdw==", "Bearer " + good, "Bearer a.b", "basic", "Digest x", "Bearer " + strings.Repeat("A", 100)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, h string) {
		r := httptest.NewRequest("GET", "/v2/", nil)
		r.Header.Set("Authorization", h)
		p, err := a.authenticate(r)
		if err != nil && (p.user != nil || p.token != nil) {
			t.Fatalf("%q: error %v with a principal", h, err)
		}
		if err == nil && p.user == nil && p.token == nil && h != "" {
			t.Fatalf("%q: no error and no principal", h)
		}
	})
}

func mustHash(pw string) []byte {
	h, _ := bcrypt.GenerateFromPassword([]byte(pw), bcrypt.MinCost)
	return h
}

type authFixture struct {
	*testBerth
	up *fakeUpstream
}

// newAuthBerth: "hub" is a public proxy, "internal" a private hosted
// repository, "all" a group of both (the default). alice may pull
// everything and push internal/team-a/*; bob may pull hub only.
func newAuthBerth(t *testing.T) *authFixture {
	t.Helper()
	up := newFakeUpstream(t)
	st := storetest.Open(t)
	uc, _ := upstream.New(upstream.Options{URL: up.srv.URL, Attempts: 1})
	o := Options{
		Repositories: []Repository{
			{Name: "hub", Kind: KindProxy, Upstream: uc, UpstreamHost: "registry-1.docker.io", TagTTL: time.Hour, NotFoundTTL: time.Minute, AnonymousPull: true},
			{Name: "internal", Kind: KindHosted},
			{Name: "all", Kind: KindGroup, Members: []string{"internal", "hub"}, PushTo: "internal", AnonymousPull: true},
		},
		DefaultRepository: "all", Store: st, Logger: slog.New(slog.DiscardHandler), Registry: prometheus.NewRegistry(),
		Auth: AuthOptions{Users: []User{
			{Name: "alice", PasswordHash: mustHash("alice-pw"), Pull: []string{"*"}, Push: []string{"internal/team-a/*"}},
			{Name: "bob", PasswordHash: mustHash("bob-pw"), Pull: []string{"hub"}},
		}},
	}
	s, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(s.Handler("all"))
	t.Cleanup(func() { hs.Close(); waitNoDownloads(t, s) })
	return &authFixture{testBerth: &testBerth{t: t, srv: s, http: hs, store: st, reg: o.Registry, host: strings.TrimPrefix(hs.URL, "http://")}, up: up}
}

func basic(user, pw string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pw))
}

func (f *authFixture) token(t *testing.T, authz string, scopes ...string) string {
	t.Helper()
	q := url.Values{"service": {"berth"}, "scope": scopes}
	req, _ := http.NewRequest("GET", f.http.URL+"/token?"+q.Encode(), nil)
	if authz != "" {
		req.Header.Set("Authorization", authz)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var body struct {
		Token       string `json:"token"`
		AccessToken string `json:"access_token"`
		ExpiresIn   int    `json:"expires_in"`
		IssuedAt    string `json:"issued_at"`
	}
	json.Unmarshal(readAll(t, resp), &body)
	if resp.StatusCode != 200 || body.Token == "" || body.AccessToken != body.Token || body.ExpiresIn != 300 || body.IssuedAt == "" {
		t.Fatalf("token: %d %+v", resp.StatusCode, body)
	}
	return body.Token
}

func (f *authFixture) pushAsAlice(t *testing.T, repo string) {
	t.Helper()
	ref, _ := name.ParseReference(f.host+"/"+repo, name.Insecure)
	if err := remote.Write(ref, randomImage(t, 1024, 1), remote.WithAuth(&authn.Basic{Username: "alice", Password: "alice-pw"})); err != nil {
		t.Fatal(err)
	}
}

// TestAuthAttacks tries the ways around access control, each expected to
// fail with the right status.
func TestAuthAttacks(t *testing.T) {
	f := newAuthBerth(t)
	f.pushAsAlice(t, "internal/team-a/app:v1") // the token dance through a real client
	f.up.push("library/nginx", "latest", randomImage(t, 512, 1))
	pullA := f.token(t, basic("alice", "alice-pw"), "repository:internal/team-a/app:pull")
	pushA := f.token(t, basic("alice", "alice-pw"), "repository:internal/team-a/app:pull,push")
	deleteA := f.token(t, basic("alice", "alice-pw"), "repository:internal/team-a/app:pull,push,delete")
	forged := func(mod func(*tokenClaims)) string {
		c := tokenClaims{Subject: "alice", Audience: "berth", IssuedAt: time.Now().Unix(), Expires: time.Now().Add(time.Minute).Unix(),
			Access: []tokenAccess{{Type: "repository", Name: "internal/team-a/app", Actions: []string{"pull", "push"}}}}
		mod(&c)
		return f.srv.auth.signToken(c)
	}
	tamper := func(tok string) string { // rewrite the claims, keep the signature
		p, sig, _ := strings.Cut(tok, ".")
		raw, _ := base64.RawURLEncoding.DecodeString(p)
		raw = []byte(strings.Replace(string(raw), `"pull"`, `"pull","push"`, 1))
		return base64.RawURLEncoding.EncodeToString(raw) + "." + sig
	}
	manifest := "/v2/internal/team-a/app/manifests/v1"
	for _, tc := range []struct {
		name, method, path, authz string
		status                    int
		code                      string
	}{
		{"anonymous pull of a private hosted repository", "GET", manifest, "", 401, codeUnauthorized.name},
		{"wrong password", "GET", manifest, basic("alice", "nope"), 401, codeUnauthorized.name},
		{"unknown user", "GET", manifest, basic("mallory", "x"), 401, codeUnauthorized.name},
		{"user without the right (bob)", "GET", manifest, basic("bob", "bob-pw"), 403, codeDenied.name},
		{"good basic credentials", "GET", manifest, basic("alice", "alice-pw"), 200, ""},
		{"good token", "GET", manifest, "Bearer " + pullA, 200, ""},
		{"tampered token", "GET", manifest, "Bearer " + tamper(pullA), 401, codeUnauthorized.name},
		{"token signed with another key", "GET", manifest, "Bearer " + func() string {
			a, _ := newAuth(AuthOptions{})
			return a.signToken(tokenClaims{Subject: "alice", Audience: "berth", Expires: time.Now().Add(time.Hour).Unix()})
		}(), 401, codeUnauthorized.name},
		{"expired token", "GET", manifest, "Bearer " + forged(func(c *tokenClaims) { c.Expires = time.Now().Add(-time.Second).Unix() }), 401, codeUnauthorized.name},
		{"token for another service", "GET", manifest, "Bearer " + forged(func(c *tokenClaims) { c.Audience = "other" }), 401, codeUnauthorized.name},
		{"token for repo A used on repo B", "GET", "/v2/internal/team-a/other/manifests/v1", "Bearer " + pullA, 401, codeUnauthorized.name},
		{"pull-only token used to push", "PUT", manifest, "Bearer " + pullA, 401, codeUnauthorized.name},
		{"push token outside the user's grants", "PUT", "/v2/internal/team-b/app/manifests/v1", "Bearer " + forged(func(c *tokenClaims) { c.Access[0].Name = "internal/team-b/app" }), 403, codeDenied.name},
		{"token for a deleted user", "GET", manifest, "Bearer " + forged(func(c *tokenClaims) { c.Subject = "eve" }), 401, codeUnauthorized.name},
		{"push token used to delete", "DELETE", "/v2/internal/team-a/app/manifests/nope", "Bearer " + pushA, 401, codeUnauthorized.name},
		{"delete token", "DELETE", "/v2/internal/team-a/app/manifests/nope", "Bearer " + deleteA, 404, codeManifestUnknown.name},
		{"anonymous push to hosted", "POST", "/v2/internal/team-a/app/blobs/uploads/", "", 401, codeUnauthorized.name},
		{"garbage authorization", "GET", "/v2/", "Bearer", 401, codeUnauthorized.name},
		{"path escape in a name", "GET", "/v2/internal/../hub/x/manifests/v1", basic("bob", "bob-pw"), 404, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp := f.do(tc.method, tc.path, nil, "Authorization", tc.authz)
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d", resp.StatusCode, tc.status)
			}
			if tc.code != "" {
				if got := respCode(t, resp); got != tc.code {
					t.Fatalf("code %s, want %s", got, tc.code)
				}
			} else {
				readAll(t, resp)
			}
			if tc.status == 401 && !strings.HasPrefix(resp.Header.Get("Www-Authenticate"), `Bearer realm="`+f.http.URL+`/token",service="berth"`) {
				t.Fatalf("challenge %q", resp.Header.Get("Www-Authenticate"))
			}
		})
	}
	// A token that lacks the scope says so, so the client asks for more.
	resp := f.do("PUT", manifest, nil, "Authorization", "Bearer "+pullA)
	readAll(t, resp)
	if !strings.Contains(resp.Header.Get("Www-Authenticate"), `error="insufficient_scope"`) ||
		!strings.Contains(resp.Header.Get("Www-Authenticate"), `scope="repository:internal/team-a/app:pull,push"`) {
		t.Fatalf("challenge %q", resp.Header.Get("Www-Authenticate"))
	}
}

func TestTokenEndpoint(t *testing.T) {
	f := newAuthBerth(t)
	claims := func(tok string) tokenClaims {
		c, err := f.srv.auth.verifyToken(tok)
		if err != nil {
			t.Fatal(err)
		}
		return *c
	}
	// The token grants the intersection of what was asked and what the user may do.
	c := claims(f.token(t, basic("alice", "alice-pw"), "repository:internal/team-b/app:pull,push", "repository:internal/team-a/x:push"))
	if len(c.Access) != 2 || strings.Join(c.Access[0].Actions, ",") != "pull" || strings.Join(c.Access[1].Actions, ",") != "push" {
		t.Fatalf("alice: %+v", c.Access)
	}
	c = claims(f.token(t, "", "repository:nginx:pull", "repository:internal/x:pull"))
	if c.Subject != "" || len(c.Access) != 1 || c.Access[0].Name != "nginx" {
		t.Fatalf("anonymous: %+v", c)
	}
	for _, tc := range []struct {
		query, authz string
		status       int
	}{
		{"service=berth&scope=repository:a:pull", basic("alice", "wrong"), 401},
		{"service=other&scope=repository:a:pull", "", 400},
		{"service=berth&scope=repository:a:launch", "", 400},
	} {
		req, _ := http.NewRequest("GET", f.http.URL+"/token?"+tc.query, nil)
		if tc.authz != "" {
			req.Header.Set("Authorization", tc.authz)
		}
		resp, _ := http.DefaultClient.Do(req)
		readAll(t, resp)
		if resp.StatusCode != tc.status {
			t.Errorf("%s: %d, want %d", tc.query, resp.StatusCode, tc.status)
		}
	}
	// OAuth2 password grant.
	resp, _ := http.PostForm(f.http.URL+"/token", url.Values{"grant_type": {"password"}, "username": {"alice"}, "password": {"alice-pw"},
		"service": {"berth"}, "scope": {"repository:internal/team-a/app:pull"}})
	if body := readAll(t, resp); resp.StatusCode != 200 || !strings.Contains(string(body), "access_token") {
		t.Fatalf("oauth2: %d %s", resp.StatusCode, body)
	}
}

// TestGroupAnonymousReadsOnlyPublicMembers: anonymous pulls through a group
// see the public proxy but not the private hosted member; alice sees both.
func TestGroupAnonymousReadsOnlyPublicMembers(t *testing.T) {
	f := newAuthBerth(t)
	f.pushAsAlice(t, "internal/team-a/app:v1")
	f.up.push("library/nginx", "latest", randomImage(t, 512, 1))
	// With users configured, /v2/ challenges anonymous clients so that
	// they learn the realm; an anonymous token then covers public pulls.
	if resp := f.get("GET", "/v2/"); resp.StatusCode != 401 {
		t.Fatalf("/v2/ anonymous with users configured: %d", resp.StatusCode)
	}
	anon := f.token(t, "", "repository:library/nginx:pull")
	wantStatus(t, f.do("GET", "/v2/", nil, "Authorization", "Bearer "+anon), 200, "")
	wantStatus(t, f.do("GET", "/v2/library/nginx/manifests/latest", nil, "Authorization", "Bearer "+anon), 200, "")
	wantStatus(t, f.do("GET", "/v2/library/nginx/manifests/latest", nil), 200, "")
	// Signing in takes nothing away: bob, with no grant on the public
	// proxy, pulls from it as anyone may.
	wantStatus(t, f.do("GET", "/v2/library/nginx/manifests/latest", nil, "Authorization", basic("bob", "bob-pw")), 200, "")
	// Anonymous: a miss where private members might hold it is a
	// challenge, so the client logs in and asks again.
	resp := f.do("GET", "/v2/team-a/app/manifests/v1", nil)
	if resp.StatusCode != 401 || !strings.Contains(resp.Header.Get("Www-Authenticate"), `scope="repository:team-a/app:pull"`) {
		t.Fatalf("anonymous miss: %d %q", resp.StatusCode, resp.Header.Get("Www-Authenticate"))
	}
	readAll(t, resp)
	wantStatus(t, f.do("GET", "/v2/team-a/app/manifests/v1", nil, "Authorization", basic("alice", "alice-pw")), 200, "")
	wantStatus(t, f.do("GET", "/v2/team-a/app/manifests/v1", nil, "Authorization", basic("bob", "bob-pw")), 404, codeManifestUnknown.name)
	// The catalog lists only what the principal may read.
	resp = f.do("GET", "/v2/_catalog", nil)
	if body := string(readAll(t, resp)); strings.Contains(body, "team-a") {
		t.Fatalf("anonymous catalog shows private images: %s", body)
	}
	// A blob known from the private repository is not readable through a
	// name that does not hold it, even by digest.
	resp = f.do("GET", "/v2/internal/team-a/app/manifests/v1", nil, "Authorization", basic("alice", "alice-pw"))
	m, err := v1.ParseManifest(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	wantStatus(t, f.do("GET", "/v2/internal/team-b/app/blobs/"+m.Layers[0].Digest.String(), nil, "Authorization", basic("alice", "alice-pw")), 404, codeBlobUnknown.name)
	wantStatus(t, f.do("GET", "/v2/library/nginx/blobs/"+m.Layers[0].Digest.String(), nil, "Authorization", basic("bob", "bob-pw")), 404, codeBlobUnknown.name)
	// Mounting from a repository the client may not read falls back to an upload.
	resp = f.do("POST", "/v2/internal/team-a/copy/blobs/uploads/?mount="+m.Layers[0].Digest.String()+"&from=internal/team-a/app", nil, "Authorization", basic("alice", "alice-pw"))
	wantStatus(t, resp, 201, "")
}

func TestUploadLimiter(t *testing.T) {
	l := &uploadLimiter{n: map[string]int{}, max: 2}
	r := httptest.NewRequest("POST", "/", nil)
	r.RemoteAddr = "10.0.0.1:1234"
	rel1, ok1 := l.acquire(r)
	_, ok2 := l.acquire(r)
	_, ok3 := l.acquire(r)
	other := httptest.NewRequest("POST", "/", nil)
	other.RemoteAddr = "10.0.0.2:1"
	_, ok4 := l.acquire(other)
	if !ok1 || !ok2 || ok3 || !ok4 {
		t.Fatalf("%v %v %v %v", ok1, ok2, ok3, ok4)
	}
	rel1()
	if _, ok := l.acquire(r); !ok {
		t.Fatal("slot not released")
	}
}

func TestRealmBehindProxy(t *testing.T) {
	_, cidr, _ := parseCIDR("127.0.0.0/8")
	s := &Server{auth: &auth{opts: AuthOptions{TrustedProxies: cidr}}}
	r := httptest.NewRequest("GET", "/v2/", nil)
	r.Host = "berth:5000"
	r.RemoteAddr = "127.0.0.1:999"
	r.Header.Set("X-Forwarded-Proto", "https")
	r.Header.Set("X-Forwarded-Host", "registry.example.com")
	if got := s.realm(r); got != "https://registry.example.com/token" {
		t.Fatalf("trusted proxy: %s", got)
	}
	r.RemoteAddr = "192.0.2.7:999" // not a trusted proxy: headers ignored
	if got := s.realm(r); got != "http://berth:5000/token" {
		t.Fatalf("untrusted: %s", got)
	}
	s.auth.opts.ExternalURL = "https://edge.example/"
	if got := s.realm(r); got != "https://edge.example/token" {
		t.Fatalf("external_url: %s", got)
	}
}

func parseCIDR(s string) (any, []*net.IPNet, error) {
	_, n, err := net.ParseCIDR(s)
	return nil, []*net.IPNet{n}, err
}
