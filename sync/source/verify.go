package source

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"herd.dev/herd/sync/gitutil"
)

// errNoTrustedKey is returned by Verification.load when verification is
// on and no key is trusted: every new commit is then rejected.
var errNoTrustedKey = errors.New("no trusted key")

// keys lists the key files: those given, and those in Dir now. In Dir,
// *.asc and *.gpg are OpenPGP keyrings and allowed_signers is an ssh-keygen
// allowed_signers file (used unless AllowedSigners names one).
func (v *Verification) keys() (rings []string, allowed string, err error) {
	rings, allowed = append([]string(nil), v.PGPKeyRings...), v.AllowedSigners
	if v.Dir == "" {
		return rings, allowed, nil
	}
	entries, err := os.ReadDir(v.Dir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, "", fmt.Errorf("trusted keys: %w", err)
	}
	for _, e := range entries {
		p := filepath.Join(v.Dir, e.Name())
		switch {
		case e.Name() == "allowed_signers" && allowed == "":
			allowed = p
		case strings.HasSuffix(e.Name(), ".asc") || strings.HasSuffix(e.Name(), ".gpg"):
			rings = append(rings, p)
		}
	}
	return rings, allowed, nil
}

// Trusted reports whether any key is trusted now.
func (v *Verification) Trusted() (bool, error) {
	rings, allowed, err := v.keys()
	return len(rings) > 0 || allowed != "", err
}

// load reads the trusted keys into a verifier.
func (v *Verification) load() (*gitutil.Verifier, error) {
	rings, allowed, err := v.keys()
	if err != nil {
		return nil, err
	}
	if len(rings) == 0 && allowed == "" {
		where := "none was given"
		if v.Dir != "" {
			where = v.Dir + " holds no *.asc, *.gpg or allowed_signers file"
		}
		return nil, fmt.Errorf("%w: %s; signature verification is on, so no new commit is accepted until a key that signs them is trusted", errNoTrustedKey, where)
	}
	return gitutil.LoadVerifier(rings, allowed)
}
