package gitutil

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/object"
)

// ErrUnsigned is returned for a commit without a signature.
var ErrUnsigned = errors.New("commit is not signed")

// Verifier checks commit signatures against trusted OpenPGP keys and SSH
// allowed signers.
type Verifier struct {
	keyring openpgp.EntityList
	signers AllowedSigners
}

// NewVerifier builds a Verifier from armored OpenPGP keyrings (public keys)
// and allowed_signers content; either may be empty but not both.
func NewVerifier(armoredKeyRings [][]byte, allowedSigners []byte) (*Verifier, error) {
	v := &Verifier{}
	for i, kr := range armoredKeyRings {
		list, err := openpgp.ReadArmoredKeyRing(bytes.NewReader(kr))
		if err != nil {
			return nil, fmt.Errorf("read OpenPGP keyring %d: %w", i+1, err)
		}
		v.keyring = append(v.keyring, list...)
	}
	if len(bytes.TrimSpace(allowedSigners)) > 0 {
		s, err := ParseAllowedSigners(allowedSigners)
		if err != nil {
			return nil, err
		}
		v.signers = s
	}
	if len(v.keyring) == 0 && len(v.signers) == 0 {
		return nil, errors.New("signature verification needs at least one trusted OpenPGP key or SSH allowed signer")
	}
	return v, nil
}

// LoadVerifier reads armored OpenPGP keyring files and an allowed_signers
// file ("" for none) and builds a Verifier.
func LoadVerifier(keyRingFiles []string, allowedSignersFile string) (*Verifier, error) {
	var rings [][]byte
	for _, f := range keyRingFiles {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("read OpenPGP keyring: %w", err)
		}
		rings = append(rings, b)
	}
	var signers []byte
	if allowedSignersFile != "" {
		b, err := os.ReadFile(allowedSignersFile)
		if err != nil {
			return nil, fmt.Errorf("read allowed_signers: %w", err)
		}
		signers = b
	}
	return NewVerifier(rings, signers)
}

// VerifyCommit checks that c carries exactly one valid signature by a
// trusted key and returns a description of the signer (OpenPGP identity and
// key id, or the SSH allowed signer's principals).
func (v *Verifier) VerifyCommit(c *object.Commit) (string, error) {
	sig := strings.TrimSpace(c.PGPSignature)
	if sig == "" {
		return "", ErrUnsigned
	}
	if strings.Count(sig, "-----BEGIN ") > 1 {
		return "", errors.New("commit has more than one signature")
	}
	encoded := &plumbing.MemoryObject{}
	if err := c.EncodeWithoutSignature(encoded); err != nil {
		return "", fmt.Errorf("encode commit: %w", err)
	}
	message := func() io.Reader {
		r, _ := encoded.Reader()
		return r
	}
	switch {
	case strings.HasPrefix(sig, "-----BEGIN PGP SIGNATURE-----"):
		if len(v.keyring) == 0 {
			return "", errors.New("commit has an OpenPGP signature but no OpenPGP key is trusted")
		}
		e, err := openpgp.CheckArmoredDetachedSignature(v.keyring, message(), strings.NewReader(sig), nil)
		if err != nil {
			return "", fmt.Errorf("OpenPGP signature: %w", err)
		}
		id := ""
		if pi := e.PrimaryIdentity(); pi != nil {
			id = pi.Name + " "
		}
		return id + "(OpenPGP " + e.PrimaryKey.KeyIdString() + ")", nil
	case strings.HasPrefix(sig, sshsigBegin):
		if len(v.signers) == 0 {
			return "", errors.New("commit has an SSH signature but no SSH allowed signer is configured")
		}
		p, err := v.signers.Verify([]byte(sig), message(), GitNamespace, c.Committer.When)
		if err != nil {
			return "", err
		}
		return p + " (SSH)", nil
	default:
		first, _, _ := strings.Cut(sig, "\n")
		return "", fmt.Errorf("unsupported signature format %q", first)
	}
}
