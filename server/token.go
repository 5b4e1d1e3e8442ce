package server

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"
)

// tokenClaims is the signed content of a berth token.
type tokenClaims struct {
	Issuer    string        `json:"iss"`
	Subject   string        `json:"sub"`
	Audience  string        `json:"aud"`
	IssuedAt  int64         `json:"iat"`
	NotBefore int64         `json:"nbf"`
	Expires   int64         `json:"exp"`
	ID        string        `json:"jti"`
	Access    []tokenAccess `json:"access"`
}

// tokenAccess grants actions on a resource name. Path records the
// "<repository>/<image>" the name resolved to when issued (for logs).
type tokenAccess struct {
	Type    string   `json:"type"`
	Name    string   `json:"name"`
	Path    string   `json:"path,omitempty"`
	Actions []string `json:"actions"`
}

func (a *auth) signToken(c tokenClaims) string {
	payload, _ := json.Marshal(c)
	p := base64.RawURLEncoding.EncodeToString(payload)
	mac := hmac.New(sha256.New, a.opts.TokenKey)
	mac.Write([]byte(p))
	return p + "." + base64.RawURLEncoding.EncodeToString(mac.Sum(nil))
}

// verifyToken checks signature (constant time), expiry and audience.
func (a *auth) verifyToken(tok string) (*tokenClaims, error) {
	if len(tok) > 8192 {
		return nil, fmt.Errorf("%w: token too long", errBadCredentials)
	}
	p, sig, ok := strings.Cut(tok, ".")
	if !ok {
		return nil, fmt.Errorf("%w: malformed token", errBadCredentials)
	}
	got, err := base64.RawURLEncoding.DecodeString(sig)
	if err != nil {
		return nil, fmt.Errorf("%w: malformed token signature", errBadCredentials)
	}
	mac := hmac.New(sha256.New, a.opts.TokenKey)
	mac.Write([]byte(p))
	if !hmac.Equal(got, mac.Sum(nil)) {
		return nil, fmt.Errorf("%w: bad token signature", errBadCredentials)
	}
	payload, err := base64.RawURLEncoding.DecodeString(p)
	if err != nil {
		return nil, fmt.Errorf("%w: malformed token", errBadCredentials)
	}
	var c tokenClaims
	if err := json.Unmarshal(payload, &c); err != nil {
		return nil, fmt.Errorf("%w: malformed token claims", errBadCredentials)
	}
	now := time.Now().Unix()
	if now >= c.Expires || now < c.NotBefore-30 {
		return nil, fmt.Errorf("%w: token expired or not yet valid", errBadCredentials)
	}
	if c.Audience != a.opts.Service {
		return nil, fmt.Errorf("%w: token for another service", errBadCredentials)
	}
	return &c, nil
}

// grants reports whether the token covers action on the name the client
// used. (The subject's grants are checked against the repository the
// request resolves to as well, so a token cannot carry rights to another
// listener or prefix.)
func (c *tokenClaims) grants(typ, name, action string) bool {
	for _, a := range c.Access {
		if a.Type == typ && a.Name == name && (slices.Contains(a.Actions, action) || slices.Contains(a.Actions, "*")) {
			return true
		}
	}
	return false
}

// scope is one parsed "repository:<name>:<actions>" request.
type scope struct {
	typ, name string
	actions   []string
}

// parseScopes reads scope parameters: each may hold several
// space-separated scopes; names may contain ':' only as a host:port
// prefix, so the actions are after the last ':'.
func parseScopes(values []string) ([]scope, error) {
	var out []scope
	for _, v := range values {
		for _, one := range strings.Fields(v) {
			if len(out) >= 32 {
				return nil, errors.New("too many scopes")
			}
			typ, rest, ok := strings.Cut(one, ":")
			i := strings.LastIndexByte(rest, ':')
			if !ok || typ == "" || i <= 0 || i == len(rest)-1 {
				return nil, fmt.Errorf("invalid scope %q", truncate(one, 200))
			}
			name, acts := rest[:i], rest[i+1:]
			sc := scope{typ: typ, name: name}
			for _, a := range strings.Split(acts, ",") {
				switch a {
				case actionPull, actionPush, actionDelete, "*":
					if !slices.Contains(sc.actions, a) {
						sc.actions = append(sc.actions, a)
					}
				default:
					return nil, fmt.Errorf("invalid action %q in scope", truncate(a, 50))
				}
			}
			out = append(out, sc)
		}
	}
	return out, nil
}

