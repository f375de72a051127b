package receiver

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

const secret = "It's a Secret to Everybody"

func hmacHex(body []byte) string {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write(body)
	return hex.EncodeToString(m.Sum(nil))
}

// headers builds the headers each forge sends with a delivery of body.
func headers(forge Forge, event string, body []byte) http.Header {
	h := http.Header{"Content-Type": {"application/json"}}
	sig := hmacHex(body)
	switch forge {
	case GitHub:
		h.Set("X-GitHub-Event", event)
		h.Set("X-GitHub-Delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958")
		h.Set("X-GitHub-Hook-ID", "109948940")
		h.Set("X-Hub-Signature-256", "sha256="+sig)
		h.Set("User-Agent", "GitHub-Hookshot/044aadd")
	case Gitea: // Gitea 1.2x and Forgejo send GitHub's and Gogs' headers too
		h.Set("X-GitHub-Event", event)
		h.Set("X-Gogs-Event", event)
		h.Set("X-Gitea-Event", event)
		h.Set("X-Forgejo-Event", event)
		h.Set("X-Gitea-Delivery", "f6266f16-1bf3-46a5-9ea4-602e06ead473")
		h.Set("X-Gitea-Signature", sig)
		h.Set("X-Gogs-Signature", sig)
		h.Set("X-Forgejo-Signature", sig)
		h.Set("X-Hub-Signature-256", "sha256="+sig)
	case GitLab:
		h.Set("X-Gitlab-Event", event)
		h.Set("X-Gitlab-Token", secret)
		h.Set("X-Gitlab-Instance", "https://gitlab.example.com")
		h.Set("X-Gitlab-Event-UUID", "13792a34-cac6-4fda-95a8-c58e00a3954e")
	case BitbucketServer:
		h.Set("X-Event-Key", event)
		h.Set("X-Request-Id", "d4b7a1b3-7c3a-4f0e-9c45-0d0c2d3e5f6a")
		h.Set("X-Hub-Signature", "sha256="+sig)
	case GenericHMAC:
		h.Set("X-Signature", "sha256="+sig)
	case Token:
		h.Set("Authorization", "Bearer ci-token")
	}
	return h
}

func payload(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// recorder counts triggers.
type recorder struct {
	mu  sync.Mutex
	got []Delivery
}

func (r *recorder) trigger(_ context.Context, d Delivery) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.got = append(r.got, d)
	return nil
}

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.got)
}

func newServer(t *testing.T, rec *recorder) *httptest.Server {
	t.Helper()
	rc, err := New(Options{Branch: "main", Secret: secret, Token: "ci-token", Trigger: rec.trigger})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(rc)
	t.Cleanup(srv.Close)
	return srv
}

func post(t *testing.T, url string, h http.Header, body []byte) int {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(string(body)))
	if err != nil {
		t.Fatal(err)
	}
	req.Header = h
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestForges replays each forge's real delivery format: only a push to the
// followed branch triggers; pings are answered; other events and branches
// are ignored with 200.
func TestForges(t *testing.T) {
	cases := []struct {
		name    string
		forge   Forge
		event   string
		file    string
		code    int
		trigger bool
		after   string
	}{
		{"github push", GitHub, "push", "github-push.json", 202, true, "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c"},
		{"github ping", GitHub, "ping", "github-ping.json", 200, false, ""},
		{"github pull_request", GitHub, "pull_request", "github-pull_request.json", 200, false, ""},
		{"github push to another branch", GitHub, "push", "gitlab-push-other-branch.json", 200, false, ""},
		{"gitea push", Gitea, "push", "gitea-push.json", 202, true, "bffeb74224043ba2feb48d137756c8a9331c449a"},
		{"gitea pull_request", Gitea, "pull_request", "github-pull_request.json", 200, false, ""},
		{"gitlab push", GitLab, "Push Hook", "gitlab-push.json", 202, true, "da1560886d4f094c3e6c9ef40349f7d38b5d27d7"},
		{"gitlab push to another branch", GitLab, "Push Hook", "gitlab-push-other-branch.json", 200, false, ""},
		{"gitlab merge request", GitLab, "Merge Request Hook", "gitlab-merge-request.json", 200, false, ""},
		{"bitbucket refs_changed", BitbucketServer, "repo:refs_changed", "bitbucket-refs_changed.json", 202, true, "178864a7d521b6f5e720b386b2c2b0ef8563e0dc"},
		{"bitbucket refs_changed other branch", BitbucketServer, "repo:refs_changed", "bitbucket-refs_changed-other-branch.json", 200, false, ""},
		{"bitbucket ping", BitbucketServer, "diagnostics:ping", "bitbucket-ping.json", 200, false, ""},
		{"bitbucket pr opened", BitbucketServer, "pr:opened", "bitbucket-pr_opened.json", 200, false, ""},
		{"generic hmac", GenericHMAC, "", "bitbucket-ping.json", 202, true, ""},
		{"generic hmac with another ref", GenericHMAC, "", "gitlab-push-other-branch.json", 200, false, ""},
		{"bearer token", Token, "", "bitbucket-ping.json", 202, true, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rec := &recorder{}
			srv := newServer(t, rec)
			body := payload(t, c.file)
			if code := post(t, srv.URL, headers(c.forge, c.event, body), body); code != c.code {
				t.Fatalf("answered %d, want %d", code, c.code)
			}
			if got := rec.count(); (got == 1) != c.trigger || got > 1 {
				t.Fatalf("%d triggers, want trigger=%v", got, c.trigger)
			}
			if c.trigger && (rec.got[0].Forge != c.forge || rec.got[0].After != c.after) {
				t.Fatalf("delivery %+v, want forge %s after %q", rec.got[0], c.forge, c.after)
			}
		})
	}
}

