package gitutil

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha1"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"

	"github.com/go-git/go-git/v5/plumbing/transport"
	githttp "github.com/go-git/go-git/v5/plumbing/transport/http"
	gitssh "github.com/go-git/go-git/v5/plumbing/transport/ssh"
	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// Auth holds the credentials for a remote. Which fields apply depends on the
// URL's scheme: http(s) uses Username/Password (basic) or BearerToken, ssh
// uses the private key and known hosts; file:// and git:// use none.
type Auth struct {
	// Username and Password are HTTP basic credentials.
	Username string
	Password string
	// BearerToken is sent as "Authorization: Bearer <token>" over HTTP.
	BearerToken string

	// SSHUser is the login for ssh:// URLs without a user; default "git".
	SSHUser string
	// SSHPrivateKey (PEM or OpenSSH format) or SSHPrivateKeyFile is the
	// client key; SSHPassphrase decrypts it when encrypted.
	SSHPrivateKey     []byte
	SSHPrivateKeyFile string
	SSHPassphrase     string
	// KnownHosts (known_hosts file content) or KnownHostsFile lists the
	// trusted host keys. ssh:// remotes require one of them: host keys are
	// always checked.
	KnownHosts     []byte
	KnownHostsFile string
}

// Method returns the go-git authentication for url, or nil when the scheme
// needs none.
func (a Auth) Method(url string) (transport.AuthMethod, error) {
	ep, err := transport.NewEndpoint(url)
	if err != nil {
		return nil, fmt.Errorf("parse remote URL: %w", err)
	}
	switch ep.Protocol {
	case "http", "https":
		switch {
		case a.BearerToken != "":
			return &githttp.TokenAuth{Token: a.BearerToken}, nil
		case a.Username != "" || a.Password != "":
			return &githttp.BasicAuth{Username: a.Username, Password: a.Password}, nil
		}
		return nil, nil
	case "ssh":
		return a.sshMethod(ep)
	default:
		return nil, nil
	}
}

func (a Auth) sshMethod(ep *transport.Endpoint) (transport.AuthMethod, error) {
	key := a.SSHPrivateKey
	if len(key) == 0 && a.SSHPrivateKeyFile != "" {
		var err error
		if key, err = os.ReadFile(a.SSHPrivateKeyFile); err != nil {
			return nil, fmt.Errorf("read SSH private key: %w", err)
		}
	}
	if len(key) == 0 {
		return nil, errors.New("ssh remote: no private key configured")
	}
	kh := a.KnownHosts
	if len(kh) == 0 && a.KnownHostsFile != "" {
		var err error
		if kh, err = os.ReadFile(a.KnownHostsFile); err != nil {
			return nil, fmt.Errorf("read known_hosts: %w", err)
		}
	}
	if len(kh) == 0 {
		return nil, errors.New("ssh remote: no known_hosts configured (host keys are always verified)")
	}
	db, err := ParseKnownHosts(kh)
	if err != nil {
		return nil, err
	}
	user := ep.User
	if user == "" {
		user = a.SSHUser
	}
	if user == "" {
		user = "git"
	}
	pk, err := gitssh.NewPublicKeys(user, key, a.SSHPassphrase)
	if err != nil {
		return nil, fmt.Errorf("parse SSH private key: %w", err)
	}
	port := ep.Port
	if port == 0 {
		port = 22
	}
	hostport := net.JoinHostPort(ep.Host, fmt.Sprint(port))
	pk.HostKeyCallback = db.HostKeyCallback()
	pk.HostKeyAlgorithms = db.HostKeyAlgorithms(hostport)
	if len(pk.HostKeyAlgorithms) == 0 {
		return nil, fmt.Errorf("ssh remote: known_hosts has no key for %s", knownhosts.Normalize(hostport))
	}
	return pk, nil
}

// KnownHosts is a parsed known_hosts file. It supports plain and hashed
// (|1|salt|hash) host patterns, wildcards, negation and @revoked markers;
// @cert-authority lines are ignored.
type KnownHosts struct {
	entries []knownHost
	revoked []ssh.PublicKey
}

type knownHost struct {
	patterns []string
	key      ssh.PublicKey
}

