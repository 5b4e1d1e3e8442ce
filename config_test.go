package main

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestConfigErrorsNameTheKey(t *testing.T) {
	base := `[[repository]]
name = "hub"
kind = "proxy"
url = "https://registry-1.docker.io"
`
	hosted := "[[repository]]\nname = \"h\"\nkind = \"hosted\"\n"
	tests := []struct {
		name, toml, want string
	}{
		{"unknown top key", "colour = 1\n" + base, "unknown key(s): colour"},
		{"unknown repo key", base + "tagttl = \"1h\"\n", `repository.tagttl (in repository "hub": did you mean tag_ttl?)`},
		{"misspelt key", "[storage]\nmax_szie = \"1GiB\"\n" + base, "storage.max_szie (did you mean max_size?)"},
		{"bad duration", base + "tag_ttl = \"soon\"\n", `invalid duration "soon"`},
		{"negative duration", base + "not_found_ttl = \"-1s\"\n", "invalid duration"},
		{"bad size", "[storage]\nmax_size = \"lots\"\n" + base, `invalid size "lots"`},
		{"bad size unit", "[storage]\nmax_size = \"10XB\"\n" + base, "invalid size"},
		{"size without a unit", "[storage]\nmax_size = \"100\"\n" + base, `size "100" has no unit`},
		{"integer size", "[storage]\nmax_size = 100\n" + base, "size 100 has no unit"},
		{"water marks", "[storage]\nhigh_water = 0.5\nlow_water = 0.7\n" + base, "low_water < high_water"},
		{"duplicate", base + base, `repository "hub": duplicate name`},
		{"no url", "[[repository]]\nname = \"x\"\nkind = \"proxy\"\n", `repository "x": url is required`},
		{"bad url", "[[repository]]\nname = \"x\"\nkind = \"proxy\"\nurl = \"ftp://x\"\n", `url "ftp://x"`},
		{"url and urls", base + "urls = [\"https://a\"]\n", "url and urls are exclusive"},
		{"bad url in urls", "[[repository]]\nname = \"x\"\nkind = \"proxy\"\nurls = [\"https://a\", \"b\"]\n", `url "b"`},
		{"rate without /s", base + "max_upstream_bandwidth = \"50MB\"\n", `invalid rate "50MB"`},
		{"bad rate", base + "max_upstream_bandwidth = \"fast/s\"\n", `invalid rate "fast/s"`},
		{"negative connections", base + "max_upstream_connections = -1\n", "must not be negative"},
		{"range parallel 0 is the default, 33 too many", base + "range_fetch_parallel = 33\n", "range_fetch_parallel 33"},
		{"tiny range chunk", base + "range_fetch_chunk = \"64KiB\"\n", "range_fetch_chunk 64.0KiB is below 1MiB"},
		{"url with path", "[[repository]]\nname = \"x\"\nkind = \"proxy\"\nurl = \"https://x/v2\"\n", `want http(s)://host[:port]`},
		{"bad name", "[[repository]]\nname = \"Hub/x\"\nkind = \"proxy\"\nurl = \"https://x\"\n", "name must be lowercase"},
		{"no kind", "[[repository]]\nname = \"x\"\n", "kind is required"},
		{"bad kind", "[[repository]]\nname = \"x\"\nkind = \"mirror\"\n", `kind "mirror"`},
		{"no repositories", "listen = \":1\"\n", "no [[repository]]"},
		{"default unknown", "default_repository = \"nope\"\n" + base, `default_repository "nope"`},
		{"tls half", "tls_cert = \"a\"\n" + base, "tls_cert and tls_key go together"},
		{"listener", base + "[[listener]]\nlisten = \":1\"\nrepository = \"nope\"\n", "listener[0]"},
		{"password twice", base + "password = \"a\"\npassword_file = \"/x\"\n", "exclusive"},
		{"not toml", "[[repository\n", "config:"},
		{"hosted with url", "[[repository]]\nname = \"h\"\nkind = \"hosted\"\nurl = \"https://x\"\n", "are for proxies"},
		{"group without members", "[[repository]]\nname = \"g\"\nkind = \"group\"\n", "members is required"},
		{"group unknown member", base + "[[repository]]\nname = \"g\"\nkind = \"group\"\nmembers = [\"hub\", \"nope\"]\n", `member "nope"`},
		{"push_to a proxy", base + "[[repository]]\nname = \"g\"\nkind = \"group\"\nmembers = [\"hub\"]\npush_to = \"hub\"\n", "push_to \"hub\" must be one of its hosted members"},
		{"group cycle", base + "[[repository]]\nname = \"a\"\nkind = \"group\"\nmembers = [\"hub\", \"b\"]\n[[repository]]\nname = \"b\"\nkind = \"group\"\nmembers = [\"a\"]\n", "group cycle: a → b → a"},
		{"group self", "[[repository]]\nname = \"a\"\nkind = \"group\"\nmembers = [\"a\"]\n", "group cycle: a → a"},
		{"anonymous push on a proxy", base + "anonymous_push = true\n", "anonymous_push is for hosted"},
		{"user without hash", base + "[[user]]\nname = \"a\"\npull = [\"*\"]\n", `user "a": password_hash is required`},
		{"user bad hash", base + "[[user]]\nname = \"a\"\npassword_hash = \"plaintext\"\n", "not a bcrypt hash"},
		{"user bad glob", base + "[[user]]\nname = \"a\"\npassword_hash = \"$2a$10$DUbwPxEDrDMqEL7WoOUgre9SbJeGuXtT4Ot/eo7OmaL82JHivnzi2\"\npull = [\"[\"]\n", "bad glob"},
		{"duplicate user", base + "[[user]]\nname = \"a\"\npassword_hash = \"$2a$10$DUbwPxEDrDMqEL7WoOUgre9SbJeGuXtT4Ot/eo7OmaL82JHivnzi2\"\n[[user]]\nname = \"a\"\npassword_hash = \"$2a$10$DUbwPxEDrDMqEL7WoOUgre9SbJeGuXtT4Ot/eo7OmaL82JHivnzi2\"\n", `user "a": duplicate`},
		{"bad external url", "[auth]\nexternal_url = \"registry.example\"\n" + base, "auth.external_url"},
		{"bad trusted proxy", "[auth]\ntrusted_proxies = [\"not-an-ip\"]\n" + base, "auth.trusted_proxies"},
		{"token ttl", "[auth]\ntoken_ttl = \"1s\"\n" + base, "token_ttl"},
		{"listener names its repository", base + "[[listener]]\nlisten = \":1\"\nrepository = \"nope\"\n", `listener[0] (:1): repository "nope" is not configured`},
		{"duplicate listen", "listen = \":5000\"\n" + base + "[[listener]]\nlisten = \":5000\"\nrepository = \"hub\"\n", `listen ":5000" is already used by listen`},
		{"missing tls file", "tls_cert = \"/nonexistent/tls.crt\"\ntls_key = \"/nonexistent/tls.key\"\n" + base, "tls_cert: stat /nonexistent/tls.crt"},
		{"policy without a name", base + "[[policy]]\ndefault = \"deny\"\n", "policy[0]: name is required"},
		{"policy twice", base + "[[policy]]\nname = \"p\"\n[[policy]]\nname = \"p\"\n", `policy "p" is defined twice`},
		{"policy default", base + "[[policy]]\nname = \"p\"\ndefault = \"maybe\"\n", `policy "p": default "maybe": want allow or deny`},
		{"policy bad glob", base + "[[policy]]\nname = \"p\"\ndeny_tags = [\"[\"]\n", `policy "p": pattern "["`},
		{"policy bad digest", base + "[[policy]]\nname = \"p\"\ndeny_digests = [\"sha256:abc\"]\n", `digest "sha256:abc"`},
		{"signature without keys", base + "[[policy]]\nname = \"p\"\nrequire_signature = true\n", `policy "p": require_signature needs a key or a keyless identity`},
		{"signature key missing", base + "[[policy]]\nname = \"p\"\nrequire_signature = true\nkeys = [\"/nonexistent/cosign.pub\"]\n", `policy "p": keys: open /nonexistent/cosign.pub`},
		{"signature key not a key", base + "[[policy]]\nname = \"p\"\nrequire_signature = true\nkeys = [\"config.example.toml\"]\n", `key config.example.toml: no PEM block`},
		{"keyless without root", base + "[[policy]]\nname = \"p\"\n[[policy.keyless]]\nidentity = \"a@b\"\nissuer = \"https://i\"\n", `keyless[0]: trusted_root is required`},
		{"keyless bad root", base + "[[policy]]\nname = \"p\"\n[[policy.keyless]]\ntrusted_root = \"config.example.toml\"\nidentity = \"a@b\"\nissuer = \"https://i\"\n", `keyless[0]: trusted root config.example.toml`},
		{"min_age negative", base + "[[policy]]\nname = \"p\"\nmin_age = \"-1h\"\n", `min_age`},
		{"policy unknown key", base + "[[policy]]\nname = \"p\"\ndeny_tag = [\"x\"]\n", "did you mean deny_tags?"},
		{"repository names no policy", strings.Replace(base, "kind = \"proxy\"", "kind = \"proxy\"\npolicy = \"prdo\"", 1), `repository "hub": policy "prdo": no [[policy]] has that name`},
		{"replicate into a proxy", base + "[[replicate]]\nname = \"r\"\nfrom = \"https://x\"\nto = \"hub\"\n", `to = "hub": no hosted repository "hub"`},
		{"replicate from nowhere", base + hosted + "[[replicate]]\nname = \"r\"\nfrom = \"nexus\"\nto = \"h\"\n", `from = "nexus": want a registry URL`},
		{"replicate from a proxy with credentials", base + hosted + "[[replicate]]\nname = \"r\"\nfrom = \"hub\"\nusername = \"u\"\nto = \"h\"\n", "its credentials and TLS settings are used"},
		{"replicate twice", base + hosted + "[[replicate]]\nname = \"r\"\nfrom = \"hub\"\nto = \"h\"\n[[replicate]]\nname = \"r\"\nfrom = \"hub\"\nto = \"h\"\n", "a second rule of that name"},
		{"replicate bad semver", base + hosted + "[[replicate]]\nname = \"r\"\nfrom = \"hub\"\nto = \"h\"\nsemver = \">=x\"\n", `semver ">=x"`},
		{"replicate too often", base + hosted + "[[replicate]]\nname = \"r\"\nfrom = \"hub\"\nto = \"h\"\nevery = \"1s\"\n", "every must be at least 5s"},
		{"replicate unknown key", base + hosted + "[[replicate]]\nname = \"r\"\nfrom = \"hub\"\nto = \"h\"\ntag = [\"v*\"]\n", "did you mean tags?"},
		{"immutable tags on a proxy", base + "immutable_tags = [\"v*\"]\n", "immutable_tags and retention are for hosted repositories"},
		{"retention that removes nothing", hosted + "[repository.retention]\nkeep = [\"v*\"]\n", "retention removes nothing"},
		{"retention too often", hosted + "[repository.retention]\nkeep_newest = 3\nevery = \"1s\"\n", "retention.every must be at least 1m"},
		{"retention bad glob", hosted + "[repository.retention]\nkeep_newest = 3\nkeep = [\"[\"]\n", `retention.keep: bad glob "["`},
		{"retention unknown key", hosted + "[repository.retention]\nkeep_last = 3\n", "unknown key(s): repository.retention.keep_last"},
		{"webhook bad url", base + "[[webhook]]\nname = \"ci\"\nurl = \"ci.internal\"\n", `webhook[0] "ci": url`},
		{"webhook bad action", base + "[[webhook]]\nname = \"ci\"\nurl = \"https://ci\"\nactions = [\"pull\"]\n", `action "pull": want one of push, delete`},
		{"webhook twice", base + "[[webhook]]\nname = \"ci\"\nurl = \"https://ci\"\n[[webhook]]\nname = \"ci\"\nurl = \"https://ci\"\n", "want a name of its own"},
		{"grant on no repository", base + "[[user]]\nname = \"a\"\npassword_hash = \"$2a$10$DUbwPxEDrDMqEL7WoOUgre9SbJeGuXtT4Ot/eo7OmaL82JHivnzi2\"\npull = [\"intrenal/*\"]\n", `grant "intrenal/*" names repository "intrenal", which is not configured`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := loadConfig(strings.NewReader(tt.toml))
			if err == nil {
				err = c.setDefaults()
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want it to contain %q", err, tt.want)
			}
		})
	}
}

