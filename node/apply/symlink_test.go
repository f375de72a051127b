package apply_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"herd.dev/herd/node/apply"
	"herd.dev/herd/schema"
)

// plant replaces the path p (relative to root) with a symbolic link to target.
func plant(t *testing.T, root, p, target string) {
	t.Helper()
	full := filepath.Join(root, p)
	if err := os.RemoveAll(full); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, full); err != nil {
		t.Fatal(err)
	}
}

func mustWrite(t *testing.T, p, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// A workload that can write a managed directory (a hostPath mount of
// /etc/herd/files) plants links inside the root: the agent follows none of
// them, writes nothing through them, copies nothing they point at, and says
// which path holds the link.
func TestHostileSymlinks(t *testing.T) {
	const unit = "etc/systemd/system/evil.service"
	for _, tc := range []struct {
		name   string
		plant  func(t *testing.T, root string)
		target string // a file the link leads to, which must stay as it was
	}{{
		// The managed directory itself is a link into etc/systemd/system:
		// with os.Root (links inside the root allowed) the file from Git
		// became a systemd unit.
		name:   "managed directory redirected inside the root",
		plant:  func(t *testing.T, root string) { plant(t, root, "etc/herd/files", "../systemd/system") },
		target: unit,
	}, {
		name:   "managed directory redirected by an absolute link",
		plant:  func(t *testing.T, root string) { plant(t, root, "etc/herd", "/etc") },
		target: unit,
	}, {
		// The file is a link to a secret: a backup copy would have copied
		// the secret into the agent's state, and Undo written it back.
		name:   "managed file linked to a secret",
		plant:  func(t *testing.T, root string) { plant(t, root, "etc/herd/files/app.conf", "../../shadow") },
		target: "etc/shadow",
	}, {
		name:   "a parent of the directory",
		plant:  func(t *testing.T, root string) { plant(t, root, "etc", "elsewhere") },
		target: "elsewhere/herd/files/app.conf",
	}} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFiles(t)
			mustWrite(t, filepath.Join(f.Root, "etc/shadow"), "root:secret\n")
			mustWrite(t, filepath.Join(f.Root, "elsewhere/herd/files/app.conf"), "theirs\n")
			mustWrite(t, filepath.Join(f.Root, unit), "[Unit]\n")
			tc.plant(t, f.Root)
			before, _ := os.ReadFile(filepath.Join(f.Root, tc.target))

			_, err := f.Apply("h1", []schema.RenderedFile{file("/etc/herd/files/app.conf", "[Service]\nExecStart=/bin/sh\n", 0o644, schema.DisruptionNone)})
			var se *apply.SymlinkError
			if !errors.As(err, &se) {
				t.Fatalf("Apply = %v, want a SymlinkError", err)
			}
			if !strings.Contains(err.Error(), "symbolic link") || !strings.HasPrefix(se.Path, "/etc") {
				t.Errorf("message %q (path %q) does not say which link", err, se.Path)
			}
			after, _ := os.ReadFile(filepath.Join(f.Root, tc.target))
			if string(after) != string(before) {
				t.Errorf("%s changed through the link: %q -> %q", tc.target, before, after)
			}
			if _, err := os.Stat(filepath.Join(f.Root, "etc/systemd/system/app.conf")); err == nil {
				t.Errorf("the file from Git landed in etc/systemd/system")
			}
			copies, _ := os.ReadDir(filepath.Join(f.StateDir, "previous", "files"))
			for _, c := range copies {
				b, _ := os.ReadFile(filepath.Join(f.StateDir, "previous", "files", c.Name()))
				if strings.Contains(string(b), "secret") {
					t.Errorf("a backup copy holds the secret the link points at")
				}
			}
		})
	}
}

// A link planted after an Apply stops Undo from writing through it.
func TestUndoRefusesSymlink(t *testing.T) {
	f := newFiles(t)
	mustWrite(t, filepath.Join(f.Root, "etc/herd/files/app.conf"), "v0\n")
	if _, err := f.Apply("h1", []schema.RenderedFile{file("/etc/herd/files/app.conf", "v1\n", 0o644, schema.DisruptionNone)}); err != nil {
		t.Fatal(err)
	}
	mustWrite(t, filepath.Join(f.Root, "etc/sudoers"), "root ALL=(ALL) ALL\n")
	plant(t, f.Root, "etc/herd/files", "..")
	if _, err := f.Undo(); !errors.As(err, new(*apply.SymlinkError)) {
		t.Fatalf("Undo = %v, want a SymlinkError", err)
	}
	if b, _ := os.ReadFile(filepath.Join(f.Root, "etc/sudoers")); string(b) != "root ALL=(ALL) ALL\n" {
		t.Errorf("etc/sudoers = %q", b)
	}
	if _, err := os.Stat(filepath.Join(f.Root, "etc/app.conf")); err == nil {
		t.Errorf("Undo wrote through the link")
	}
}

// Sysctls are read and written without following links under proc/sys.
func TestSysctlRefusesSymlink(t *testing.T) {
	root := t.TempDir()
	mustWrite(t, filepath.Join(root, "secret/max_map_count"), "65530\n")
	plant(t, root, "proc/sys/vm", "../../secret")
	_, err := apply.ApplySysctls(root, map[string]string{"vm.max_map_count": "262144"})
	if !errors.As(err, new(*apply.SymlinkError)) {
		t.Fatalf("ApplySysctls = %v, want a SymlinkError", err)
	}
	if b, _ := os.ReadFile(filepath.Join(root, "secret/max_map_count")); string(b) != "65530\n" {
		t.Errorf("written through the link: %q", b)
	}
}
