package gitutil

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

func keygen(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("ssh-keygen", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("ssh-keygen %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func newKey(t *testing.T, dir, name, typ string) (path string, pub string) {
	t.Helper()
	path = filepath.Join(dir, name)
	args := []string{"-q", "-t", typ, "-N", "", "-C", name, "-f", path}
	if typ == "rsa" {
		args = append(args, "-b", "2048")
	}
	keygen(t, args...)
	b, err := os.ReadFile(path + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b))
	return path, f[0] + " " + f[1]
}

func TestSSHSignatureInterop(t *testing.T) {
	if _, err := exec.LookPath("ssh-keygen"); err != nil {
		t.Fatalf("ssh-keygen is required (apt-get install openssh-client): %v", err)
	}
	msg := []byte("tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\nauthor A <a@example.com> 1700000000 +0000\n\nhello\n")
	for _, typ := range []string{"ed25519", "rsa", "ecdsa"} {
		t.Run(typ, func(t *testing.T) {
			dir := t.TempDir()
			keyPath, pub := newKey(t, dir, "id", typ)
			allowed := filepath.Join(dir, "allowed_signers")
			line := `admin@example.com namespaces="git" ` + pub + "\n"
			if err := os.WriteFile(allowed, []byte(line), 0o644); err != nil {
				t.Fatal(err)
			}
			signers, err := ParseAllowedSigners([]byte(line))
			if err != nil {
				t.Fatal(err)
			}
			msgFile := filepath.Join(dir, "msg")
			if err := os.WriteFile(msgFile, msg, 0o644); err != nil {
				t.Fatal(err)
			}

			// Ours -> ssh-keygen -Y verify.
			pem, _ := os.ReadFile(keyPath)
			signer, err := NewSSHSigner(pem, "")
			if err != nil {
				t.Fatal(err)
			}
			sig, err := signer.Sign(bytes.NewReader(msg))
			if err != nil {
				t.Fatal(err)
			}
			sigFile := filepath.Join(dir, "ours.sig")
			if err := os.WriteFile(sigFile, sig, 0o644); err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command("ssh-keygen", "-Y", "verify", "-f", allowed, "-I", "admin@example.com", "-n", "git", "-s", sigFile)
			cmd.Stdin = bytes.NewReader(msg)
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("ssh-keygen rejects our signature: %v: %s\n%s", err, out, sig)
			}

			// ssh-keygen -Y sign -> ours.
			keygen(t, "-Y", "sign", "-f", keyPath, "-n", "git", msgFile)
			theirs, err := os.ReadFile(msgFile + ".sig")
			if err != nil {
				t.Fatal(err)
			}
			who, err := signers.Verify(theirs, bytes.NewReader(msg), GitNamespace, time.Time{})
			if err != nil || who != "admin@example.com" {
				t.Fatalf("verify ssh-keygen's signature: %q, %v", who, err)
			}
			if _, err := signers.Verify(theirs, bytes.NewReader(append(msg, 'x')), GitNamespace, time.Time{}); err == nil {
				t.Fatal("a modified message verified")
			}
			if _, err := signers.Verify(theirs, bytes.NewReader(msg), "file", time.Time{}); err == nil {
				t.Fatal("a signature for namespace git verified as namespace file")
			}
			_, otherPub := newKey(t, dir, "other", "ed25519")
			others, _ := ParseAllowedSigners([]byte("admin@example.com " + otherPub + "\n"))
			if _, err := others.Verify(theirs, bytes.NewReader(msg), GitNamespace, time.Time{}); err == nil || !strings.Contains(err.Error(), "not an allowed signer") {
				t.Fatalf("untrusted key: %v", err)
			}
		})
	}
}

func TestAllowedSignersOptions(t *testing.T) {
	dir := t.TempDir()
	keyPath, pub := newKey(t, dir, "id", "ed25519")
	msg := []byte("payload\n")
	pem, _ := os.ReadFile(keyPath)
	signer, _ := NewSSHSigner(pem, "")
	sig, err := signer.Sign(bytes.NewReader(msg))
	if err != nil {
		t.Fatal(err)
	}
	at := time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		line string
		ok   bool
	}{
		{`"a@example.com,b@example.com" ` + pub + " comment", true},
		{`a@example.com namespaces="file,git" ` + pub, true},
		{`a@example.com namespaces="file" ` + pub, false},
		{`a@example.com valid-after="20260101",valid-before="20270101" ` + pub, true},
		{`a@example.com valid-before="20260101Z" ` + pub, false},
		{`a@example.com valid-after="202607010000" ` + pub, false},
		{"# comment only\n\n", false},
	} {
		s, err := ParseAllowedSigners([]byte(tc.line))
		if err != nil {
			t.Fatalf("%q: %v", tc.line, err)
		}
		_, err = s.Verify(sig, bytes.NewReader(msg), GitNamespace, at)
		if (err == nil) != tc.ok {
			t.Errorf("%q: verify error %v, want ok=%v", tc.line, err, tc.ok)
		}
	}
	if _, err := ParseAllowedSigners([]byte(`a@example.com bogus-option ` + pub)); err == nil {
		t.Error("unknown option accepted")
	}
}

