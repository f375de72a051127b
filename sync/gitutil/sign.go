package gitutil

import (
	"bytes"
	"errors"
	"fmt"
	"io"

	"github.com/ProtonMail/go-crypto/openpgp"
	"golang.org/x/crypto/ssh"
)

// Signer signs the encoded form of a git object (without its signature) and
// returns the armored signature for the object's gpgsig header. It has the
// shape of go-git's git.Signer, so either can be used where the other is
// expected.
type Signer interface {
	Sign(message io.Reader) ([]byte, error)
}

// PGPSigner makes armored OpenPGP detached signatures, like `gpg
// --detach-sign --armor` as git calls it.
type PGPSigner struct {
	Entity *openpgp.Entity
}

// Sign implements Signer.
func (s *PGPSigner) Sign(message io.Reader) ([]byte, error) {
	var b bytes.Buffer
	if err := openpgp.ArmoredDetachSign(&b, s.Entity, message, nil); err != nil {
		return nil, fmt.Errorf("openpgp sign: %w", err)
	}
	return b.Bytes(), nil
}

// NewPGPSigner reads an armored private key (the first key with a private
// part in the armored keyring), decrypting it with passphrase when needed.
func NewPGPSigner(armoredKey []byte, passphrase string) (*PGPSigner, error) {
	list, err := openpgp.ReadArmoredKeyRing(bytes.NewReader(armoredKey))
	if err != nil {
		return nil, fmt.Errorf("read OpenPGP private key: %w", err)
	}
	for _, e := range list {
		if e.PrivateKey == nil {
			continue
		}
		if e.PrivateKey.Encrypted {
			if passphrase == "" {
				return nil, errors.New("OpenPGP private key is encrypted and no passphrase was given")
			}
			if err := e.DecryptPrivateKeys([]byte(passphrase)); err != nil {
				return nil, fmt.Errorf("decrypt OpenPGP private key: %w", err)
			}
		}
		return &PGPSigner{Entity: e}, nil
	}
	return nil, errors.New("read OpenPGP private key: no private key in the keyring")
}

// SSHSigner makes SSH signatures in git's namespace, like git with
// gpg.format=ssh.
type SSHSigner struct {
	Signer ssh.Signer
}

// Sign implements Signer.
func (s *SSHSigner) Sign(message io.Reader) ([]byte, error) {
	return SSHSign(s.Signer, GitNamespace, message)
}

// NewSSHSigner parses a private key (OpenSSH or PEM format), decrypting it
// with passphrase when needed.
func NewSSHSigner(privateKey []byte, passphrase string) (*SSHSigner, error) {
	var (
		signer ssh.Signer
		err    error
	)
	if passphrase != "" {
		signer, err = ssh.ParsePrivateKeyWithPassphrase(privateKey, []byte(passphrase))
	} else {
		signer, err = ssh.ParsePrivateKey(privateKey)
	}
	if err != nil {
		return nil, fmt.Errorf("parse SSH signing key: %w", err)
	}
	return &SSHSigner{Signer: signer}, nil
}
