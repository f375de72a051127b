package source

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"strings"
)

// WebhookOptions configures the receiver returned by Webhook. At least one
// of GitHubSecret and Token must be set.
type WebhookOptions struct {
	// GitHubSecret verifies GitHub-style deliveries: the X-Hub-Signature-256
	// header must be "sha256=" + hex(HMAC-SHA256(secret, body)). A "ping"
	// event (X-GitHub-Event: ping) is answered 200 without fetching; a
	// "push" event for another branch is answered 200 and ignored; any
	// other authenticated delivery triggers a check.
	GitHubSecret string
	// Token authenticates generic deliveries (a CI job, a Git server
	// without HMAC support): the request must carry
	// "Authorization: Bearer <Token>". The body is ignored.
	Token string
	// MaxBodyBytes bounds the request body; default 25 MiB (GitHub's cap).
	MaxBodyBytes int64
}

// Webhook returns an http.Handler that triggers an immediate check of the
// remote. It accepts POST only, answers 202 Accepted when it triggered a
// check, 200 for pings and pushes to other branches, 401 for a missing or
// bad signature or token (without triggering anything), 405 for other
// methods and 413 for oversized bodies. Secrets are compared in constant
// time.
func (s *Source) Webhook(opts WebhookOptions) http.Handler {
	if opts.MaxBodyBytes <= 0 {
		opts.MaxBodyBytes = 25 << 20
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			w.Header().Set("Allow", http.MethodPost)
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		body, err := io.ReadAll(io.LimitReader(r.Body, opts.MaxBodyBytes+1))
		if err != nil {
			http.Error(w, "read body", http.StatusBadRequest)
			return
		}
		if int64(len(body)) > opts.MaxBodyBytes {
			http.Error(w, "body too large", http.StatusRequestEntityTooLarge)
			return
		}
		if sig := r.Header.Get("X-Hub-Signature-256"); sig != "" {
			if opts.GitHubSecret == "" || !validHubSignature(opts.GitHubSecret, sig, body) {
				s.log.Warn("webhook: bad X-Hub-Signature-256", "remote", r.RemoteAddr)
				http.Error(w, "invalid signature", http.StatusUnauthorized)
				return
			}
			switch event := r.Header.Get("X-GitHub-Event"); event {
			case "ping":
				_, _ = io.WriteString(w, "pong\n")
				return
			case "push":
				var p struct {
					Ref string `json:"ref"`
				}
				if json.Unmarshal(body, &p) == nil && p.Ref != "" && p.Ref != "refs/heads/"+s.opts.Branch {
					_, _ = io.WriteString(w, "ignored: push to "+p.Ref+"\n")
					return
				}
			}
			s.log.Info("webhook: triggering a check", "event", r.Header.Get("X-GitHub-Event"))
			s.Trigger()
			w.WriteHeader(http.StatusAccepted)
			return
		}
		if tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok && opts.Token != "" &&
			subtle.ConstantTimeCompare([]byte(tok), []byte(opts.Token)) == 1 {
			s.log.Info("webhook: triggering a check", "event", "token")
			s.Trigger()
			w.WriteHeader(http.StatusAccepted)
			return
		}
		s.log.Warn("webhook: unauthenticated request", "remote", r.RemoteAddr)
		http.Error(w, "unauthorized", http.StatusUnauthorized)
	})
}

func validHubSignature(secret, header string, body []byte) bool {
	hexSig, ok := strings.CutPrefix(header, "sha256=")
	if !ok {
		return false
	}
	got, err := hex.DecodeString(hexSig)
	if err != nil {
		return false
	}
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write(body)
	return hmac.Equal(got, mac.Sum(nil))
}