func TestConfigDefaults(t *testing.T) {
	c := defaultConfig()
	if err := c.setDefaults(); err != nil {
		t.Fatal(err)
	}
	r := c.Repositories[0]
	if c.Listen != ":5000" || c.DataDir != "./berth-data" || c.DefaultRepository != "dockerhub" ||
		r.URL != "https://registry-1.docker.io" || time.Duration(r.TagTTL) != time.Hour ||
		time.Duration(r.NotFoundTTL) != time.Minute || !*r.ServeStale || !*r.AnonymousPull ||
		r.RangeFetchMin != 16<<20 || r.RangeFetchChunk != 16<<20 || r.RangeFetchParallel != 4 {
		t.Fatalf("defaults: %+v %+v", c, r)
	}
}

func TestSizesAndDurations(t *testing.T) {
	for in, want := range map[string]Size{"100GiB": 100 << 30, "500GB": 500e9, "1.5TiB": 3 << 39, "42B": 42, "0": 0, "10 MiB": 10 << 20, "1kb": 1000} {
		var s Size
		if err := s.UnmarshalText([]byte(in)); err != nil || s != want {
			t.Errorf("size %q = %d, %v; want %d", in, s, err, want)
		}
	}
	for in, want := range map[string]time.Duration{"90s": 90 * time.Second, "7d": 7 * 24 * time.Hour, "1h30m": 90 * time.Minute} {
		var d Duration
		if err := d.UnmarshalText([]byte(in)); err != nil || time.Duration(d) != want {
			t.Errorf("duration %q = %v, %v", in, d, err)
		}
	}
}

