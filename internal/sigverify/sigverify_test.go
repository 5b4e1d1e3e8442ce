package sigverify

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/sigstore/sigstore-go/pkg/root"
	"github.com/sigstore/sigstore-go/pkg/sign"
	"github.com/sigstore/sigstore-go/pkg/testing/ca"
	"github.com/sigstore/sigstore-go/pkg/tlog"
	"github.com/sigstore/sigstore/pkg/cryptoutils"
	"github.com/sigstore/sigstore/pkg/signature"
	"google.golang.org/protobuf/encoding/protojson"
)

var (
	digestA = "sha256:" + strings.Repeat("a", 64)
	digestB = "sha256:" + strings.Repeat("b", 64)
)

// payload is cosign's simple-signing payload for digest.
func payload(digest string) []byte {
	return []byte(fmt.Sprintf(`{"critical":{"identity":{"docker-reference":"127.0.0.1:5000/app"},"image":{"docker-manifest-digest":%q},"type":"cosign container image signature"},"optional":null}`, digest))
}

type testKey struct {
	name string
	priv crypto.Signer
}

func keys(t *testing.T) []testKey {
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	_, ed, _ := ed25519.GenerateKey(rand.Reader)
	rs, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	return []testKey{{"ecdsa", ec}, {"ed25519", ed}, {"rsa", rs}}
}

