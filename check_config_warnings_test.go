package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/bcrypt"
)

// TestConfigWarnings: check-config warns about a bcrypt cost under 10, a
// users file others can read, a ?ns= host an earlier proxy answers, a
// repeated hosts pattern and the routes a bound listener cannot take;
// a clean config draws none.
func TestConfigWarnings(t *testing.T) {
	dir := t.TempDir()
	weak, _ := bcrypt.GenerateFromPassword([]byte("pw"), 5)
	strong, _ := bcrypt.GenerateFromPassword([]byte("pw"), 10)
	htp := filepath.Join(dir, "htpasswd")
	os.WriteFile(htp, []byte("carol:"+string(strong)+"\n"), 0o644)
	cfgText := fmt.Sprintf(`[auth]
htpasswd = %q

[[user]]
name = "alice"
password_hash = %q
pull = ["*"]

[[user]]
name = "carol"
pull = ["*"]

[[repository]]
name = "hub"
kind = "proxy"
url = "https://registry-1.docker.io"

[[repository]]
name = "hub2"
kind = "proxy"
url = "https://mirror.example"
ns_aliases = ["docker.io"]

[[repository]]
name = "any"
kind = "proxy"
hosts = ["*.lab.internal"]

[[repository]]
name = "any2"
kind = "proxy"
hosts = ["*.LAB.internal"]

[[repository]]
name = "local"
kind = "hosted"

[[listener]]
listen = ":6000"
repository = "local"
`, htp, weak)
	cfg, err := loadConfig(strings.NewReader(cfgText))
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.setDefaults(); err != nil {
		t.Fatal(err)
	}
	got := strings.Join(configWarnings(cfg, ""), "\n")
	for _, want := range []string{
		`user "alice" has a bcrypt cost of 5`,
		"the htpasswd file " + htp + " is readable by every user",
		`repository "hub2": ?ns=docker.io never reaches it: repository "hub" answers that host first`,
		`repository "any2": hosts pattern "*.lab.internal" is never used`,
		`listener :6000 reaches only "local"`,
	} {
		if !strings.Contains(got, want) {
			t.Errorf("warnings lack %q:\n%s", want, got)
		}
	}
	if strings.Contains(got, `"carol"`) {
		t.Errorf("a cost-10 user is warned about:\n%s", got)
	}
	clean, _ := loadConfig(strings.NewReader(`[[repository]]
name = "hub"
kind = "proxy"
url = "https://registry-1.docker.io"
`))
	clean.setDefaults()
	if w := configWarnings(clean, ""); len(w) != 0 {
		t.Errorf("a clean config draws warnings: %v", w)
	}
}
