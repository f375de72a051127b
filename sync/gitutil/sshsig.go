package gitutil

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"errors"
	"fmt"
	"hash"
	"io"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"
)

// SSH signatures follow OpenSSH's PROTOCOL.sshsig, as made by
// `ssh-keygen -Y sign` and git with gpg.format=ssh.
const (
	sshsigMagic     = "SSHSIG"
	sshsigVersion   = 1
	sshsigBegin     = "-----BEGIN SSH SIGNATURE-----"
	sshsigEnd       = "-----END SSH SIGNATURE-----"
	sshsigLineWidth = 70
)

// GitNamespace is the SSH signature namespace git signs commits in.
const GitNamespace = "git"

type sshsigBlob struct {
	Version   uint32
	PublicKey []byte
	Namespace string
	Reserved  string
	HashAlg   string
	Signature []byte
}

type sshsigSignedData struct {
	Namespace string
	Reserved  string
	HashAlg   string
	Hash      []byte
}

func sshsigHash(alg string) (hash.Hash, error) {
	switch alg {
	case "sha256":
		return sha256.New(), nil
	case "sha512":
		return sha512.New(), nil
	}
	return nil, fmt.Errorf("unsupported SSH signature hash %q", alg)
}

func sshsigMessage(namespace, hashAlg string, message io.Reader) ([]byte, error) {
	h, err := sshsigHash(hashAlg)
	if err != nil {
		return nil, err
	}
	if _, err := io.Copy(h, message); err != nil {
		return nil, fmt.Errorf("hash message: %w", err)
	}
	return append([]byte(sshsigMagic), ssh.Marshal(sshsigSignedData{
		Namespace: namespace,
		HashAlg:   hashAlg,
		Hash:      h.Sum(nil),
	})...), nil
}

// SSHSign signs message in namespace with signer and returns the armored
// signature ("-----BEGIN SSH SIGNATURE-----"), hashing with SHA-512 and using
// rsa-sha2-512 for RSA keys, as ssh-keygen does.
func SSHSign(signer ssh.Signer, namespace string, message io.Reader) ([]byte, error) {
	data, err := sshsigMessage(namespace, "sha512", message)
	if err != nil {
		return nil, err
	}
	var sig *ssh.Signature
	if as, ok := signer.(ssh.AlgorithmSigner); ok && signer.PublicKey().Type() == ssh.KeyAlgoRSA {
		sig, err = as.SignWithAlgorithm(rand.Reader, data, ssh.KeyAlgoRSASHA512)
	} else {
		sig, err = signer.Sign(rand.Reader, data)
	}
	if err != nil {
		return nil, fmt.Errorf("ssh sign: %w", err)
	}
	blob := append([]byte(sshsigMagic), ssh.Marshal(sshsigBlob{
		Version:   sshsigVersion,
		PublicKey: signer.PublicKey().Marshal(),
		Namespace: namespace,
		HashAlg:   "sha512",
		Signature: ssh.Marshal(sig),
	})...)
	enc := base64.StdEncoding.EncodeToString(blob)
	var b strings.Builder
	b.WriteString(sshsigBegin + "\n")
	for len(enc) > sshsigLineWidth {
		b.WriteString(enc[:sshsigLineWidth] + "\n")
		enc = enc[sshsigLineWidth:]
	}
	b.WriteString(enc + "\n" + sshsigEnd + "\n")
	return []byte(b.String()), nil
}

// parseSSHSignature decodes an armored SSH signature.
func parseSSHSignature(armored []byte) (*sshsigBlob, ssh.PublicKey, *ssh.Signature, error) {
	s := strings.TrimSpace(string(armored))
	if !strings.HasPrefix(s, sshsigBegin) || !strings.HasSuffix(s, sshsigEnd) {
		return nil, nil, nil, errors.New("not an armored SSH signature")
	}
	body := strings.Join(strings.Fields(s[len(sshsigBegin):len(s)-len(sshsigEnd)]), "")
	raw, err := base64.StdEncoding.DecodeString(body)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("decode SSH signature: %w", err)
	}
	if !bytes.HasPrefix(raw, []byte(sshsigMagic)) {
		return nil, nil, nil, errors.New("SSH signature lacks the SSHSIG preamble")
	}
	var blob sshsigBlob
	if err := ssh.Unmarshal(raw[len(sshsigMagic):], &blob); err != nil {
		return nil, nil, nil, fmt.Errorf("parse SSH signature: %w", err)
	}
	if blob.Version != sshsigVersion {
		return nil, nil, nil, fmt.Errorf("unsupported SSH signature version %d", blob.Version)
	}
	pub, err := ssh.ParsePublicKey(blob.PublicKey)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("parse SSH signature key: %w", err)
	}
	var sig ssh.Signature
	if err := ssh.Unmarshal(blob.Signature, &sig); err != nil {
		return nil, nil, nil, fmt.Errorf("parse SSH signature value: %w", err)
	}
	return &blob, pub, &sig, nil
}

// AllowedSigner is one line of an allowed_signers file (see ssh-keygen(1),
// "ALLOWED SIGNERS").
type AllowedSigner struct {
	// Principals are the principal patterns of the line.
	Principals []string
	// Key is the trusted key (a CA key when CertAuthority is set).
	Key ssh.PublicKey
	// CertAuthority marks Key as a CA: certificates it signed are trusted
	// for the principals.
	CertAuthority bool
	// Namespaces, when not empty, limits the namespaces the key may sign in.
	Namespaces []string
	// ValidAfter and ValidBefore bound the signing time, when set.
	ValidAfter, ValidBefore time.Time
}

// AllowedSigners is a parsed allowed_signers file.
type AllowedSigners []AllowedSigner

