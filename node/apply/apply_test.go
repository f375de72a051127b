package apply_test

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"herd.dev/herd/node/apply"
	"herd.dev/herd/schema"
)

func newFiles(t *testing.T) *apply.Files {
	t.Helper()
	dir := t.TempDir()
	f := &apply.Files{Root: filepath.Join(dir, "root"), StateDir: filepath.Join(dir, "state")}
	if err := os.MkdirAll(f.Root, 0o755); err != nil {
		t.Fatal(err)
	}
	return f
}

func file(p, content string, mode int, d schema.Disruption) schema.RenderedFile {
	return schema.RenderedFile{Path: p, Content: content, Mode: mode, Apply: d}
}

func readOnDisk(t *testing.T, f *apply.Files, p string) (string, os.FileMode, bool) {
	t.Helper()
	full := filepath.Join(f.Root, p)
	data, err := os.ReadFile(full)
	if errors.Is(err, os.ErrNotExist) {
		return "", 0, false
	}
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(full)
	if err != nil {
		t.Fatal(err)
	}
	return string(data), st.Mode().Perm(), true
}

func paths(changes []apply.Change) []string {
	var out []string
	for _, c := range changes {
		s := c.Path
		if c.Removed {
			s = "-" + s
		}
		out = append(out, s)
	}
	return out
}

const (
	kubelet = schema.KubeletDropInPath
	sysctlF = schema.SysctlPath
	limits  = "/etc/security/limits.d/50-test.conf"
	modules = "/etc/modules-load.d/herd.conf"
	free    = "/etc/herd/files/script.sh"
)