func TestPasswordSources(t *testing.T) {
	t.Setenv("BERTH_TEST_PW", "from-env")
	r := RepositoryConfig{Name: "x", Password: "${BERTH_TEST_PW}"}
	if pw, err := r.password(); err != nil || pw != "from-env" {
		t.Fatalf("env: %q %v", pw, err)
	}
	r.Password = "${BERTH_TEST_UNSET_VAR}"
	if _, err := r.password(); err == nil || !strings.Contains(err.Error(), "BERTH_TEST_UNSET_VAR") {
		t.Fatalf("unset env: %v", err)
	}
	f := filepath.Join(t.TempDir(), "pw")
	os.WriteFile(f, []byte("from-file\n"), 0o600)
	r = RepositoryConfig{Name: "x", PasswordFile: f}
	if pw, err := r.password(); err != nil || pw != "from-file" {
		t.Fatalf("file: %q %v", pw, err)
	}
}

func TestCheckConfigMasksCredentials(t *testing.T) {
	f := filepath.Join(t.TempDir(), "berth.toml")
	os.WriteFile(f, []byte(`[[repository]]
name = "private"
kind = "proxy"
url = "https://registry.example"
username = "robot"
password = "hunter2"
`), 0o600)
	var out, errOut bytes.Buffer
	if err := newApp(&out, &errOut).Run([]string{"berth", "check-config", f}); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(out.String(), "hunter2") || !strings.Contains(out.String(), "robot:****") {
		t.Fatalf("check-config output:\n%s", out.String())
	}
	if !strings.Contains(out.String(), "?ns=registry.example") {
		t.Errorf("no routing table:\n%s", out.String())
	}
}

