// Package fleettest builds fleet repos and node lists for tests: the example
// fleet copied into a real Git repository, edited and committed with the git
// CLI, and nodes as `kubectl get nodes -o json` prints them.
package fleettest

import (
	"encoding/json"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"herd.dev/herd/schema/loader"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"herd.dev/herd/schema"
)

// Releases of the example fleet, as pinned in examples/fleet-repo/fleet.cue.
const (
	Release202610 = "1fff1fd9a3c54e8c1b3d0e7f6a2b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b"
	Release202611 = "7a3283c6e1d04f5a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a"
)

// RepoRoot returns the root of the herd repository.
func RepoRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil && strings.HasPrefix(string(b), "module herd.dev/herd\n") {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("not inside the herd repository")
		}
		dir = parent
	}
}

// CopyExample copies examples/fleet-repo into dst.
func CopyExample(t testing.TB, dst string) {
	t.Helper()
	src := filepath.Join(RepoRoot(t), "examples", "fleet-repo")
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		out := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(out, 0o755)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(out, b, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// Git runs the git CLI in dir with a fixed identity and clock, so commits are
// reproducible, and returns its trimmed output.
func Git(t testing.TB, dir string, args ...string) string {
	t.Helper()
	cmd := exec.Command("git", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(),
		"GIT_AUTHOR_NAME=Fleet Owner", "GIT_AUTHOR_EMAIL=owner@example.com",
		"GIT_COMMITTER_NAME=Fleet Owner", "GIT_COMMITTER_EMAIL=owner@example.com",
		"GIT_AUTHOR_DATE=2026-11-20T10:00:00Z", "GIT_COMMITTER_DATE=2026-11-20T10:00:00Z",
		"GIT_CONFIG_NOSYSTEM=1", "HOME="+dir,
	)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("git %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

// NewRepo makes a Git repository at dir holding the example fleet, committed
// once on branch main, and returns the commit.
func NewRepo(t testing.TB, dir string) string {
	t.Helper()
	CopyExample(t, dir)
	Git(t, dir, "init", "-q", "-b", "main")
	return Commit(t, dir, "Start the fleet")
}

// Commit commits every change in dir and returns the commit.
func Commit(t testing.TB, dir, msg string) string {
	t.Helper()
	Git(t, dir, "add", "-A")
	Git(t, dir, "commit", "-q", "-m", msg)
	return Git(t, dir, "rev-parse", "HEAD")
}

// Edit replaces old with new in the file at dir/name; old must be there.
func Edit(t testing.TB, dir, name, old, new string) {
	t.Helper()
	p := filepath.Join(dir, filepath.FromSlash(name))
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), old) {
		t.Fatalf("%s has no %q", name, old)
	}
	if err := os.WriteFile(p, []byte(strings.Replace(string(b), old, new, 1)), 0o644); err != nil {
		t.Fatal(err)
	}
}

// Load evaluates the fleet at dir.
func Load(t testing.TB, dir string) *loader.Result {
	t.Helper()
	res, err := loader.LoadDir(dir)
	if err != nil {
		t.Fatalf("load fleet %s: %v", dir, err)
	}
	return res
}

// Node is a node for a node list.
type Node struct {
	Name, Pool, Zone string
	NotReady         bool
	Unschedulable    bool
	Annotations      map[string]string
}

// AtTarget returns annotations saying a node runs the given pool's render.
func AtTarget(res *loader.Result, pool string) map[string]string {
	return map[string]string{
		schema.AnnotationCurrentConfig: res.Hash(pool),
		schema.AnnotationOSBooted:      res.Fleet.Pools[pool].OS.Commit,
		schema.AnnotationState:         string(schema.StateIdle),
	}
}

// KubeNode returns the node as a Kubernetes object.
func (n Node) KubeNode() corev1.Node {
	labels := map[string]string{"kubernetes.io/hostname": n.Name, "kubernetes.io/os": "linux"}
	if n.Pool != "" {
		labels["herd.dev/pool"] = n.Pool
	}
	if n.Zone != "" {
		labels[schema.LabelZone] = n.Zone
	}
	status := corev1.ConditionTrue
	if n.NotReady {
		status = corev1.ConditionFalse
	}
	return corev1.Node{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Node"},
		ObjectMeta: metav1.ObjectMeta{Name: n.Name, Labels: labels, Annotations: n.Annotations},
		Spec:       corev1.NodeSpec{Unschedulable: n.Unschedulable},
		Status: corev1.NodeStatus{Conditions: []corev1.NodeCondition{{
			Type: corev1.NodeReady, Status: status,
		}}},
	}
}

// NodeList renders nodes as `kubectl get nodes -o json` does.
func NodeList(t testing.TB, nodes []Node) []byte {
	t.Helper()
	items := make([]corev1.Node, len(nodes))
	for i, n := range nodes {
		items[i] = n.KubeNode()
	}
	b, err := json.MarshalIndent(map[string]any{"apiVersion": "v1", "kind": "List", "items": items, "metadata": map[string]any{"resourceVersion": ""}}, "", "    ")
	if err != nil {
		t.Fatal(err)
	}
	return b
}