// TestRefused: a wrong signature or token, a tampered body, a missing
// signature and an unknown sender are refused with 401 and trigger nothing.
func TestRefused(t *testing.T) {
	body := payload(t, "github-push.json")
	tampered := []byte(strings.Replace(string(body), "refs/heads/main", "refs/heads/main ", 1))
	cases := []struct {
		name string
		h    http.Header
		body []byte
		code int
	}{
		{"github tampered body", headers(GitHub, "push", body), tampered, 401},
		{"github no signature", http.Header{"X-Github-Event": {"push"}}, body, 401},
		{"github sha1 only", http.Header{"X-Github-Event": {"push"}, "X-Hub-Signature": {"sha1=0123"}}, body, 401},
		{"gitea wrong signature", headers(Gitea, "push", tampered), body, 401},
		{"gitlab wrong token", http.Header{"X-Gitlab-Event": {"Push Hook"}, "X-Gitlab-Token": {"guess"}}, body, 401},
		{"bitbucket unsigned", http.Header{"X-Event-Key": {"repo:refs_changed"}}, body, 401},
		{"generic bad hex", http.Header{"X-Signature": {"sha256=zz"}}, body, 401},
		{"bearer wrong", http.Header{"Authorization": {"Bearer nope"}}, body, 401},
		{"nothing", http.Header{}, body, 401},
		{"github push not json", headers(GitHub, "push", []byte("ref=main")), []byte("ref=main"), 400},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rec := &recorder{}
			srv := newServer(t, rec)
			if code := post(t, srv.URL, c.h, c.body); code != c.code {
				t.Fatalf("answered %d, want %d", code, c.code)
			}
			if rec.count() != 0 {
				t.Fatalf("triggered %d checks", rec.count())
			}
		})
	}
	t.Run("GET", func(t *testing.T) {
		srv := newServer(t, &recorder{})
		resp, err := http.Get(srv.URL)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusMethodNotAllowed {
			t.Fatalf("GET answered %d", resp.StatusCode)
		}
	})
}

func TestNewNeedsCredentials(t *testing.T) {
	if _, err := New(Options{Trigger: (&recorder{}).trigger}); err == nil {
		t.Fatal("a receiver with no secret and no token was created")
	}
}

// TestOversized: a body over the limit is refused with 413, whether it says
// its length or streams it, and even when correctly signed.
func TestOversized(t *testing.T) {
	rec := &recorder{}
	srv := newServer(t, rec)
	big := []byte(`{"ref":"refs/heads/main","pad":"` + strings.Repeat("x", DefaultMaxBodyBytes) + `"}`)
	if code := post(t, srv.URL, headers(GitHub, "push", big), big); code != http.StatusRequestEntityTooLarge {
		t.Fatalf("signed oversized push answered %d, want 413", code)
	}
	req, _ := http.NewRequest(http.MethodPost, srv.URL, &endless{})
	req.Header = headers(GitHub, "push", big)
	resp, err := http.DefaultClient.Do(req)
	if err == nil {
		resp.Body.Close()
		if resp.StatusCode != http.StatusRequestEntityTooLarge {
			t.Fatalf("streamed body answered %d, want 413", resp.StatusCode)
		}
	}
	if rec.count() != 0 {
		t.Fatal("an oversized delivery triggered")
	}
}

// endless is a body that never ends.
type endless struct{}

func (endless) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = 'x'
	}
	return len(p), nil
}

// TestBusy: past MaxConcurrent, deliveries are answered 503 without waiting.
func TestBusy(t *testing.T) {
	release := make(chan struct{})
	entered := make(chan struct{}, 1)
	rc, err := New(Options{Token: "ci-token", MaxConcurrent: 1, Trigger: func(context.Context, Delivery) error {
		entered <- struct{}{}
		<-release
		return nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(rc)
	defer srv.Close()
	done := make(chan int)
	go func() {
		req, _ := http.NewRequest(http.MethodPost, srv.URL, nil)
		req.Header = headers(Token, "", nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			done <- 0
			return
		}
		resp.Body.Close()
		done <- resp.StatusCode
	}()
	<-entered
	if code := post(t, srv.URL, headers(Token, "", nil), nil); code != http.StatusServiceUnavailable {
		t.Fatalf("second concurrent delivery answered %d, want 503", code)
	}
	close(release)
	if code := <-done; code != http.StatusAccepted {
		t.Fatalf("first delivery answered %d", code)
	}
}
