package node_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"herd.dev/herd/os/ostree/osfixture"
	"herd.dev/herd/schema"
)

// A workload with a hostPath mount of /etc/herd/files replaced the directory
// with a link into etc/systemd/system: the agent writes nothing through it,
// the Node says which path holds the link (Degraded from the third
// attempt), and once the link is gone the config applies.
func TestAgentRefusesSymlink(t *testing.T) {
	t.Parallel()
	repo := newRepo(t, osfixture.Options{Versions: 1})
	v1 := repo.Commits[0]
	n := newTestNode(t, repo, osfixture.SysrootOptions{})
	n.writeRootFile("etc/systemd/system/keep", "")
	link := filepath.Join(n.root, "etc/herd/files")
	if err := os.MkdirAll(filepath.Dir(link), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("../systemd/system", link); err != nil {
		t.Fatal(err)
	}
	s := spec{commit: v1, files: []schema.File{{Path: "/etc/herd/files/app.service", Content: "[Service]\nExecStart=/bin/sh\n", Mode: 0o644}}}
	h := publishRender(t, n.cs, render(t, repo, s))
	n.setDesired(h, v1)
	n.start(nil)
	ann := n.waitState(schema.StateDegraded, 30*time.Second)
	if msg := ann[schema.AnnotationMessage]; !strings.Contains(msg, "/etc/herd/files: a component of the path is a symbolic link") {
		t.Errorf("message %q does not name the link", msg)
	}
	if _, err := os.Stat(filepath.Join(n.root, "etc/systemd/system/app.service")); err == nil {
		t.Fatalf("the file from Git landed in etc/systemd/system")
	}
	if err := os.Remove(link); err != nil {
		t.Fatal(err)
	}
	n.waitUpToDate(h, v1)
	if got := n.readRootFile("etc/herd/files/app.service"); !strings.Contains(got, "ExecStart") {
		t.Errorf("after the link is gone: %q", got)
	}
}
