// Package testkernel sets up what tests on the real kernel need: cgroups
// the test creates and removes, processes started inside them.
package testkernel

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"herd.dev/herd/bpf/cgroups"
)

// Cgroup is a cgroup a test created.
type Cgroup struct {
	Hierarchy cgroups.Hierarchy
	// Path is relative to the hierarchy root, as the monitor names it.
	Path string
	// ID is the cgroup id the kernel reports for tasks in it.
	ID uint64
}

// Dir is the cgroup's directory.
func (c Cgroup) Dir() string { return filepath.Join(c.Hierarchy.Root, c.Path) }

// Hierarchy returns the mounted hierarchy of mode, mounting a cgroup2
// hierarchy in a temporary directory when none is mounted.
func Hierarchy(t testing.TB, mode cgroups.Mode) cgroups.Hierarchy {
	t.Helper()
	mounts, err := cgroups.Mounts()
	if err != nil {
		t.Fatal(err)
	}
	h, err := cgroups.Detect(mode, mounts)
	if err == nil {
		return h
	}
	if mode != cgroups.V2 {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := syscall.Mount("none", dir, "cgroup2", 0, ""); err != nil {
		t.Fatalf("mount cgroup2 on %s: %v", dir, err)
	}
	t.Cleanup(func() { _ = syscall.Unmount(dir, syscall.MNT_DETACH) })
	return cgroups.Hierarchy{Mode: cgroups.V2, Root: dir}
}

// NewCgroup creates the cgroup path (below a directory unique to the test)
// in h and removes it, killing what still runs in it, when the test ends.
func NewCgroup(t testing.TB, h cgroups.Hierarchy, name string) Cgroup {
	t.Helper()
	base := filepath.Join("/herd-test-"+strconv.Itoa(os.Getpid()), sanitize(t.Name()))
	path := filepath.Join(base, name)
	dir := filepath.Join(h.Root, path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { removeTree(t, h.Root, path) })
	id, err := cgroups.ID(dir)
	if err != nil {
		t.Fatal(err)
	}
	return Cgroup{Hierarchy: h, Path: path, ID: id}
}

func sanitize(name string) string {
	return strings.NewReplacer("/", "_", " ", "_").Replace(name)
}

// removeTree kills the processes in root/path and below and removes the
// cgroups, deepest first, then the empty parents up to the root.
func removeTree(t testing.TB, root, path string) {
	dir := filepath.Join(root, path)
	var dirs []string
	_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	for i := len(dirs) - 1; i >= 0; i-- {
		if err := removeCgroup(dirs[i]); err != nil {
			t.Errorf("remove cgroup %s: %v", dirs[i], err)
		}
	}
	for p := filepath.Dir(dir); p != root && strings.HasPrefix(p, root); p = filepath.Dir(p) {
		if os.Remove(p) != nil {
			break
		}
	}
}

func removeCgroup(dir string) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		for _, pid := range Procs(dir) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		err := os.Remove(dir)
		if err == nil || errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Procs lists the processes in the cgroup directory dir.
func Procs(dir string) []int {
	b, _ := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	var pids []int
	for _, f := range strings.Fields(string(b)) {
		if pid, err := strconv.Atoi(f); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}

// Move moves process pid into the cgroup.
func (c Cgroup) Move(pid int) error {
	return os.WriteFile(filepath.Join(c.Dir(), "cgroup.procs"), []byte(strconv.Itoa(pid)), 0o644)
}

// Start starts cmd inside the v2 cgroup c from its first instruction
// (clone3 with CLONE_INTO_CGROUP), so every event of it is c's.
func (c Cgroup) Start(cmd *exec.Cmd) error {
	if c.Hierarchy.Mode != cgroups.V2 {
		return fmt.Errorf("start in %s: only v2 cgroups can be entered at clone", c.Path)
	}
	f, err := os.Open(c.Dir())
	if err != nil {
		return err
	}
	defer f.Close()
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.UseCgroupFD = true
	cmd.SysProcAttr.CgroupFD = int(f.Fd())
	return cmd.Start()
}

// Eventually polls cond every 20 ms until it holds or the deadline passes,
// then fails the test with what cond last said.
func Eventually(t testing.TB, timeout time.Duration, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, msg := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not after %v: %s", timeout, msg)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