// ParseAllowedSigners parses allowed_signers content: one
// "principals [options] keytype base64-key [comment]" per line, '#'
// comments and blank lines ignored. Options understood: cert-authority,
// namespaces="...", valid-after="...", valid-before="...".
func ParseAllowedSigners(data []byte) (AllowedSigners, error) {
	var out AllowedSigners
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	n := 0
	for sc.Scan() {
		n++
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		principals, rest := nextField(line)
		key, _, options, _, err := ssh.ParseAuthorizedKey([]byte(rest))
		if err != nil {
			return nil, fmt.Errorf("allowed_signers line %d: %w", n, err)
		}
		as := AllowedSigner{Key: key}
		for _, p := range strings.Split(strings.Trim(principals, `"`), ",") {
			if p = strings.TrimSpace(p); p != "" {
				as.Principals = append(as.Principals, p)
			}
		}
		for _, o := range options {
			name, value, _ := strings.Cut(o, "=")
			value = strings.Trim(value, `"`)
			switch strings.ToLower(name) {
			case "cert-authority":
				as.CertAuthority = true
			case "namespaces":
				as.Namespaces = strings.Split(value, ",")
			case "valid-after":
				if as.ValidAfter, err = parseSSHTime(value); err != nil {
					return nil, fmt.Errorf("allowed_signers line %d: valid-after: %w", n, err)
				}
			case "valid-before":
				if as.ValidBefore, err = parseSSHTime(value); err != nil {
					return nil, fmt.Errorf("allowed_signers line %d: valid-before: %w", n, err)
				}
			default:
				return nil, fmt.Errorf("allowed_signers line %d: unknown option %q", n, name)
			}
		}
		out = append(out, as)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read allowed_signers: %w", err)
	}
	return out, nil
}

// nextField splits off the first whitespace-separated field, honouring
// double quotes.
func nextField(s string) (field, rest string) {
	inQuote := false
	for i, r := range s {
		switch {
		case r == '"':
			inQuote = !inQuote
		case (r == ' ' || r == '\t') && !inQuote:
			return s[:i], strings.TrimSpace(s[i:])
		}
	}
	return s, ""
}

func parseSSHTime(v string) (time.Time, error) {
	loc := time.Local
	if strings.HasSuffix(v, "Z") || strings.HasSuffix(v, "z") {
		v, loc = v[:len(v)-1], time.UTC
	}
	for _, layout := range []string{"20060102150405", "200601021504", "20060102"} {
		if len(v) == len(layout) {
			return time.ParseInLocation(layout, v, loc)
		}
	}
	return time.Time{}, fmt.Errorf("bad time %q", v)
}

// Verify checks an armored SSH signature over message in namespace and
// returns the principals of the allowed signer that made it. at is the
// signing time checked against valid-after/valid-before and certificate
// validity (zero: now).
func (a AllowedSigners) Verify(armored []byte, message io.Reader, namespace string, at time.Time) (string, error) {
	blob, pub, sig, err := parseSSHSignature(armored)
	if err != nil {
		return "", err
	}
	if blob.Namespace != namespace {
		return "", fmt.Errorf("SSH signature is for namespace %q, want %q", blob.Namespace, namespace)
	}
	if pub.Type() == ssh.KeyAlgoRSA && sig.Format == ssh.KeyAlgoRSA {
		return "", errors.New("SSH signature uses SHA-1 RSA (ssh-rsa), which sshsig forbids")
	}
	data, err := sshsigMessage(namespace, blob.HashAlg, message)
	if err != nil {
		return "", err
	}
	if err := pub.Verify(data, sig); err != nil {
		return "", fmt.Errorf("bad SSH signature by %s: %w", ssh.FingerprintSHA256(pub), err)
	}
	if at.IsZero() {
		at = time.Now()
	}
	cert, _ := pub.(*ssh.Certificate)
	for _, as := range a {
		if len(as.Namespaces) > 0 && !anyPatternMatches(as.Namespaces, namespace) {
			continue
		}
		if !as.ValidAfter.IsZero() && at.Before(as.ValidAfter) {
			continue
		}
		if !as.ValidBefore.IsZero() && !at.Before(as.ValidBefore) {
			continue
		}
		switch {
		case as.CertAuthority && cert != nil:
			if !bytes.Equal(cert.SignatureKey.Marshal(), as.Key.Marshal()) {
				continue
			}
			if err := checkSigningCert(cert, as.Principals, at); err != nil {
				return "", err
			}
			return strings.Join(as.Principals, ","), nil
		case !as.CertAuthority && cert == nil:
			if bytes.Equal(as.Key.Marshal(), pub.Marshal()) {
				return strings.Join(as.Principals, ","), nil
			}
		}
	}
	return "", fmt.Errorf("SSH key %s %s is not an allowed signer for namespace %q", pub.Type(), ssh.FingerprintSHA256(pub), namespace)
}

func checkSigningCert(cert *ssh.Certificate, principals []string, at time.Time) error {
	if cert.CertType != ssh.UserCert {
		return errors.New("SSH signing certificate is not a user certificate")
	}
	checker := &ssh.CertChecker{Clock: func() time.Time { return at }}
	var last error = fmt.Errorf("SSH signing certificate %q names no allowed principal", cert.KeyId)
	for _, vp := range cert.ValidPrincipals {
		if !anyPatternMatches(principals, vp) {
			continue
		}
		// CheckCert verifies the CA's signature, the validity period at
		// the signing time and the principal.
		if err := checker.CheckCert(vp, cert); err != nil {
			last = fmt.Errorf("SSH signing certificate %q: %w", cert.KeyId, err)
			continue
		}
		return nil
	}
	return last
}

func anyPatternMatches(patterns []string, s string) bool {
	return matchHostPatterns(patterns, s)
}