func TestSSHCertificateSigner(t *testing.T) {
	dir := t.TempDir()
	caPath, caPub := newKey(t, dir, "ca", "ed25519")
	userPath, _ := newKey(t, dir, "user", "ed25519")
	keygen(t, "-q", "-s", caPath, "-I", "user-cert", "-n", "admin@example.com", "-V", "-1h:+1h", userPath+".pub")
	// Sign with the certificate as the public half (ssh-keygen -Y sign
	// only does that through an agent).
	certText, _ := os.ReadFile(userPath + "-cert.pub")
	certKey, _, _, _, err := ssh.ParseAuthorizedKey(certText)
	if err != nil {
		t.Fatal(err)
	}
	pem, _ := os.ReadFile(userPath)
	plain, err := ssh.ParsePrivateKey(pem)
	if err != nil {
		t.Fatal(err)
	}
	certSigner, err := ssh.NewCertSigner(certKey.(*ssh.Certificate), plain)
	if err != nil {
		t.Fatal(err)
	}
	sig, err := (&SSHSigner{Signer: certSigner}).Sign(strings.NewReader("payload\n"))
	if err != nil {
		t.Fatal(err)
	}
	// OpenSSH accepts it...
	allowed := filepath.Join(dir, "allowed_signers")
	if err := os.WriteFile(allowed, []byte(`*@example.com cert-authority `+caPub+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	sigFile := filepath.Join(dir, "cert.sig")
	if err := os.WriteFile(sigFile, sig, 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("ssh-keygen", "-Y", "verify", "-f", allowed, "-I", "admin@example.com", "-n", "git", "-s", sigFile)
	cmd.Stdin = strings.NewReader("payload\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen rejects the certificate signature: %v: %s", err, out)
	}
	// ...and so do we.
	ok, _ := ParseAllowedSigners([]byte(`*@example.com cert-authority ` + caPub))
	if who, err := ok.Verify(sig, strings.NewReader("payload\n"), GitNamespace, time.Now()); err != nil {
		t.Fatalf("certificate signature: %q %v", who, err)
	}
	wrong, _ := ParseAllowedSigners([]byte(`ops@example.com cert-authority ` + caPub))
	if _, err := wrong.Verify(sig, strings.NewReader("payload\n"), GitNamespace, time.Now()); err == nil {
		t.Fatal("certificate for another principal accepted")
	}
	if _, err := ok.Verify(sig, strings.NewReader("payload\n"), GitNamespace, time.Now().Add(3*time.Hour)); err == nil {
		t.Fatal("expired certificate accepted")
	}
}

func TestKnownHosts(t *testing.T) {
	dir := t.TempDir()
	_, pub := newKey(t, dir, "host", "ed25519")
	_, other := newKey(t, dir, "other", "ed25519")
	key, _, _, _, err := ssh.ParseAuthorizedKey([]byte(pub))
	if err != nil {
		t.Fatal(err)
	}
	// A hashed entry made by ssh-keygen -H.
	khFile := filepath.Join(dir, "known_hosts")
	if err := os.WriteFile(khFile, []byte("[127.0.0.1]:2222 "+pub+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	keygen(t, "-H", "-f", khFile)
	hashed, _ := os.ReadFile(khFile)
	if !strings.HasPrefix(string(hashed), "|1|") {
		t.Fatalf("not hashed: %s", hashed)
	}
	for _, tc := range []struct {
		name, data, addr string
		ok               bool
	}{
		{"plain", "[127.0.0.1]:2222 " + pub, "127.0.0.1:2222", true},
		{"default port", "git.example.com " + pub, "git.example.com:22", true},
		{"other port", "[127.0.0.1]:2222 " + pub, "127.0.0.1:2223", false},
		{"hashed", string(hashed), "127.0.0.1:2222", true},
		{"wildcard", "*.example.com " + pub, "git.example.com:22", true},
		{"negated", "*.example.com,!git.example.com " + pub, "git.example.com:22", false},
		{"wrong key", "[127.0.0.1]:2222 " + other, "127.0.0.1:2222", false},
		{"revoked", "[127.0.0.1]:2222 " + pub + "\n@revoked * " + pub, "127.0.0.1:2222", false},
	} {
		db, err := ParseKnownHosts([]byte(tc.data))
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		err = db.HostKeyCallback()(tc.addr, nil, key)
		if (err == nil) != tc.ok {
			t.Errorf("%s: %v, want ok=%v", tc.name, err, tc.ok)
		}
	}
	db, _ := ParseKnownHosts([]byte("[127.0.0.1]:2222 " + pub))
	if algos := db.HostKeyAlgorithms("127.0.0.1:2222"); len(algos) != 1 || algos[0] != ssh.KeyAlgoED25519 {
		t.Errorf("algorithms %v", algos)
	}
}

func TestAuthMethod(t *testing.T) {
	if m, err := (Auth{BearerToken: "t"}).Method("https://example.com/r.git"); err != nil || m == nil || m.Name() != "http-token-auth" {
		t.Fatalf("bearer: %v %v", m, err)
	}
	if m, err := (Auth{Username: "u", Password: "p"}).Method("http://example.com/r.git"); err != nil || m.Name() != "http-basic-auth" {
		t.Fatalf("basic: %v %v", m, err)
	}
	if m, err := (Auth{}).Method("git://example.com/r.git"); err != nil || m != nil {
		t.Fatalf("git: %v %v", m, err)
	}
	dir := t.TempDir()
	keyPath, _ := newKey(t, dir, "id", "ed25519")
	if _, err := (Auth{SSHPrivateKeyFile: keyPath}).Method("ssh://git@example.com/r.git"); err == nil || !strings.Contains(err.Error(), "known_hosts") {
		t.Fatalf("ssh without known_hosts: %v", err)
	}
}