func (k testKey) pem(t *testing.T) []byte {
	b, err := cryptoutils.MarshalPublicKeyToPEM(k.priv.Public())
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// sign signs p as cosign does with an imported key.
func (k testKey) sign(t *testing.T, p []byte) Signature {
	s, err := signature.LoadSigner(k.priv, crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	sig, err := s.SignMessage(strings.NewReader(string(p)))
	if err != nil {
		t.Fatal(err)
	}
	return Signature{Payload: p, Annotations: map[string]string{AnnotationSignature: base64.StdEncoding.EncodeToString(sig)}}
}

func TestKeys(t *testing.T) {
	ks := keys(t)
	for i, k := range ks {
		t.Run(k.name, func(t *testing.T) {
			v, err := NewKey(k.name+".pub", k.pem(t))
			if err != nil {
				t.Fatal(err)
			}
			good := k.sign(t, payload(digestA))
			if err := v.Verify(good, digestA); err != nil {
				t.Fatalf("a valid signature: %v", err)
			}
			if err := v.Verify(good, digestB); err == nil || !strings.Contains(err.Error(), "not of "+digestB) {
				t.Fatalf("a signature of another digest: %v", err)
			}
			other := ks[(i+1)%len(ks)].sign(t, payload(digestA))
			if err := v.Verify(other, digestA); err == nil {
				t.Fatal("a signature by another key passed")
			}
			tampered := good
			tampered.Payload = payload(digestB)
			if err := v.Verify(tampered, digestB); err == nil {
				t.Fatal("a payload changed after signing passed")
			}
		})
	}
}

func TestBadInput(t *testing.T) {
	k := keys(t)[0]
	v, err := NewKey("k.pub", k.pem(t))
	if err != nil {
		t.Fatal(err)
	}
	good := k.sign(t, payload(digestA))
	for name, sig := range map[string]Signature{
		"no signature":       {Payload: good.Payload},
		"signature not b64":  {Payload: good.Payload, Annotations: map[string]string{AnnotationSignature: "%%%"}},
		"empty signature":    {Payload: good.Payload, Annotations: map[string]string{AnnotationSignature: base64.StdEncoding.EncodeToString([]byte("x"))}},
		"oversized payload":  {Payload: make([]byte, MaxPayload+1), Annotations: good.Annotations},
		"payload not json":   k.sign(t, []byte("not json")),
		"payload other type": k.sign(t, []byte(`{"critical":{"image":{"docker-manifest-digest":"`+digestA+`"},"type":"something else"}}`)),
		"bundle garbage":     {Bundle: []byte("{")},
		"bundle empty":       {Bundle: []byte(`{}`)},
		"oversized bundle":   {Bundle: make([]byte, MaxBundle+1)},
	} {
		if err := v.Verify(sig, digestA); err == nil {
			t.Errorf("%s: passed", name)
		}
	}
	if err := v.Verify(good, "sha256:short"); err == nil {
		t.Error("a malformed digest passed")
	}
	for name, pem := range map[string][]byte{
		"empty":     nil,
		"not pem":   []byte("hello"),
		"bad block": []byte("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"),
		"huge":      make([]byte, 65<<10),
	} {
		if _, err := NewKey(name, pem); err == nil {
			t.Errorf("key %s: accepted", name)
		}
	}
}

// keyless signs p with the virtual Sigstore as cosign's tag scheme
// stores it: the certificate and the log's promise in annotations.
func keyless(t *testing.T, vs *ca.VirtualSigstore, identity, issuer string, p []byte) Signature {
	e, err := vs.Sign(identity, issuer, p)
	if err != nil {
		t.Fatal(err)
	}
	vc, _ := e.VerificationContent()
	sc, _ := e.SignatureContent()
	certPEM, err := cryptoutils.MarshalCertificateToPEM(vc.Certificate())
	if err != nil {
		t.Fatal(err)
	}
	entries, _ := e.TlogEntries()
	if len(entries) != 1 {
		t.Fatalf("%d log entries", len(entries))
	}
	tle := entries[0].TransparencyLogEntry()
	var rb rekorBundle
	rb.Payload.Body = base64.StdEncoding.EncodeToString(tle.CanonicalizedBody)
	rb.Payload.IntegratedTime, rb.Payload.LogIndex = tle.IntegratedTime, tle.LogIndex
	rb.Payload.LogID = hex.EncodeToString(tle.LogId.KeyId)
	// The log's promise, as the virtual log signs it for this entry.
	if rb.SignedEntryTimestamp, err = vs.RekorSignPayload(tlog.RekorPayload{Body: rb.Payload.Body, IntegratedTime: rb.Payload.IntegratedTime, LogIndex: rb.Payload.LogIndex, LogID: rb.Payload.LogID}); err != nil {
		t.Fatal(err)
	}
	bundleJSON, _ := json.Marshal(rb)
	return Signature{Payload: p, Annotations: map[string]string{
		AnnotationSignature:   base64.StdEncoding.EncodeToString(sc.Signature()),
		AnnotationCertificate: string(certPEM),
		AnnotationRekorBundle: string(bundleJSON),
	}}
}

func TestKeyless(t *testing.T) {
	vs, err := ca.NewVirtualSigstore()
	if err != nil {
		t.Fatal(err)
	}
	const who, issuer = "release@acme.example", "https://issuer.acme.example"
	v, err := newKeyless("acme", vs, Identity{Subject: who, Issuer: issuer})
	if err != nil {
		t.Fatal(err)
	}
	good := keyless(t, vs, who, issuer, payload(digestA))
	if err := v.Verify(good, digestA); err != nil {
		t.Fatalf("a valid keyless signature: %v", err)
	}
	if err := v.Verify(good, digestB); err == nil {
		t.Fatal("a keyless signature of another digest passed")
	}
	if err := v.Verify(keyless(t, vs, "mallory@acme.example", issuer, payload(digestA)), digestA); err == nil {
		t.Fatal("another identity passed")
	}
	if err := v.Verify(keyless(t, vs, who, "https://other.example", payload(digestA)), digestA); err == nil {
		t.Fatal("another issuer passed")
	}
	noLog := good
	noLog.Annotations = map[string]string{AnnotationSignature: good.Annotations[AnnotationSignature], AnnotationCertificate: good.Annotations[AnnotationCertificate]}
	if err := v.Verify(noLog, digestA); err == nil {
		t.Fatal("a certificate without a log entry (no time it was valid at) passed")
	}
	other, _ := ca.NewVirtualSigstore()
	if err := v.Verify(keyless(t, other, who, issuer, payload(digestA)), digestA); err == nil {
		t.Fatal("a signature under another root passed")
	}
	broken := good
	broken.Annotations = map[string]string{}
	for k, val := range good.Annotations {
		broken.Annotations[k] = val
	}
	broken.Annotations[AnnotationRekorBundle] = `{"Payload":{"body":"%%"}}`
	if err := v.Verify(broken, digestA); err == nil {
		t.Fatal("a broken log entry passed")
	}
	if _, err := newKeyless("x", vs, Identity{Subject: who}); err == nil {
		t.Fatal("keyless without an issuer accepted")
	}
	if _, err := NewKeyless("x", []byte("{}"), Identity{Subject: who, Issuer: issuer}); err == nil {
		t.Fatal("an empty trusted root accepted")
	}
}

// bundleOf signs a statement about digest as cosign's new bundle format
// does, with kp, and returns the bundle's JSON.
func bundleOf(t *testing.T, kp sign.Keypair, predicateType, digest string) []byte {
	_, hexPart, _ := strings.Cut(digest, ":")
	stmt := fmt.Sprintf(`{"_type":"https://in-toto.io/Statement/v1","subject":[{"digest":{"sha256":%q}}],"predicateType":%q}`, hexPart, predicateType)
	b, err := sign.Bundle(&sign.DSSEData{Data: []byte(stmt), PayloadType: "application/vnd.in-toto+json"}, kp, sign.BundleOptions{})
	if err != nil {
		t.Fatal(err)
	}
	out, err := protojson.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestBundles(t *testing.T) {
	kp, err := sign.NewEphemeralKeypair(nil)
	if err != nil {
		t.Fatal(err)
	}
	pemKey, err := kp.GetPublicKeyPem()
	if err != nil {
		t.Fatal(err)
	}
	v, err := NewKey("bundle.pub", []byte(pemKey))
	if err != nil {
		t.Fatal(err)
	}
	if err := v.Verify(Signature{Bundle: bundleOf(t, kp, PredicateSign, digestA)}, digestA); err != nil {
		t.Fatalf("a bundle signing the image: %v", err)
	}
	if err := v.Verify(Signature{Bundle: bundleOf(t, kp, PredicateSign, digestB)}, digestA); err == nil {
		t.Fatal("a bundle about another digest passed")
	}
	if err := v.Verify(Signature{Bundle: bundleOf(t, kp, "https://slsa.dev/provenance/v1", digestA)}, digestA); err == nil || !strings.Contains(err.Error(), "attestation") {
		t.Fatalf("an attestation counted as a signature: %v", err)
	}
	other, _ := sign.NewEphemeralKeypair(nil)
	if err := v.Verify(Signature{Bundle: bundleOf(t, other, PredicateSign, digestA)}, digestA); err == nil {
		t.Fatal("a bundle by another key passed")
	}
}

// TestKeylessFromTrustedRootFile: the path an operator takes, a
// trusted_root.json file (here the virtual Sigstore's, written as
// Sigstore's JSON format), then a keyless signature under it.
func TestKeylessFromTrustedRootFile(t *testing.T) {
	vs, err := ca.NewVirtualSigstore()
	if err != nil {
		t.Fatal(err)
	}
	// The virtual log's ID is its hex string; a trusted root file holds
	// the raw bytes (as Sigstore's does).
	logs := vs.RekorLogs()
	for _, l := range logs {
		raw, err := hex.DecodeString(string(l.ID))
		if err != nil {
			t.Fatal(err)
		}
		l.ID = raw
	}
	tr, err := root.NewTrustedRoot(root.TrustedRootMediaType01, vs.FulcioCertificateAuthorities(), vs.CTLogs(), vs.TimestampingAuthorities(), logs)
	if err != nil {
		t.Fatal(err)
	}
	rootJSON, err := tr.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	const who, issuer = "release@acme.example", "https://issuer.acme.example"
	v, err := NewKeyless("trusted_root.json", rootJSON, Identity{SubjectRegexp: `^release@acme\.example$`, Issuer: issuer})
	if err != nil {
		t.Fatal(err)
	}
	if err := v.Verify(keyless(t, vs, who, issuer, payload(digestA)), digestA); err != nil {
		t.Fatalf("a keyless signature under the file's root: %v", err)
	}
	if err := v.Verify(keyless(t, vs, "release@acme.example.evil", issuer, payload(digestA)), digestA); err == nil {
		t.Fatal("an identity the regexp does not match passed")
	}
	w, _ := NewKeyless("trusted_root.json", rootJSON, Identity{Subject: who, Issuer: issuer})
	if v.ID() == w.ID() {
		t.Fatal("two identities, one ID: a policy's fingerprint would not change with its identity")
	}
}
