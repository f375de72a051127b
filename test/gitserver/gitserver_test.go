package gitserver

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
)

func roundTrip(t *testing.T, url string, env ...string) {
	t.Helper()
	a := NewClone(t, url, "main", env...)
	sha := a.CommitFiles("first", map[string]string{"a.txt": "hello\n"})
	a.Push()
	b := NewClone(t, url, "main", env...)
	if got := b.Head(); got != sha {
		t.Fatalf("second clone at %s, want %s", got, sha)
	}
	out, err := RunGit(context.Background(), "", env, "ls-remote", url, "refs/heads/main")
	if err != nil || !strings.HasPrefix(out, sha) {
		t.Fatalf("ls-remote = %q, %v; want %s", out, err, sha)
	}
}

func TestDaemon(t *testing.T) {
	root := t.TempDir()
	InitBare(t, filepath.Join(root, "fleet.git"), "main")
	d := StartDaemon(t, root)
	roundTrip(t, d.URL("fleet.git"))

	d.Stop()
	if _, err := RunGit(context.Background(), "", nil, "ls-remote", d.URL("fleet.git")); err == nil {
		t.Fatal("ls-remote succeeded against a stopped daemon")
	}
	d.Start()
	Git(t, "", nil, "ls-remote", d.URL("fleet.git"))
}

func TestHTTP(t *testing.T) {
	root := t.TempDir()
	InitBare(t, filepath.Join(root, "fleet.git"), "main")
	t.Run("anonymous", func(t *testing.T) {
		h := StartHTTP(t, root, HTTPOptions{})
		roundTrip(t, h.URL("fleet.git"))
	})
	t.Run("basic", func(t *testing.T) {
		h := StartHTTP(t, root, HTTPOptions{Username: "herd", Password: "s3cret"})
		roundTrip(t, h.CLIURL("fleet.git"))
		if _, err := RunGit(context.Background(), "", nil, "ls-remote", h.URL("fleet.git")); err == nil {
			t.Fatal("ls-remote without credentials succeeded")
		}
	})
	t.Run("bearer", func(t *testing.T) {
		h := StartHTTP(t, root, HTTPOptions{BearerToken: "tok3n"})
		Git(t, "", h.CLIEnv(), "ls-remote", h.URL("fleet.git"))
		if _, err := RunGit(context.Background(), "", nil, "ls-remote", h.URL("fleet.git")); err == nil {
			t.Fatal("ls-remote without token succeeded")
		}
	})
}

func TestSSHD(t *testing.T) {
	root := t.TempDir()
	InitBare(t, filepath.Join(root, "fleet.git"), "main")
	s := StartSSHD(t, root)
	roundTrip(t, s.URL("fleet.git"), s.CLIEnv()...)

	// A client that expects another host key must refuse to connect.
	other := NewSSHKey(t, "impostor")
	kh := filepath.Join(t.TempDir(), "known_hosts")
	writeFile(t, kh, strings.Replace(s.KnownHostsLine(), s.HostKey.AuthorizedKey(), other.AuthorizedKey(), 1), 0o644)
	env := []string{"GIT_SSH_COMMAND=ssh -F /dev/null -i " + s.ClientKey.PrivatePath +
		" -o IdentitiesOnly=yes -o UserKnownHostsFile=" + kh + " -o StrictHostKeyChecking=yes -o BatchMode=yes"}
	if _, err := RunGit(context.Background(), "", env, "ls-remote", s.URL("fleet.git")); err == nil {
		t.Fatal("ls-remote with a wrong known host key succeeded")
	}
	// Commands other than git's are refused by the forced command.
	if _, err := RunGit(context.Background(), "", s.CLIEnv(), "ls-remote", s.URL("../etc.git")); err == nil {
		t.Fatal("path escaping the root was served")
	}
}

func TestSigning(t *testing.T) {
	root := t.TempDir()
	InitBare(t, filepath.Join(root, "fleet.git"), "main")
	c := NewClone(t, filepath.Join(root, "fleet.git"), "main")

	g := NewGPGKey(t, "Fleet Admin", "admin@example.com")
	c.SignWithGPG(g)
	c.CommitFiles("gpg signed", map[string]string{"a": "1"})
	if out := c.Git("log", "-1", "--format=%G?"); out != "G" {
		t.Fatalf("gpg signature status %q, want G", out)
	}

	k := NewSSHKey(t, "signer")
	allowed := filepath.Join(t.TempDir(), "allowed_signers")
	writeFile(t, allowed, k.AllowedSignersLine("admin@example.com"), 0o644)
	c.SignWithSSH(k)
	c.Git("config", "gpg.ssh.allowedSignersFile", allowed)
	c.CommitFiles("ssh signed", map[string]string{"b": "2"})
	if out := c.Git("log", "-1", "--format=%G?"); out != "G" {
		t.Fatalf("ssh signature status %q, want G", out)
	}
	c.NoSigning()
	c.CommitFiles("unsigned", map[string]string{"c": "3"})
	if out := c.Git("log", "-1", "--format=%G?"); out != "N" {
		t.Fatalf("unsigned status %q, want N", out)
	}
}
