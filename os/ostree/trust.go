package ostree

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"sigs.k8s.io/yaml"
)

// ErrUntrustedRemote means a remote is not one the node's operator-owned
// trust file lists, or not at the URL it lists.
var ErrUntrustedRemote = errors.New("OSTree remote not trusted")

// TrustedRemote is an OSTree remote the cluster operator lets nodes pull
// from, and the key its commits must be signed with.
type TrustedRemote struct {
	Name string `json:"name"`
	URL  string `json:"url"`
	// GPGKeyFile is the armored or binary public key (relative to the
	// trust file's directory) every pulled commit must be signed with.
	GPGKeyFile string `json:"gpgKeyFile"`
}

// Trust is the operator-owned list of OSTree remotes nodes accept, read
// from a file (a mounted ConfigMap), never from the fleet repo. GPG
// verification is always on for these remotes.
type Trust struct {
	Path    string // the file it was read from
	Remotes []TrustedRemote
}

type trustFile struct {
	Remotes []TrustedRemote `json:"remotes"`
}

// LoadTrust reads a trust file (YAML or JSON):
//
//	remotes:
//	  - name: containeros
//	    url: https://ostree.example.com/containeros
//	    gpgKeyFile: containeros.asc
//
// A missing file is an empty Trust: no remote is trusted.
func LoadTrust(path string) (*Trust, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return &Trust{Path: path}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("OSTree trust file: %w", err)
	}
	var f trustFile
	if err := yaml.UnmarshalStrict(data, &f); err != nil {
		return nil, fmt.Errorf("OSTree trust file %s: %w", path, err)
	}
	t := &Trust{Path: path}
	for i, r := range f.Remotes {
		switch {
		case r.Name == "" || strings.ContainsAny(r.Name, "/:\" \t\n[]"):
			return nil, fmt.Errorf("OSTree trust file %s: remotes[%d]: invalid name %q", path, i, r.Name)
		case !strings.HasPrefix(r.URL, "https://") && !strings.HasPrefix(r.URL, "http://") && !strings.HasPrefix(r.URL, "file:///"):
			return nil, fmt.Errorf("OSTree trust file %s: remote %s: url %q is not http(s):// or file:///", path, r.Name, r.URL)
		case r.GPGKeyFile == "":
			return nil, fmt.Errorf("OSTree trust file %s: remote %s: gpgKeyFile is required: commits are always verified", path, r.Name)
		case slices.ContainsFunc(t.Remotes, func(o TrustedRemote) bool { return o.Name == r.Name }):
			return nil, fmt.Errorf("OSTree trust file %s: remote %s listed twice", path, r.Name)
		}
		if !filepath.IsAbs(r.GPGKeyFile) {
			r.GPGKeyFile = filepath.Join(filepath.Dir(path), r.GPGKeyFile)
		}
		if _, err := os.Stat(r.GPGKeyFile); err != nil {
			return nil, fmt.Errorf("OSTree trust file %s: remote %s: key: %w", path, r.Name, err)
		}
		t.Remotes = append(t.Remotes, r)
	}
	return t, nil
}

// Check returns the trusted remote called name. url is what the fleet repo
// says (empty when it names only the remote); it must be the trusted URL.
// The error wraps ErrUntrustedRemote and says what the operator trusts.
func (t *Trust) Check(name, url string) (TrustedRemote, error) {
	var names []string
	for _, r := range t.Remotes {
		if r.Name != name {
			names = append(names, r.Name)
			continue
		}
		if url != "" && strings.TrimSuffix(url, "/") != strings.TrimSuffix(r.URL, "/") {
			return TrustedRemote{}, fmt.Errorf("%w: remote %s is at %s, but the operator's trust file %s trusts %s for it",
				ErrUntrustedRemote, name, url, t.Path, r.URL)
		}
		return r, nil
	}
	if len(names) == 0 {
		return TrustedRemote{}, fmt.Errorf("%w: remote %s: the operator's trust file %s lists no remote", ErrUntrustedRemote, name, t.Path)
	}
	return TrustedRemote{}, fmt.Errorf("%w: remote %s is not in the operator's trust file %s (trusted: %s)",
		ErrUntrustedRemote, name, t.Path, strings.Join(names, ", "))
}