func TestApplyWritesFilesWithModes(t *testing.T) {
	f := newFiles(t)
	old := syscall.Umask(0o077) // the mode must not depend on the umask
	defer syscall.Umask(old)
	files := []schema.RenderedFile{
		file(kubelet, "maxPods: 10\n", 0o644, schema.DisruptionRestartKubelet),
		file(free, "#!/bin/sh\n", 0o755, schema.DisruptionNone),
		file(limits, "* soft nofile 1\n", 0o600, schema.DisruptionNone),
		file(sysctlF, "vm.x = 1\n", 0, schema.DisruptionNone), // 0 means 0644
	}
	changes, err := f.Apply("h1", files)
	if err != nil {
		t.Fatal(err)
	}
	if got := len(changes); got != 4 {
		t.Fatalf("changes = %v, want 4", paths(changes))
	}
	for _, rf := range files {
		content, mode, ok := readOnDisk(t, f, rf.Path)
		want := os.FileMode(rf.Mode)
		if rf.Mode == 0 {
			want = apply.DefaultMode
		}
		if !ok || content != rf.Content || mode != want {
			t.Errorf("%s: content %q mode %v exists %v, want %q %v", rf.Path, content, mode, ok, rf.Content, want)
		}
	}
	// No temporary files are left next to the targets.
	err = filepath.WalkDir(f.Root, func(p string, d os.DirEntry, err error) error {
		if strings.Contains(d.Name(), ".herd-tmp-") {
			t.Errorf("temporary file left: %s", p)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := apply.Classes(changes); !slices.Equal(got, []schema.Disruption{schema.DisruptionNone, schema.DisruptionRestartKubelet}) {
		t.Errorf("Classes = %v", got)
	}
	m, err := f.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	if m.Hash != "h1" || len(m.Files) != 4 {
		t.Errorf("manifest = %+v", m)
	}

	// The same render again changes nothing and does not rewrite the manifest.
	st1, _ := os.Stat(filepath.Join(f.StateDir, "manifest.json"))
	changes, err = f.Apply("h1", files)
	if err != nil || len(changes) != 0 {
		t.Fatalf("second Apply = %v, %v; want no changes", paths(changes), err)
	}
	st2, _ := os.Stat(filepath.Join(f.StateDir, "manifest.json"))
	if !st1.ModTime().Equal(st2.ModTime()) {
		t.Error("manifest rewritten without a change")
	}
}

func TestApplyComparesWithDisk(t *testing.T) {
	f := newFiles(t)
	files := []schema.RenderedFile{
		file(kubelet, "a\n", 0o644, schema.DisruptionRestartKubelet),
		file(schema.ContainerdDropInPath, "b\n", 0o644, schema.DisruptionRestartContainerd),
	}
	if _, err := f.Apply("h1", files); err != nil {
		t.Fatal(err)
	}
	// Someone edits the containerd drop-in, and changes the kubelet one's mode.
	if err := os.WriteFile(filepath.Join(f.Root, schema.ContainerdDropInPath), []byte("edited\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(f.Root, kubelet), 0o666); err != nil {
		t.Fatal(err)
	}
	plan, err := f.Plan(files)
	if err != nil {
		t.Fatal(err)
	}
	changes, err := f.Apply("h1", files)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(paths(plan), paths(changes)) || len(changes) != 2 {
		t.Errorf("Plan %v, Apply %v: want both files", paths(plan), paths(changes))
	}
	// A render that changes only the kubelet file needs only a kubelet restart.
	files[0].Content = "a2\n"
	changes, err = f.Apply("h2", files)
	if err != nil {
		t.Fatal(err)
	}
	if got := apply.Classes(changes); !slices.Equal(got, []schema.Disruption{schema.DisruptionRestartKubelet}) {
		t.Errorf("Classes = %v, want restart-kubelet only", got)
	}
}

func TestApplyRemovesFilesNoLongerRendered(t *testing.T) {
	f := newFiles(t)
	if _, err := f.Apply("h1", []schema.RenderedFile{
		file(limits, "x\n", 0o644, schema.DisruptionNone),
		file(modules, "br_netfilter\n", 0o644, schema.DisruptionReboot),
	}); err != nil {
		t.Fatal(err)
	}
	// A file Herd never wrote stays, even in an allowlisted directory.
	other := filepath.Join(f.Root, "etc/security/limits.d/90-admin.conf")
	if err := os.WriteFile(other, []byte("mine\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	changes, err := f.Apply("h2", []schema.RenderedFile{file(limits, "x\n", 0o644, schema.DisruptionNone)})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"-" + modules}; !slices.Equal(paths(changes), want) {
		t.Fatalf("changes = %v, want %v", paths(changes), want)
	}
	if changes[0].Apply != schema.DisruptionReboot {
		t.Errorf("removing a modules-load.d file needs %v, want reboot", changes[0].Apply)
	}
	if _, _, ok := readOnDisk(t, f, modules); ok {
		t.Error("removed file still on disk")
	}
	if _, _, ok := readOnDisk(t, f, "/etc/security/limits.d/90-admin.conf"); !ok {
		t.Error("a file Herd did not write was removed")
	}
}

func TestUndoRestoresPreviousVersions(t *testing.T) {
	f := newFiles(t)
	// The node came with its own version of the file.
	orig := filepath.Join(f.Root, limits)
	if err := os.MkdirAll(filepath.Dir(orig), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(orig, []byte("original\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(orig, 0o640); err != nil {
		t.Fatal(err)
	}
	v1 := []schema.RenderedFile{file(kubelet, "v1\n", 0o644, schema.DisruptionRestartKubelet)}
	if _, err := f.Apply("h1", v1); err != nil {
		t.Fatal(err)
	}
	v2 := []schema.RenderedFile{
		file(limits, "v2\n", 0o644, schema.DisruptionNone),
		file(free, "new\n", 0o644, schema.DisruptionNone),
	}
	if _, err := f.Apply("h2", v2); err != nil {
		t.Fatal(err)
	}
	if prev, ok, err := f.Previous(); err != nil || !ok || prev != "h1" {
		t.Fatalf("Previous = %q, %v, %v; want h1", prev, ok, err)
	}
	changes, err := f.Undo()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("undo: %v", paths(changes))
	if c, mode, ok := readOnDisk(t, f, limits); !ok || c != "original\n" || mode != 0o640 {
		t.Errorf("limits after undo: %q %v %v, want the original 0640", c, mode, ok)
	}
	if c, _, ok := readOnDisk(t, f, kubelet); !ok || c != "v1\n" {
		t.Errorf("kubelet after undo: %q %v, want v1", c, ok)
	}
	if _, _, ok := readOnDisk(t, f, free); ok {
		t.Error("a file v2 created survived undo")
	}
	m, err := f.Manifest()
	if err != nil || m.Hash != "h1" {
		t.Errorf("manifest after undo = %+v, %v; want h1", m, err)
	}
	// Undo again changes nothing.
	if changes, err := f.Undo(); err != nil || len(changes) != 0 {
		t.Errorf("second Undo = %v, %v", paths(changes), err)
	}
}

// A crash half-way leaves some files new; the rerun finishes the job, and the
// copies still hold the state before the first attempt.
func TestApplyResumesAfterCrash(t *testing.T) {
	f := newFiles(t)
	v1 := []schema.RenderedFile{
		file(kubelet, "v1\n", 0o644, schema.DisruptionRestartKubelet),
		file(limits, "v1\n", 0o644, schema.DisruptionNone),
		file(sysctlF, "v1\n", 0o644, schema.DisruptionNone),
	}
	if _, err := f.Apply("h1", v1); err != nil {
		t.Fatal(err)
	}
	v2 := slices.Clone(v1)
	for i := range v2 {
		v2[i].Content = "v2\n"
	}
	crash := errors.New("crash")
	n := 0
	f.AfterWrite = func(string) error {
		if n++; n == 1 {
			return crash
		}
		return nil
	}
	if _, err := f.Apply("h2", v2); !errors.Is(err, crash) {
		t.Fatalf("Apply = %v, want the crash", err)
	}
	written := 0
	for _, rf := range v2 {
		if c, _, _ := readOnDisk(t, f, rf.Path); c == "v2\n" {
			written++
		}
	}
	if written != 1 {
		t.Fatalf("%d files written before the crash, want 1", written)
	}
	changes, err := f.Apply("h2", v2)
	if err != nil {
		t.Fatal(err)
	}
	if len(changes) != 2 {
		t.Errorf("rerun changed %v, want the 2 files not yet written", paths(changes))
	}
	for _, rf := range v2 {
		if c, _, _ := readOnDisk(t, f, rf.Path); c != "v2\n" {
			t.Errorf("%s = %q after the rerun", rf.Path, c)
		}
	}
	if _, err := f.Undo(); err != nil {
		t.Fatal(err)
	}
	for _, rf := range v1 {
		if c, _, _ := readOnDisk(t, f, rf.Path); c != "v1\n" {
			t.Errorf("%s = %q after undo, want v1 (the state before the crashed apply)", rf.Path, c)
		}
	}
}

func TestApplyStaysInsideRootAndAllowlist(t *testing.T) {
	f := newFiles(t)
	for _, p := range []string{"/etc/passwd", "/etc/herd/files/../../passwd", "etc/herd/files/x", "/etc/herd/files/.hidden"} {
		if _, err := f.Apply("h", []schema.RenderedFile{file(p, "x", 0o644, schema.DisruptionNone)}); err == nil {
			t.Errorf("Apply wrote %s", p)
		}
	}
	if _, err := f.Apply("h", []schema.RenderedFile{file(free, "x", 0o4755, schema.DisruptionNone)}); err == nil {
		t.Error("Apply accepted a setuid mode")
	}
	// A symbolic link must not lead a write out of the root, absolute or relative.
	outside := t.TempDir()
	for _, target := range []string{outside, "../../../../" + filepath.Base(outside)} {
		dir := filepath.Join(f.Root, "etc/herd")
		if err := os.RemoveAll(dir); err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(target, filepath.Join(dir, "files")); err != nil {
			t.Fatal(err)
		}
		_, err := f.Apply("h", []schema.RenderedFile{file(free, "escaped\n", 0o644, schema.DisruptionNone)})
		if err == nil {
			t.Errorf("Apply followed a symlink to %s", target)
		}
		t.Logf("symlink to %s: %v", target, err)
		if _, err := os.Stat(filepath.Join(outside, "script.sh")); err == nil {
			t.Fatalf("a write escaped the root through a symlink to %s", target)
		}
	}
}

func TestSysctls(t *testing.T) {
	root := t.TempDir()
	for k, v := range map[string]string{
		"vm.max_map_count":             "65530\n",
		"net.core.somaxconn":           "128\n",
		"net.ipv4.ip_local_port_range": "32768\t60999\n",
	} {
		p := filepath.Join(root, apply.SysctlFile(k))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(v), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	good := map[string]string{
		"vm.max_map_count":             "262144",
		"net.core.somaxconn":           "128",
		"net.ipv4.ip_local_port_range": "32768 60999",
	}
	if err := apply.CheckSysctls(root, good); err != nil {
		t.Fatal(err)
	}
	changed, err := apply.ApplySysctls(root, good)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(changed, []string{"vm.max_map_count"}) {
		t.Errorf("changed = %v, want only vm.max_map_count", changed)
	}
	if b, _ := os.ReadFile(filepath.Join(root, "proc/sys/vm/max_map_count")); string(b) != "262144\n" {
		t.Errorf("vm.max_map_count = %q", b)
	}
	if changed, err := apply.ApplySysctls(root, good); err != nil || len(changed) != 0 {
		t.Errorf("second ApplySysctls = %v, %v", changed, err)
	}

	bad := map[string]string{
		"vm.no_such_knob":     "1",
		"kernel.core_pattern": "|/bin/sh",
		"vm.max_map_count":    "1\n2",
		"vm..x":               "1",
		"net.core.somaxconn":  "256",
	}
	err = apply.CheckSysctls(root, bad)
	var se *apply.SysctlError
	if !errors.As(err, &se) {
		t.Fatalf("CheckSysctls = %v, want a SysctlError", err)
	}
	if !slices.Equal(se.Unknown, []string{"vm.no_such_knob"}) || !slices.Equal(se.Invalid, []string{"kernel.core_pattern", "vm..x", "vm.max_map_count"}) {
		t.Errorf("SysctlError = %+v", se)
	}
	if !strings.Contains(err.Error(), "unknown sysctl vm.no_such_knob") {
		t.Errorf("message %q does not name the unknown sysctl", err)
	}
	if _, err := apply.ApplySysctls(root, bad); err == nil {
		t.Error("ApplySysctls applied a refused set")
	}
	if b, _ := os.ReadFile(filepath.Join(root, "proc/sys/net/core/somaxconn")); string(b) != "128\n" {
		t.Errorf("a refused set was partly applied: somaxconn = %q", b)
	}
}
