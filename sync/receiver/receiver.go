// Package receiver accepts push webhooks from Git forges (GitHub, GitLab,
// Bitbucket Server, Gitea/Forgejo, generic HMAC or bearer token), the way Flux's Receiver does.
package receiver

import (
	"context"
	"crypto/hmac"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"net/http"
	"strings"
)

// Forge names the sender of a delivery, as told by its headers.
type Forge string

// Forges the receiver understands.
const (
	GitHub          Forge = "github"           // X-GitHub-Event, X-Hub-Signature-256
	Gitea           Forge = "gitea"            // X-Gitea-Event or X-Forgejo-Event, X-Gitea-Signature or X-Forgejo-Signature
	GitLab          Forge = "gitlab"           // X-Gitlab-Event, X-Gitlab-Token
	BitbucketServer Forge = "bitbucket-server" // X-Event-Key, X-Hub-Signature
	GenericHMAC     Forge = "generic-hmac"     // X-Signature: sha256=<hex>
	Token           Forge = "token"            // Authorization: Bearer <token>
)

// Outcome is what the receiver made of a delivery.
type Outcome int

// Outcomes, each answered with its own status code.
const (
	Triggered    Outcome = iota // a push to the followed branch: 202
	Pong                        // a ping: 200
	Ignored                     // another event, or a push to another branch: 200
	Unauthorized                // missing or bad credentials: 401
	TooLarge                    // body over the limit: 413
	Busy                        // too many deliveries at once: 503
	Malformed                   // a push whose body is not the forge's JSON: 400
	Failed                      // the trigger failed: 500
)

// Delivery is an authenticated push to the followed branch.
type Delivery struct {
	Forge Forge
	Event string // the forge's event name
	Ref   string // refs/heads/<branch>; "" for a bearer-token delivery
	After string // the new head, when the forge says it
}

// Options configures a Receiver.
type Options struct {
	// Branch is the followed branch: pushes to others are ignored.
	Branch string
	// Secret authenticates forge deliveries: the HMAC key of GitHub,
	// Gitea/Forgejo, Bitbucket Server and generic HMAC deliveries, and
	// GitLab's X-Gitlab-Token. "" refuses them all.
	Secret string
	// Token authenticates "Authorization: Bearer <Token>" deliveries (a CI
	// job, a post-receive hook); "" refuses them.
	Token string
	// MaxBodyBytes bounds a delivery's body; default 1 MiB.
	MaxBodyBytes int64
	// MaxConcurrent bounds the deliveries handled at once; more are
	// answered 503 at once, without reading them. Default 4.
	MaxConcurrent int
	// Trigger acts on an authenticated push to the branch. Required.
	Trigger func(context.Context, Delivery) error
	// Logger; default discards.
	Logger *slog.Logger
}

// DefaultMaxBodyBytes bounds a body unless Options say otherwise: push
// events of a few hundred commits fit; GitHub caps its own at 25 MiB but
// sends only the first 20 commits' details.
const DefaultMaxBodyBytes = 1 << 20

// Receiver is an http.Handler for webhook deliveries.
type Receiver struct {
	opts Options
	sem  chan struct{}
	log  *slog.Logger
}