func TestCheckConfigPrintsPolicies(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "berth.toml")
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.MarshalPKIXPublicKey(k.Public())
	pub := filepath.Join(dir, "cosign.pub")
	os.WriteFile(pub, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o644)
	os.WriteFile(f, []byte(`[[repository]]
name = "hub"
kind = "proxy"
url = "https://registry-1.docker.io"
policy = "prod"

[[policy]]
name = "prod"
default = "deny"
allow = ["library/*"]
deny_tags = ["latest"]
min_age = "72h"
require_signature = true
keys = ["`+pub+`"]
`), 0o600)
	var out, errOut bytes.Buffer
	if err := newApp(&out, &errOut).Run([]string{"berth", "check-config", f}); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"POLICY prod (guards hub;", "deny tags      latest", "allow images   library/*", "otherwise      deny",
		"signed by      " + pub, "held for       72h0m0s"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("check-config output lacks %q:\n%s", want, out.String())
		}
	}
}

func TestHtpasswd(t *testing.T) {
	f := filepath.Join(t.TempDir(), "htpasswd")
	os.WriteFile(f, []byte("# users\nci:$2a$10$DUbwPxEDrDMqEL7WoOUgre9SbJeGuXtT4Ot/eo7OmaL82JHivnzi2\n"), 0o600)
	m, err := loadHtpasswd(f)
	if err != nil || m["ci"] == "" {
		t.Fatalf("%v %v", m, err)
	}
	os.WriteFile(f, []byte("old:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n"), 0o600)
	if _, err := loadHtpasswd(f); err == nil || !strings.Contains(err.Error(), "only bcrypt") {
		t.Fatalf("non-bcrypt entry accepted: %v", err)
	}
}

