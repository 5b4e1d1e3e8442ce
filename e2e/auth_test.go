//go:build e2e

package e2e

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
)

type testCA struct {
	cert    *x509.Certificate
	key     *ecdsa.PrivateKey
	pemFile string
}

func newCA(t *testing.T, dir string) *testCA {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "berth e2e CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	ca := &testCA{cert: cert, key: key, pemFile: filepath.Join(dir, "ca.pem")}
	os.WriteFile(ca.pemFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
	return ca
}

// issue writes a server certificate for 127.0.0.1 with the given serial.
func (ca *testCA) issue(t *testing.T, certFile, keyFile string, serial int64) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		KeyUsage: x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := x509.MarshalECPrivateKey(key)
	os.WriteFile(certFile+".new", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
	os.WriteFile(keyFile+".new", pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600)
	os.Rename(keyFile+".new", keyFile)
	os.Rename(certFile+".new", certFile)
}

// TestAuthTLS: a private hosted repository and a public proxy behind one
// TLS endpoint whose CA the test made and hands to every client.
func TestAuthTLS(t *testing.T) {
	up := startRegistry(t)
	public := up.push(t, "library/public:v1", testImage(t, "amd64", 1, 256<<10))
	dir := t.TempDir()
	ca := newCA(t, dir)
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	ca.issue(t, certFile, keyFile, 100)
	hash := func(pw string) string {
		h, _ := bcrypt.GenerateFromPassword([]byte(pw), bcrypt.DefaultCost)
		return string(h)
	}
	cfg := fmt.Sprintf(`default_repository = "all"
tls_cert = %q
tls_key = %q

[[repository]]
name = "hub"
kind = "proxy"
url = "http://%s"
library_prefix = true

[[repository]]
name = "secure"
kind = "hosted"

[[repository]]
name = "all"
kind = "group"
members = ["secure", "hub"]
push_to = "secure"

[[listener]]
listen = "127.0.0.1:0"
repository = "secure"

[[user]]
name = "pusher"
password_hash = %q
push = ["secure", "all"]

[[user]]
name = "reader"
password_hash = %q
pull = ["secure/team/*"]
`, certFile, keyFile, up.proxy, hash("push-pw"), hash("read-pw"))
	b := startBerthTLS(t, cfg, ca.pemFile)
	home := t.TempDir()
	env := []string{"HOME=" + home, "SSL_CERT_FILE=" + ca.pemFile}
	crane := func(args ...string) (string, error) {
		out, errOut, err := runIn("", 2*time.Minute, env, tool("crane"), args...)
		return strings.TrimSpace(out), fmtErr(err, errOut)
	}

	// Anonymous: the public proxy image through the group; nothing private.
	if got, err := crane("digest", b.addr+"/public:v1"); err != nil || got != public.String() {
		t.Fatalf("anonymous pull of a public image through the group: %s %v", got, err)
	}
	if _, err := crane("copy", b.addr+"/public:v1", b.addr+"/secure/team/app:v1"); err == nil {
		t.Fatal("anonymous push to the private hosted repository succeeded")
	}
	// Wrong password (crane stores credentials; using them fails).
	if _, err := crane("auth", "login", b.addr, "-u", "pusher", "-p", "wrong"); err != nil {
		t.Fatal(err)
	}
	if _, err := crane("copy", b.addr+"/public:v1", b.addr+"/secure/team/app:v1"); err == nil {
		t.Fatal("push with a wrong password succeeded")
	}
	// crane with credentials pushes; the reader reads; anonymous cannot.
	if _, err := crane("auth", "login", b.addr, "-u", "pusher", "-p", "push-pw"); err != nil {
		t.Fatal(err)
	}
	if _, err := crane("copy", b.addr+"/public:v1", b.addr+"/secure/team/app:v1"); err != nil {
		t.Fatalf("crane push with credentials: %v", err)
	}
	os.RemoveAll(filepath.Join(home, ".docker"))
	if _, err := crane("digest", b.addr+"/secure/team/app:v1"); err == nil {
		t.Fatal("anonymous read of the private hosted repository")
	}
	// regctl and skopeo with the reader's credentials.
	run(t, time.Minute, env, tool("regctl"), "registry", "login", b.addr, "-u", "reader", "-p", "read-pw")
	if got := strings.TrimSpace(run(t, time.Minute, env, tool("regctl"), "image", "digest", b.addr+"/secure/team/app:v1")); got != public.String() {
		t.Fatalf("regctl as reader: %s", got)
	}
	certDir := filepath.Join(dir, "skopeo-certs")
	os.MkdirAll(certDir, 0o755)
	caPEM, _ := os.ReadFile(ca.pemFile)
	os.WriteFile(filepath.Join(certDir, "ca.crt"), caPEM, 0o644)
	out := run(t, time.Minute, env, "skopeo", "inspect", "--cert-dir", certDir, "--creds", "reader:read-pw", "docker://"+b.addr+"/secure/team/app:v1")
	if !strings.Contains(out, public.String()) {
		t.Fatalf("skopeo as reader: %s", out)
	}
	if _, _, err := runIn("", time.Minute, env, "skopeo", "inspect", "--cert-dir", certDir, "--creds", "reader:read-pw", "docker://"+b.addr+"/secure/other/app:v1"); err == nil {
		t.Fatal("reader read outside its grant")
	}

	// Docker: login, push to the protected repository, pull back.
	d := startDockerdCA(t, b.addr, caPEM)
	d.docker(t, "pull", b.addr+"/public:v1") // anonymous, through the group
	d.docker(t, "tag", b.addr+"/public:v1", b.addr+"/secure/team/docker:v1")
	d.docker(t, "login", "-u", "pusher", "-p", "push-pw", b.addr)
	pushOut := d.docker(t, "push", b.addr+"/secure/team/docker:v1")
	d.docker(t, "logout", b.addr)
	d.docker(t, "rmi", b.addr+"/secure/team/docker:v1")
	if _, err := runErr(time.Minute, d.env, "docker", "pull", b.addr+"/secure/team/docker:v1"); err == nil {
		t.Fatal("anonymous docker pull of the private repository succeeded")
	}
	d.docker(t, "login", "-u", "reader", "-p", "read-pw", b.addr)
	d.docker(t, "pull", b.addr+"/secure/team/docker:v1")
	if !strings.Contains(pushOut, "digest: ") {
		t.Fatalf("docker push: %s", pushOut)
	}

	// HTTP/2 over TLS, and a certificate reload on SIGHUP that keeps an
	// open connection working.
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: true}
	client := &http.Client{Transport: tr}
	resp, err := client.Get("https://" + b.addr + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.ProtoMajor != 2 || resp.TLS.PeerCertificates[0].SerialNumber.Int64() != 100 {
		t.Fatalf("proto %s serial %v", resp.Proto, resp.TLS.PeerCertificates[0].SerialNumber)
	}
	ca.issue(t, certFile, keyFile, 200)
	b.proc.cmd.Process.Signal(syscall.SIGHUP)
	deadline := time.Now().Add(10 * time.Second)
	for {
		fresh := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
		resp, err := fresh.Get("https://" + b.addr + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.TLS.PeerCertificates[0].SerialNumber.Int64() == 200 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("certificate not reloaded on SIGHUP")
		}
		time.Sleep(100 * time.Millisecond)
	}
	resp, err = client.Get("https://" + b.addr + "/healthz") // the old HTTP/2 connection
	if err != nil || resp.TLS.PeerCertificates[0].SerialNumber.Int64() != 100 {
		t.Fatalf("open connection dropped by the reload: %v", err)
	}
	resp.Body.Close()

	// The conformance suite with credentials, over TLS, against the
	// protected hosted repository's listener.
	runConformance(t, "auth-tls", b.listeners[0], "OCI_TLS=enabled", "SSL_CERT_FILE="+ca.pemFile,
		"OCI_USERNAME=pusher", "OCI_PASSWORD=push-pw", "OCI_API_BLOBS_UPLOAD_CANCEL=true")
}

func fmtErr(err error, stderr string) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%w: %s", err, tail(stderr, 500))
}

// startBerthTLS is startBerth for a TLS listener.
func startBerthTLS(t *testing.T, config, caFile string) *berth {
	t.Helper()
	b := launchBerth(t, config, "", "", nil)
	caPEM, _ := os.ReadFile(caFile)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	deadline := time.Now().Add(20 * time.Second)
	for {
		if resp, err := client.Get("https://" + b.addr + "/healthz"); err == nil {
			resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("berth (TLS) did not start")
		}
		time.Sleep(100 * time.Millisecond)
	}
	b.tlsClient = client
	return b
}

// startDockerdCA starts a private dockerd that trusts caPEM for host
// (Docker reads registry CAs from /etc/docker/certs.d/<host>/ca.crt; the
// entry is removed at cleanup).
func startDockerdCA(t *testing.T, host string, caPEM []byte) *dockerd {
	t.Helper()
	certs := filepath.Join("/etc/docker/certs.d", host)
	if err := os.MkdirAll(certs, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(certs) })
	os.WriteFile(filepath.Join(certs, "ca.crt"), caPEM, 0o644)
	return startDockerd(t, "")
}
