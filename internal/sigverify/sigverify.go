// Package sigverify checks cosign signatures of container images offline,
// with the Sigstore project's own verifier (sigstore-go): berth never
// implements the cryptography itself.
//
// A Verifier is one trust anchor of a policy: a public key (ECDSA,
// Ed25519 or RSA, PEM), or a certificate identity and issuer checked
// against a trusted root file the operator provides (keyless). Nothing
// here reaches the network: the box may reach registries, not a
// transparency log.
//
// A Signature is what a registry holds for an image, in one of cosign's
// two layouts:
//   - the tag scheme: a manifest tagged "sha256-<hex>.sig" whose layers
//     are simple-signing payloads, each with its signature (and, keyless,
//     the certificate and the transparency log's promise) in annotations;
//   - a Sigstore bundle stored as an OCI referrer of the image.
//
// Either way the signed statement must name the image's manifest digest:
// a valid signature of another image is no signature of this one.
package sigverify

import (
	"bytes"
	"crypto"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
	"time"

	protobundle "github.com/sigstore/protobuf-specs/gen/pb-go/bundle/v1"
	protocommon "github.com/sigstore/protobuf-specs/gen/pb-go/common/v1"
	protorekor "github.com/sigstore/protobuf-specs/gen/pb-go/rekor/v1"
	"github.com/sigstore/sigstore-go/pkg/bundle"
	"github.com/sigstore/sigstore-go/pkg/root"
	"github.com/sigstore/sigstore-go/pkg/verify"
	"github.com/sigstore/sigstore/pkg/cryptoutils"
	"github.com/sigstore/sigstore/pkg/signature"
)

// Bounds on what a registry can make the verifier read.
const (
	MaxPayload = 64 << 10  // a simple-signing payload
	MaxBundle  = 256 << 10 // a Sigstore bundle
)

// Annotations cosign writes on a signature layer of the tag scheme.
const (
	AnnotationSignature   = "dev.cosignproject.cosign/signature"
	AnnotationCertificate = "dev.sigstore.cosign/certificate"
	AnnotationChain       = "dev.sigstore.cosign/chain"
	AnnotationRekorBundle = "dev.sigstore.cosign/bundle"
)

// Media types of cosign's signatures.
const (
	MediaTypeSimpleSigning = "application/vnd.dev.cosign.simplesigning.v1+json"
	// BundleArtifactPrefix starts the artifactType of a Sigstore bundle
	// referrer ("application/vnd.dev.sigstore.bundle.v0.3+json").
	BundleArtifactPrefix = "application/vnd.dev.sigstore.bundle"
)

// PredicateSign is the statement type of cosign's signature in a bundle.
const PredicateSign = "https://sigstore.dev/cosign/sign/v1"

// keyHint names the one key of a key verifier's trusted material.
const keyHint = "berth-policy-key"

// Verifier checks signatures against one trust anchor.
type Verifier struct {
	name     string // what the operator configured, for messages
	id       string // what it trusts: changes when the key, root or identity does
	keyed    bool
	tm       root.TrustedMaterial
	v        *verify.Verifier
	identity verify.PolicyOption
}

// Identity is the signer a keyless verifier accepts: the certificate's
// subject (an e-mail or URI) and the OIDC issuer, each exact or a regular
// expression.
type Identity struct {
	Subject, SubjectRegexp, Issuer, IssuerRegexp string
}

// NewKey returns a verifier that accepts signatures by the public key in
// pemBytes (ECDSA, Ed25519 or RSA, PKIX PEM, as cosign writes it).
func NewKey(name string, pemBytes []byte) (*Verifier, error) {
	if len(pemBytes) > 64<<10 {
		return nil, fmt.Errorf("key %s: larger than 64 KiB", name)
	}
	if b, _ := pem.Decode(pemBytes); b == nil {
		return nil, fmt.Errorf("key %s: no PEM block", name)
	}
	pub, err := cryptoutils.UnmarshalPEMToPublicKey(pemBytes)
	if err != nil {
		return nil, fmt.Errorf("key %s: %v", name, err)
	}
	sv, err := signature.LoadVerifier(pub, crypto.SHA256)
	if err != nil {
		return nil, fmt.Errorf("key %s: %v", name, err)
	}
	// The key a bundle names is a hint, not trusted: whatever it says,
	// the signature must verify with this key.
	key := root.NewExpiringKey(sv, time.Time{}, time.Time{})
	tm := root.NewTrustedPublicKeyMaterial(func(string) (root.TimeConstrainedVerifier, error) { return key, nil })
	v, err := verify.NewVerifier(tm, verify.WithNoObserverTimestamps())
	if err != nil {
		return nil, fmt.Errorf("key %s: %v", name, err)
	}
	sum := sha256.Sum256(pemBytes)
	return &Verifier{name: name, id: "key:" + hex.EncodeToString(sum[:]), keyed: true, tm: tm, v: v, identity: verify.WithKey()}, nil
}