// serveToken is the token realm: GET /token?service=&scope=... with Basic
// credentials (or none, for anonymous), and the OAuth2 password grant
// (POST). The token grants the intersection of what was asked and what
// the principal may do.
func (s *Server) serveToken(listener listenerScope) http.HandlerFunc {
	return s.handle(formatToken, func(w http.ResponseWriter, r *http.Request) error {
		var p principal
		var q url.Values
		switch r.Method {
		case http.MethodGet:
			q = r.URL.Query()
			if r.Header.Get("Authorization") != "" {
				var err error
				if p, err = s.auth.authenticate(r); err != nil {
					return s.loginFailed(r, err, errWrongCredentials)
				}
				if p.token != nil {
					return errWrongCredentials
				}
			}
		case http.MethodPost:
			r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
			if err := r.ParseForm(); err != nil {
				return errf(codeRequestInvalid, "invalid form")
			}
			q = r.PostForm
			if q.Get("grant_type") != "password" {
				return errf(codeRequestInvalid, "unsupported grant_type (password only)")
			}
			u, err := s.auth.checkPassword(r, q.Get("username"), q.Get("password"))
			if err != nil {
				return s.loginFailed(r, err, errWrongCredentials)
			}
			p.user = u
		default:
			return errf(codeUnsupported, "use GET or POST")
		}
		if svc := q.Get("service"); svc != "" && svc != s.auth.opts.Service {
			return errf(codeRequestInvalid, "unknown service")
		}
		scopes, err := parseScopes(q["scope"])
		if err != nil {
			return errf(codeRequestInvalid, "%v", err)
		}
		now := time.Now()
		var jti [12]byte
		rand.Read(jti[:])
		c := tokenClaims{Issuer: "berth", Subject: p.name(), Audience: s.auth.opts.Service, IssuedAt: now.Unix(),
			NotBefore: now.Unix(), Expires: now.Add(s.auth.opts.TokenTTL).Unix(), ID: hex.EncodeToString(jti[:])}
		for _, sc := range scopes {
			if acc, ok := s.grantScope(r, p, listener, sc); ok {
				c.Access = append(c.Access, acc)
			}
		}
		if c.Access == nil {
			c.Access = []tokenAccess{}
		}
		tok := s.auth.signToken(c)
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		json.NewEncoder(w).Encode(map[string]any{
			"token": tok, "access_token": tok, "expires_in": int(s.auth.opts.TokenTTL.Seconds()),
			"issued_at": now.UTC().Format(time.RFC3339),
		})
		s.log.Info("token issued", "user", p.name(), "scopes", len(scopes), "granted", len(c.Access))
		return nil
	})
}

// errWrongCredentials answers a token or page request with wrong credentials; the
// Basic challenge lets a browser or curl ask for them again.
var errWrongCredentials = &regError{Code: codeUnauthorized, Message: "invalid credentials",
	Header: http.Header{"Www-Authenticate": {`Basic realm="berth"`}}}

// grantScope resolves a scope's name as the listener would route it and
// keeps the actions the principal may do.
func (s *Server) grantScope(r *http.Request, p principal, listener listenerScope, sc scope) (tokenAccess, bool) {
	switch sc.typ {
	case "registry":
		rp := s.repos[listener.repo]
		if sc.name == "catalog" && rp != nil && allowed(p, rp, "", actionPull) {
			return tokenAccess{Type: "registry", Name: "catalog", Actions: []string{"*"}}, true
		}
		return tokenAccess{}, false
	case "repository":
	default:
		return tokenAccess{}, false
	}
	if validateName(sc.name) != nil {
		return tokenAccess{}, false
	}
	rp, image, err := s.resolve(r.Context(), r.URL.Query().Get("ns"), listener, sc.name)
	if err != nil {
		return tokenAccess{}, false
	}
	defer s.hosts.forgetSilentHost(rp) // a scope alone keeps no host in the table
	acc := tokenAccess{Type: "repository", Name: sc.name, Path: rp.Name + "/" + image}
	for _, a := range sc.actions {
		need := a
		if a == actionDelete || a == "*" {
			need = actionPush
		}
		if allowed(p, rp, image, need) {
			if a == "*" {
				acc.Actions = append(acc.Actions, actionPull, actionPush, actionDelete)
			} else {
				acc.Actions = append(acc.Actions, a)
			}
		}
	}
	return acc, len(acc.Actions) > 0
}
