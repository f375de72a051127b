package image_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"herd.dev/herd/os/image"
	"herd.dev/herd/os/ostree"
)

// An image preloaded with IMAGE is in a real containerd once the unit the
// build installed has run: the test runs the unit's ExecStart against a
// containerd of its own, on the image checked out from the commit.
func TestPreloadedImageImports(t *testing.T) {
	repo := filepath.Join(t.TempDir(), "repo")
	buildBase(t, repo, "v1")
	ctxDir := layeredContext(t)
	res, err := image.Build(t.Context(), image.Options{Buildfile: filepath.Join(ctxDir, "Buildfile"), Repo: repo, Ref: ref})
	if err != nil {
		t.Fatal(err)
	}
	rootfs := filepath.Join(t.TempDir(), "rootfs")
	if err := (&ostree.Repo{Path: repo}).Checkout(t.Context(), res.Commit, rootfs); err != nil {
		t.Fatal(err)
	}
	unit, err := os.ReadFile(filepath.Join(rootfs, image.PreloadUnit))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^ExecStart=/bin/sh -c '(.*)'$`).FindSubmatch(unit)
	if m == nil {
		t.Fatalf("no ExecStart in the unit:\n%s", unit)
	}
	script := strings.ReplaceAll(string(m[1]), image.PreloadDir, filepath.Join(rootfs, image.PreloadDir))

	sock := startContainerd(t)
	cmd := exec.CommandContext(t.Context(), "/bin/sh", "-c", script)
	cmd.Env = append(os.Environ(), "CONTAINERD_ADDRESS="+sock)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("the unit's import: %v\n%s", err, out)
	}
	out, err := exec.CommandContext(t.Context(), "ctr", "--address", sock, "--namespace", "k8s.io", "images", "ls", "-q").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "registry.k8s.io/pause:3.10") {
		t.Fatalf("images in containerd after the import: %v\n%s", err, out)
	}
}

// startContainerd runs containerd (without its CRI plugin) on a private
// root, state and socket, and returns the socket.
func startContainerd(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "ctd-") // short: the socket path has a length limit
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "sock")
	cfg := filepath.Join(dir, "config.toml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`version = 2
root = %q
state = %q
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = %q
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), sock)), 0o644)
	cmd := exec.Command("containerd", "--config", cfg)
	cmd.Stdout, cmd.Stderr = nil, nil
	if err := cmd.Start(); err != nil {
		t.Fatalf("containerd: %v (apt-get install -y containerd)", err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	for {
		if err := exec.CommandContext(ctx, "ctr", "--address", sock, "version").Run(); err == nil {
			return sock
		}
		select {
		case <-ctx.Done():
			t.Fatal("containerd did not answer within 30s")
		case <-time.After(100 * time.Millisecond):
		}
	}
}