// NewKeyless returns a verifier that accepts signatures by certificates
// the trusted root's certificate authorities issued to id, logged in its
// transparency log (whose entry is the observer timestamp a short-lived
// certificate is checked at).
func NewKeyless(name string, trustedRootJSON []byte, id Identity) (*Verifier, error) {
	tr, err := root.NewTrustedRootFromJSON(trustedRootJSON)
	if err != nil {
		return nil, fmt.Errorf("trusted root %s: %v", name, err)
	}
	v, err := newKeyless(name, tr, id)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(trustedRootJSON)
	idJSON, _ := json.Marshal(id)
	v.id = "keyless:" + hex.EncodeToString(sum[:]) + ":" + string(idJSON)
	return v, nil
}

func newKeyless(name string, tm root.TrustedMaterial, id Identity) (*Verifier, error) {
	if id.Subject == "" && id.SubjectRegexp == "" || id.Issuer == "" && id.IssuerRegexp == "" {
		return nil, fmt.Errorf("keyless %s: both an identity and an issuer are required", name)
	}
	ci, err := verify.NewShortCertificateIdentity(id.Issuer, id.IssuerRegexp, id.Subject, id.SubjectRegexp)
	if err != nil {
		return nil, fmt.Errorf("keyless %s: %v", name, err)
	}
	v, err := verify.NewVerifier(tm, verify.WithTransparencyLog(1), verify.WithObserverTimestamps(1))
	if err != nil {
		return nil, fmt.Errorf("keyless %s: %v", name, err)
	}
	return &Verifier{name: name, tm: tm, v: v, identity: verify.WithCertificateIdentity(ci)}, nil
}

// String names the verifier as the operator configured it.
func (v *Verifier) String() string { return v.name }

// ID identifies what the verifier trusts: another key, root or identity
// is another ID (a policy's fingerprint includes it).
func (v *Verifier) ID() string { return v.id }

// Signature is one signature a registry holds for an image: a payload
// with its layer's annotations (the tag scheme), or a bundle.
type Signature struct {
	Payload     []byte
	Annotations map[string]string
	Bundle      []byte
}

// Verify checks that sig is a valid signature by v of the manifest with
// digest manifestDigest ("sha256:<hex>").
func (v *Verifier) Verify(sig Signature, manifestDigest string) error {
	alg, hexPart, _ := strings.Cut(manifestDigest, ":")
	want, err := hex.DecodeString(hexPart)
	if alg != "sha256" || err != nil || len(want) != sha256.Size {
		return fmt.Errorf("digest %q: want sha256:<hex>", manifestDigest)
	}
	if sig.Bundle != nil {
		return v.verifyBundle(sig.Bundle, want)
	}
	return v.verifySimple(sig, manifestDigest)
}

func (v *Verifier) verifyBundle(raw []byte, digest []byte) error {
	if len(raw) > MaxBundle {
		return fmt.Errorf("bundle larger than %d bytes", MaxBundle)
	}
	var b bundle.Bundle
	if err := b.UnmarshalJSON(raw); err != nil {
		return fmt.Errorf("bundle: %v", err)
	}
	res, err := v.v.Verify(&b, verify.NewPolicy(verify.WithArtifactDigest("sha256", digest), v.identity))
	if err != nil {
		return err
	}
	// A statement in an envelope must be cosign's signature of the image,
	// not another attestation about it (a build log is no approval).
	if res.Statement != nil && res.Statement.PredicateType != PredicateSign {
		return fmt.Errorf("the bundle is an attestation of type %q, not a signature (%s)", res.Statement.PredicateType, PredicateSign)
	}
	return nil
}

// simplePayload is the part of cosign's simple-signing payload that
// matters: which manifest it signs.
type simplePayload struct {
	Critical struct {
		Image struct {
			Digest string `json:"docker-manifest-digest"`
		} `json:"image"`
		Type string `json:"type"`
	} `json:"critical"`
}

func (v *Verifier) verifySimple(sig Signature, manifestDigest string) error {
	if len(sig.Payload) > MaxPayload {
		return fmt.Errorf("payload larger than %d bytes", MaxPayload)
	}
	b64 := sig.Annotations[AnnotationSignature]
	if b64 == "" {
		return errors.New("no signature annotation")
	}
	raw, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		return fmt.Errorf("signature annotation: %v", err)
	}
	entity, err := v.simpleEntity(sig, raw)
	if err != nil {
		return err
	}
	if _, err := v.v.Verify(entity, verify.NewPolicy(verify.WithArtifact(bytes.NewReader(sig.Payload)), v.identity)); err != nil {
		return err
	}
	// Only a verified payload is read: what it names is signed.
	var p simplePayload
	if err := json.Unmarshal(sig.Payload, &p); err != nil {
		return fmt.Errorf("payload: %v", err)
	}
	if !strings.EqualFold(p.Critical.Type, "cosign container image signature") {
		return fmt.Errorf("payload of type %q is not an image signature", p.Critical.Type)
	}
	if p.Critical.Image.Digest != manifestDigest {
		return fmt.Errorf("the signature is of %s, not of %s", p.Critical.Image.Digest, manifestDigest)
	}
	return nil
}