// New checks opts and returns a Receiver.
func New(opts Options) (*Receiver, error) {
	if opts.Secret == "" && opts.Token == "" {
		return nil, errors.New("webhook receiver: no secret and no token: every delivery would be refused")
	}
	if opts.Trigger == nil {
		return nil, errors.New("webhook receiver: no Trigger")
	}
	if opts.Branch == "" {
		opts.Branch = "main"
	}
	if opts.MaxBodyBytes <= 0 {
		opts.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if opts.MaxConcurrent <= 0 {
		opts.MaxConcurrent = 4
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	return &Receiver{opts: opts, sem: make(chan struct{}, opts.MaxConcurrent), log: opts.Logger}, nil
}

// ServeHTTP answers one delivery: 202 when it triggered a check, 200 for a
// ping or an ignored event, 401, 405, 413, 400 or 503 otherwise.
func (rc *Receiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	select {
	case rc.sem <- struct{}{}:
		defer func() { <-rc.sem }()
	default:
		w.Header().Set("Retry-After", "1")
		rc.answer(w, r, Busy, "busy")
		return
	}
	out, msg := rc.handle(r)
	rc.answer(w, r, out, msg)
}

func (rc *Receiver) answer(w http.ResponseWriter, r *http.Request, out Outcome, msg string) {
	code := map[Outcome]int{
		Triggered: http.StatusAccepted, Pong: http.StatusOK, Ignored: http.StatusOK,
		Unauthorized: http.StatusUnauthorized, TooLarge: http.StatusRequestEntityTooLarge,
		Busy: http.StatusServiceUnavailable, Malformed: http.StatusBadRequest, Failed: http.StatusInternalServerError,
	}[out]
	switch out {
	case Unauthorized, TooLarge, Busy, Malformed, Failed:
		rc.log.Warn("webhook refused", "remote", r.RemoteAddr, "status", code, "reason", msg)
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(code)
	_, _ = io.WriteString(w, msg+"\n")
}

// handle authenticates and interprets one delivery. It reads the body only
// after the headers passed every check they allow.
func (rc *Receiver) handle(r *http.Request) (Outcome, string) {
	in, ok := identify(r.Header)
	if !ok {
		return Unauthorized, "no credentials: want a forge's signature or token header, or Authorization: Bearer"
	}
	if err := rc.checkHeaders(in); err != nil {
		return Unauthorized, err.Error()
	}
	if r.ContentLength > rc.opts.MaxBodyBytes {
		return TooLarge, fmt.Sprintf("body of %d bytes is over the limit of %d", r.ContentLength, rc.opts.MaxBodyBytes)
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, rc.opts.MaxBodyBytes+1))
	if err != nil {
		return Malformed, "read body: " + err.Error()
	}
	if int64(len(body)) > rc.opts.MaxBodyBytes {
		return TooLarge, fmt.Sprintf("body over the limit of %d bytes", rc.opts.MaxBodyBytes)
	}
	if in.mac != nil && !validMAC(in.mac, rc.opts.Secret, body, in.sig) {
		return Unauthorized, "invalid " + in.sigHeader
	}
	d, out, msg := rc.interpret(in, body)
	if out != Triggered {
		return out, msg
	}
	rc.log.Info("webhook: triggering a check", "forge", d.Forge, "event", d.Event, "ref", d.Ref, "after", d.After)
	if err := rc.opts.Trigger(r.Context(), d); err != nil {
		return Failed, "trigger: " + err.Error()
	}
	return Triggered, "accepted"
}

// incoming is what the headers say about a delivery.
type incoming struct {
	forge     Forge
	event     string
	token     string           // GitLab's token or the bearer token
	mac       func() hash.Hash // nil for token schemes
	sig       []byte           // the signature the sender computed
	sigHeader string
	badSig    bool // the signature header is malformed
}

// identify finds the forge from the headers. Gitea and Forgejo also send
// GitHub's headers, so they are looked at first.
func identify(h http.Header) (incoming, bool) {
	switch {
	case h.Get("X-Forgejo-Event") != "" || h.Get("X-Gitea-Event") != "":
		in := incoming{forge: Gitea, event: first(h.Get("X-Forgejo-Event"), h.Get("X-Gitea-Event"))}
		hdr := "X-Gitea-Signature"
		if h.Get("X-Forgejo-Signature") != "" {
			hdr = "X-Forgejo-Signature"
		}
		in.setSig(hdr, "", h.Get(hdr))
		return in, true
	case h.Get("X-GitHub-Event") != "":
		in := incoming{forge: GitHub, event: h.Get("X-GitHub-Event")}
		in.setSig("X-Hub-Signature-256", "sha256=", h.Get("X-Hub-Signature-256"))
		return in, true
	case h.Get("X-Gitlab-Event") != "":
		return incoming{forge: GitLab, event: h.Get("X-Gitlab-Event"), token: h.Get("X-Gitlab-Token")}, true
	case h.Get("X-Event-Key") != "":
		in := incoming{forge: BitbucketServer, event: h.Get("X-Event-Key")}
		in.setSig("X-Hub-Signature", "sha256=", h.Get("X-Hub-Signature"))
		return in, true
	case h.Get("X-Signature") != "":
		in := incoming{forge: GenericHMAC}
		in.setSig("X-Signature", "", h.Get("X-Signature"))
		return in, true
	}
	if tok, ok := strings.CutPrefix(h.Get("Authorization"), "Bearer "); ok {
		return incoming{forge: Token, token: tok}, true
	}
	return incoming{}, false
}

// setSig parses a signature header: hex, after a required prefix (or, with
// no prefix given, an optional "sha1=", "sha256=" or "sha512=").
func (in *incoming) setSig(header, prefix, value string) {
	in.sigHeader = header
	in.mac = sha256.New
	rest, ok := strings.CutPrefix(value, prefix)
	if prefix == "" {
		if alg, hexSig, found := strings.Cut(value, "="); found {
			rest, ok = hexSig, true
			switch alg {
			case "sha1":
				in.mac = sha1.New
			case "sha256":
			case "sha512":
				in.mac = sha512.New
			default:
				ok = false
			}
		}
	}
	sig, err := hex.DecodeString(rest)
	if !ok || err != nil || len(sig) != in.mac().Size() {
		in.badSig = true
		return
	}
	in.sig = sig
}

// checkHeaders authenticates what can be authenticated before the body:
// tokens entirely, signatures by presence and shape.
func (rc *Receiver) checkHeaders(in incoming) error {
	switch in.forge {
	case Token:
		if rc.opts.Token == "" || !equal(in.token, rc.opts.Token) {
			return errors.New("invalid bearer token")
		}
	case GitLab:
		if rc.opts.Secret == "" || !equal(in.token, rc.opts.Secret) {
			return errors.New("invalid X-Gitlab-Token")
		}
	default:
		if rc.opts.Secret == "" {
			return fmt.Errorf("no secret configured for %s deliveries", in.forge)
		}
		if in.badSig {
			return fmt.Errorf("missing or malformed %s", in.sigHeader)
		}
	}
	return nil
}

// interpret decides what an authenticated delivery asks for.
func (rc *Receiver) interpret(in incoming, body []byte) (Delivery, Outcome, string) {
	d := Delivery{Forge: in.forge, Event: in.event}
	var refs []string
	switch in.forge {
	case Token:
		return d, Triggered, ""
	case GitHub, Gitea:
		switch in.event {
		case "ping":
			return d, Pong, "pong"
		case "push":
		default:
			return d, Ignored, "ignored: event " + in.event
		}
		var p struct {
			Ref   string `json:"ref"`
			After string `json:"after"`
		}
		if err := json.Unmarshal(body, &p); err != nil {
			return d, Malformed, "push payload: " + err.Error()
		}
		refs, d.After = []string{p.Ref}, p.After
	case GitLab:
		if in.event != "Push Hook" {
			return d, Ignored, "ignored: event " + in.event
		}
		var p struct {
			Ref   string `json:"ref"`
			After string `json:"after"`
		}
		if err := json.Unmarshal(body, &p); err != nil {
			return d, Malformed, "push payload: " + err.Error()
		}
		refs, d.After = []string{p.Ref}, p.After
	case BitbucketServer:
		switch in.event {
		case "diagnostics:ping":
			return d, Pong, "pong"
		case "repo:refs_changed":
		default:
			return d, Ignored, "ignored: event " + in.event
		}
		var p struct {
			Changes []struct {
				RefID  string `json:"refId"`
				ToHash string `json:"toHash"`
				Type   string `json:"type"`
			} `json:"changes"`
		}
		if err := json.Unmarshal(body, &p); err != nil {
			return d, Malformed, "refs_changed payload: " + err.Error()
		}
		for _, c := range p.Changes {
			refs = append(refs, c.RefID)
			if c.RefID == "refs/heads/"+rc.opts.Branch {
				d.After = c.ToHash
			}
		}
	case GenericHMAC:
		// The body is the sender's own; a "ref" in a JSON object narrows it.
		var p struct {
			Ref string `json:"ref"`
		}
		if json.Unmarshal(body, &p) != nil || p.Ref == "" {
			return d, Triggered, ""
		}
		refs = []string{p.Ref}
	}
	want := "refs/heads/" + rc.opts.Branch
	for _, ref := range refs {
		if ref == want {
			d.Ref = ref
			return d, Triggered, ""
		}
	}
	return d, Ignored, "ignored: push to " + strings.Join(refs, ", ") + ", not " + want
}

func validMAC(mac func() hash.Hash, secret string, body, sig []byte) bool {
	m := hmac.New(mac, []byte(secret))
	m.Write(body)
	return hmac.Equal(sig, m.Sum(nil))
}

func equal(a, b string) bool { return subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1 }

func first(a, b string) string {
	if a != "" {
		return a
	}
	return b
}