func TestTokenKeyFile(t *testing.T) {
	f := filepath.Join(t.TempDir(), "sub", "token.key")
	k1, err := tokenKey(f)
	if err != nil || len(k1) != 32 {
		t.Fatal(err)
	}
	if st, _ := os.Stat(f); st.Mode().Perm() != 0o600 {
		t.Fatalf("token key mode %v", st.Mode())
	}
	k2, _ := tokenKey(f)
	if string(k1) != string(k2) {
		t.Fatal("key not kept across starts")
	}
}

// TestUpstreamCapsAndURLs: the WAN keys parse to what the upstream
// client gets.
func TestUpstreamCapsAndURLs(t *testing.T) {
	c, err := loadConfig(strings.NewReader(`[[repository]]
name = "hub"
kind = "proxy"
urls = ["https://mirror.gcr.io", "https://registry-1.docker.io"]
offline_period = "2m"
max_upstream_bandwidth = "50MB/s"
max_upstream_connections = 8
upstream_idle_timeout = "90s"
`))
	if err == nil {
		err = c.setDefaults()
	}
	if err != nil {
		t.Fatal(err)
	}
	r := c.Repositories[0]
	if got := r.upstreamURLs(); len(got) != 2 || got[1] != "https://registry-1.docker.io" {
		t.Errorf("urls %v", got)
	}
	if r.MaxUpstreamBandwidth != 50_000_000 || r.MaxUpstreamConnections != 8 || time.Duration(r.OfflinePeriod) != 2*time.Minute || time.Duration(r.UpstreamIdleTimeout) != 90*time.Second {
		t.Errorf("parsed %+v", r)
	}
}

func TestCheckConfigPrintsReplication(t *testing.T) {
	f := filepath.Join(t.TempDir(), "berth.toml")
	os.WriteFile(f, []byte(`[[repository]]
name = "internal"
kind = "hosted"

[[replicate]]
name = "from-nexus"
from = "https://nexus.internal:8082"
username = "berth"
password = "hunter2"
to = "internal"
repositories = ["team/*"]
every = "10m"
delete = true
`), 0o600)
	var out, errOut bytes.Buffer
	if err := newApp(&out, &errOut).Run([]string{"berth", "check-config", f}); err != nil {
		t.Fatal(err)
	}
	want := "from-nexus: team/* of https://nexus.internal:8082 as berth → internal, at start and every 10m0s; deletions mirrored"
	if !strings.Contains(out.String(), want) || strings.Contains(out.String(), "hunter2") {
		t.Errorf("check-config output lacks %q (or shows the password):\n%s", want, out.String())
	}
	os.WriteFile(f, []byte("[[repository]]\nname = \"internal\"\nkind = \"hosted\"\n[[replicate]]\nname = \"r\"\nfrom = \"https://u:hunter2@nexus\"\nto = \"internal\"\n"), 0o600)
	err := newApp(&out, &errOut).Run([]string{"berth", "check-config", f})
	if err == nil || strings.Contains(err.Error(), "hunter2") || !strings.Contains(err.Error(), "put credentials in username and password") {
		t.Errorf("a URL with credentials: %v", err)
	}
}

// berth clients reads the registries from the config: Docker Hub by its
// client name, aliases, an allowlist (_default), the mirror at the root.
func TestClientRegistries(t *testing.T) {
	c, err := loadConfig(strings.NewReader(`default_repository = "all"
[[repository]]
name = "hub"
kind = "proxy"
url = "https://registry-1.docker.io"
[[repository]]
name = "ghcr"
kind = "proxy"
urls = ["https://ghcr-mirror.internal", "https://ghcr.io"]
ns_aliases = ["ghcr.example"]
[[repository]]
name = "any"
kind = "proxy"
hosts = ["*.gcr.io"]
[[repository]]
name = "all"
kind = "group"
members = ["hub", "ghcr"]
`))
	if err == nil {
		err = c.setDefaults()
	}
	if err != nil {
		t.Fatal(err)
	}
	o := clientRegistries(c)
	var got []string
	for _, r := range o.Registries {
		got = append(got, r.Host+"="+r.Upstream+"@"+r.Repository)
	}
	if want := "docker.io=https://registry-1.docker.io@hub ghcr.io=https://ghcr.io@ghcr ghcr.example=https://ghcr.example@ghcr"; strings.Join(got, " ") != want || !o.Default || !o.DockerMirror {
		t.Errorf("registries %v (default %v, docker mirror %v), want %s, both true", got, o.Default, o.DockerMirror, want)
	}
	if _, err := clientOptions(c, ""); err != nil {
		t.Errorf("no URL: %v (this host's name and the listen port)", err)
	}
}
