package gitserver

import (
	"crypto/subtle"
	"errors"
	"net"
	"net/http"
	"net/http/cgi"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// HTTPOptions configures the authentication an HTTPServer demands. With
// neither set, requests are anonymous. With both set, either is accepted.
type HTTPOptions struct {
	// Username and Password, when Username is set, require HTTP basic auth.
	Username, Password string
	// BearerToken, when set, requires "Authorization: Bearer <token>".
	BearerToken string
}

// HTTPServer serves the repositories under Root through `git http-backend`
// (smart HTTP, pushes enabled) on http://127.0.0.1:PORT/. It can be stopped
// and started again on the same port.
type HTTPServer struct {
	// Root is GIT_PROJECT_ROOT: URL paths are relative to it.
	Root string
	// Addr is "127.0.0.1:PORT".
	Addr string
	// Options is the authentication in force.
	Options HTTPOptions

	t          testing.TB
	handler    http.Handler
	mu         sync.Mutex
	srv        *http.Server
	requests   atomic.Int64
	authFailed atomic.Int64
}

// StartHTTP starts a smart-HTTP Git server for the repositories under root
// and stops it when the test ends.
func StartHTTP(t testing.TB, root string, opts HTTPOptions) *HTTPServer {
	t.Helper()
	git := GitPath(t)
	h := &HTTPServer{Root: root, Addr: FreeLoopbackAddr(t), Options: opts, t: t}
	backend := &cgi.Handler{
		Path: git,
		Args: []string{"http-backend"},
		Root: "/",
		Env: append(BaseEnv(),
			"GIT_PROJECT_ROOT="+root,
			"GIT_HTTP_EXPORT_ALL=1",
			// Allow anonymous pushes: authentication is checked in front.
			"GIT_CONFIG_COUNT=2",
			"GIT_CONFIG_KEY_0=http.receivepack",
			"GIT_CONFIG_VALUE_0=true",
			"GIT_CONFIG_KEY_1=http.uploadpack",
			"GIT_CONFIG_VALUE_1=true",
		),
	}
	h.handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.requests.Add(1)
		if !h.authorized(r) {
			h.authFailed.Add(1)
			w.Header().Set("WWW-Authenticate", `Basic realm="herd-test"`)
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		backend.ServeHTTP(w, r)
	})
	h.Start()
	t.Cleanup(h.Stop)
	return h
}

func (h *HTTPServer) authorized(r *http.Request) bool {
	o := h.Options
	if o.Username == "" && o.BearerToken == "" {
		return true
	}
	if o.Username != "" {
		if u, p, ok := r.BasicAuth(); ok &&
			subtle.ConstantTimeCompare([]byte(u), []byte(o.Username)) == 1 &&
			subtle.ConstantTimeCompare([]byte(p), []byte(o.Password)) == 1 {
			return true
		}
	}
	if o.BearerToken != "" {
		if tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok &&
			subtle.ConstantTimeCompare([]byte(tok), []byte(o.BearerToken)) == 1 {
			return true
		}
	}
	return false
}

// URL returns the http:// URL of the repository at root/repo, without
// credentials.
func (h *HTTPServer) URL(repo string) string {
	return "http://" + h.Addr + "/" + strings.TrimPrefix(repo, "/")
}

// CLIURL returns a URL for the git CLI with the basic-auth credentials
// embedded, when basic auth is configured.
func (h *HTTPServer) CLIURL(repo string) string {
	if h.Options.Username == "" {
		return h.URL(repo)
	}
	return "http://" + h.Options.Username + ":" + h.Options.Password + "@" + h.Addr + "/" + strings.TrimPrefix(repo, "/")
}

// CLIEnv returns environment variables that make the git CLI send the bearer
// token, when one is configured.
func (h *HTTPServer) CLIEnv() []string {
	if h.Options.BearerToken == "" {
		return nil
	}
	return []string{
		"GIT_CONFIG_COUNT=1",
		"GIT_CONFIG_KEY_0=http.extraHeader",
		"GIT_CONFIG_VALUE_0=Authorization: Bearer " + h.Options.BearerToken,
	}
}

// Requests returns how many requests the server received, and how many of
// them were refused for lack of valid credentials.
func (h *HTTPServer) Requests() (total, unauthorized int64) {
	return h.requests.Load(), h.authFailed.Load()
}

// Start starts serving (again) on the server's address.
func (h *HTTPServer) Start() {
	h.t.Helper()
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.srv != nil {
		return
	}
	var l net.Listener
	err := WaitFor(StartTimeout, func() error {
		var err error
		l, err = net.Listen("tcp", h.Addr)
		return err
	})
	if err != nil {
		h.t.Fatalf("gitserver: listen on %s: %v", h.Addr, err)
	}
	srv := &http.Server{Handler: h.handler, ReadHeaderTimeout: 30 * time.Second}
	go func() {
		if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			h.t.Errorf("gitserver: http server: %v", err)
		}
	}()
	h.srv = srv
}

// Stop closes the listener and all connections.
func (h *HTTPServer) Stop() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.srv == nil {
		return
	}
	_ = h.srv.Close()
	h.srv = nil
}