// simpleEntity puts a tag-scheme signature in a bundle sigstore-go
// verifies: a message signature over the payload, with the key's hint or
// the certificate (and its log entry) from the annotations.
func (v *Verifier) simpleEntity(sig Signature, raw []byte) (*bundle.Bundle, error) {
	sum := sha256.Sum256(sig.Payload)
	pb := &protobundle.Bundle{
		MediaType: "application/vnd.dev.sigstore.bundle.v0.3+json",
		Content: &protobundle.Bundle_MessageSignature{MessageSignature: &protocommon.MessageSignature{
			MessageDigest: &protocommon.HashOutput{Algorithm: protocommon.HashAlgorithm_SHA2_256, Digest: sum[:]},
			Signature:     raw,
		}},
		VerificationMaterial: &protobundle.VerificationMaterial{},
	}
	if v.keyed {
		pb.VerificationMaterial.Content = &protobundle.VerificationMaterial_PublicKey{PublicKey: &protocommon.PublicKeyIdentifier{Hint: keyHint}}
		return bundle.NewBundle(pb)
	}
	certPEM := sig.Annotations[AnnotationCertificate]
	if certPEM == "" {
		return nil, errors.New("no certificate annotation (a keyless signature carries its certificate)")
	}
	certs, err := cryptoutils.UnmarshalCertificatesFromPEM([]byte(certPEM))
	if err != nil || len(certs) != 1 {
		return nil, fmt.Errorf("certificate annotation: want one PEM certificate (%v)", err)
	}
	pb.VerificationMaterial.Content = &protobundle.VerificationMaterial_Certificate{Certificate: &protocommon.X509Certificate{RawBytes: certs[0].Raw}}
	if rb := sig.Annotations[AnnotationRekorBundle]; rb != "" {
		tle, err := rekorEntry([]byte(rb))
		if err != nil {
			return nil, err
		}
		// The tag scheme's log entry carries a promise (a signed entry
		// timestamp), not an inclusion proof: a v0.1 bundle.
		pb.MediaType = "application/vnd.dev.sigstore.bundle+json;version=0.1"
		pb.VerificationMaterial.TlogEntries = append(pb.VerificationMaterial.TlogEntries, tle)
	}
	return bundle.NewBundle(pb)
}

// rekorBundle is cosign's annotation of a log entry: the entry's body and
// coordinates, and the log's signed promise to include it.
type rekorBundle struct {
	SignedEntryTimestamp []byte `json:"SignedEntryTimestamp"`
	Payload              struct {
		Body           string `json:"body"`
		IntegratedTime int64  `json:"integratedTime"`
		LogIndex       int64  `json:"logIndex"`
		LogID          string `json:"logID"`
	} `json:"Payload"`
}

func rekorEntry(raw []byte) (*protorekor.TransparencyLogEntry, error) {
	var rb rekorBundle
	if err := json.Unmarshal(raw, &rb); err != nil {
		return nil, fmt.Errorf("log entry annotation: %v", err)
	}
	body, err := base64.StdEncoding.DecodeString(rb.Payload.Body)
	if err != nil {
		return nil, fmt.Errorf("log entry body: %v", err)
	}
	var kind struct {
		Kind       string `json:"kind"`
		APIVersion string `json:"apiVersion"`
	}
	if err := json.Unmarshal(body, &kind); err != nil || kind.Kind == "" || kind.APIVersion == "" {
		return nil, fmt.Errorf("log entry body: no kind and version (%v)", err)
	}
	logID, err := hex.DecodeString(rb.Payload.LogID)
	if err != nil || len(rb.SignedEntryTimestamp) == 0 {
		return nil, fmt.Errorf("log entry: want a hex log id and a signed entry timestamp (%v)", err)
	}
	return &protorekor.TransparencyLogEntry{
		LogIndex:          rb.Payload.LogIndex,
		LogId:             &protocommon.LogId{KeyId: logID},
		KindVersion:       &protorekor.KindVersion{Kind: kind.Kind, Version: kind.APIVersion},
		IntegratedTime:    rb.Payload.IntegratedTime,
		InclusionPromise:  &protorekor.InclusionPromise{SignedEntryTimestamp: rb.SignedEntryTimestamp},
		CanonicalizedBody: body,
	}, nil
}