// ParseKnownHosts parses known_hosts content.
func ParseKnownHosts(data []byte) (*KnownHosts, error) {
	db := &KnownHosts{}
	rest := data
	for len(bytes.TrimSpace(rest)) > 0 {
		marker, hosts, key, _, r, err := ssh.ParseKnownHosts(rest)
		if err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			return nil, fmt.Errorf("parse known_hosts: %w", err)
		}
		rest = r
		switch marker {
		case "revoked":
			db.revoked = append(db.revoked, key)
		case "cert-authority":
			// Host certificates are not supported; such lines grant nothing.
		default:
			db.entries = append(db.entries, knownHost{patterns: hosts, key: key})
		}
	}
	if len(db.entries) == 0 {
		return nil, errors.New("parse known_hosts: no host keys")
	}
	return db, nil
}

// keysFor returns the trusted keys for "host:port".
func (db *KnownHosts) keysFor(hostport string) []ssh.PublicKey {
	name := knownhosts.Normalize(hostport)
	var keys []ssh.PublicKey
	for _, e := range db.entries {
		if matchHostPatterns(e.patterns, name) {
			keys = append(keys, e.key)
		}
	}
	return keys
}

// HostKeyCallback checks the server's key against the known keys for the
// address dialed.
func (db *KnownHosts) HostKeyCallback() ssh.HostKeyCallback {
	return func(hostname string, _ net.Addr, key ssh.PublicKey) error {
		for _, r := range db.revoked {
			if bytes.Equal(r.Marshal(), key.Marshal()) {
				return fmt.Errorf("host key %s for %s is revoked", ssh.FingerprintSHA256(key), hostname)
			}
		}
		known := db.keysFor(hostname)
		if len(known) == 0 {
			return fmt.Errorf("host %s is not in known_hosts", knownhosts.Normalize(hostname))
		}
		for _, k := range known {
			if bytes.Equal(k.Marshal(), key.Marshal()) {
				return nil
			}
		}
		return fmt.Errorf("host key mismatch for %s: server offered %s %s, known_hosts does not list it",
			knownhosts.Normalize(hostname), key.Type(), ssh.FingerprintSHA256(key))
	}
}

// HostKeyAlgorithms returns the host key algorithms to negotiate with
// "host:port" so that the server presents a key type known_hosts lists.
func (db *KnownHosts) HostKeyAlgorithms(hostport string) []string {
	seen := map[string]bool{}
	var algos []string
	add := func(a ...string) {
		for _, s := range a {
			if !seen[s] {
				seen[s] = true
				algos = append(algos, s)
			}
		}
	}
	for _, k := range db.keysFor(hostport) {
		switch k.Type() {
		case ssh.KeyAlgoRSA:
			add(ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256, ssh.KeyAlgoRSA)
		default:
			add(k.Type())
		}
	}
	return algos
}

// matchHostPatterns applies OpenSSH's rules: a negated match excludes the
// host whatever else matches.
func matchHostPatterns(patterns []string, name string) bool {
	matched := false
	for _, p := range patterns {
		neg := strings.HasPrefix(p, "!")
		p = strings.TrimPrefix(p, "!")
		var ok bool
		if strings.HasPrefix(p, "|1|") {
			ok = matchHashed(p, name)
		} else {
			ok = wildcardMatch(p, name)
		}
		if ok && neg {
			return false
		}
		matched = matched || ok
	}
	return matched
}

func matchHashed(entry, name string) bool {
	parts := strings.Split(entry, "|")
	if len(parts) != 4 {
		return false
	}
	salt, err1 := base64.StdEncoding.DecodeString(parts[2])
	want, err2 := base64.StdEncoding.DecodeString(parts[3])
	if err1 != nil || err2 != nil {
		return false
	}
	mac := hmac.New(sha1.New, salt)
	mac.Write([]byte(name))
	return hmac.Equal(mac.Sum(nil), want)
}

// wildcardMatch matches OpenSSH host patterns: '*' is any run of
// characters, '?' any one character; everything else, including '[', is
// literal.
func wildcardMatch(pat, s string) bool {
	for len(pat) > 0 {
		switch pat[0] {
		case '*':
			for i := 0; i <= len(s); i++ {
				if wildcardMatch(pat[1:], s[i:]) {
					return true
				}
			}
			return false
		case '?':
			if len(s) == 0 {
				return false
			}
		default:
			if len(s) == 0 || pat[0] != s[0] {
				return false
			}
		}
		pat, s = pat[1:], s[1:]
	}
	return len(s) == 0
}
