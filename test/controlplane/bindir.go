package controlplane

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
)

// ModulePath is the module whose go.mod marks the repository root.
const ModulePath = "herd.dev/herd"

// requiredBinaries must be in a bin dir; kubectl is built too but optional.
var requiredBinaries = []string{Etcd, APIServer, ControllerManager}

var binDirOnce = sync.OnceValues(findBinDir)

// BinDir returns the directory holding the control-plane binaries (etcd,
// kube-apiserver, kube-controller-manager, kubectl), laid out like
// controller-runtime envtest's KUBEBUILDER_ASSETS:
//
//   - $HERD_K8S_ASSETS if set (it must hold the binaries);
//   - else $KUBEBUILDER_ASSETS if set and it holds them (setup-envtest's
//     directories lack kube-controller-manager, so they are passed over);
//   - else the directory printed by <repo>/test/k8s/build.sh, which builds
//     the binaries from the Go module proxy into <repo>/.cache/k8s/... on
//     first use (about 10-15 minutes on 2 cores) and reuses them afterwards.
//
// The result is computed once per process.
func BinDir() (string, error) {
	return binDirOnce()
}

func findBinDir() (string, error) {
	if dir := os.Getenv("HERD_K8S_ASSETS"); dir != "" {
		if err := checkBinDir(dir); err != nil {
			return "", fmt.Errorf("controlplane: HERD_K8S_ASSETS: %w", err)
		}
		return dir, nil
	}
	var kbErr error
	if dir := os.Getenv("KUBEBUILDER_ASSETS"); dir != "" {
		if kbErr = checkBinDir(dir); kbErr == nil {
			return dir, nil
		}
	}
	dir, err := buildBinaries()
	if err != nil && kbErr != nil {
		err = fmt.Errorf("%w (KUBEBUILDER_ASSETS not usable either: %v)", err, kbErr)
	}
	return dir, err
}

// checkBinDir reports whether dir holds the required binaries.
func checkBinDir(dir string) error {
	var missing []string
	for _, name := range requiredBinaries {
		st, err := os.Stat(filepath.Join(dir, name))
		if err != nil || st.IsDir() || st.Mode().Perm()&0o111 == 0 {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("%s lacks executable %s", dir, strings.Join(missing, ", "))
	}
	return nil
}

// buildBinaries runs test/k8s/build.sh, which builds what is missing and
// prints the directory on its last stdout line. Its progress log goes to
// os.Stderr.
func buildBinaries() (string, error) {
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	script := filepath.Join(root, "test", "k8s", "build.sh")
	var stdout bytes.Buffer
	var stderr tailBuffer
	cmd := exec.Command("sh", script)
	cmd.Dir = root
	cmd.Stdout = &stdout
	cmd.Stderr = io.MultiWriter(os.Stderr, &stderr)
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("controlplane: %s: %w; last output:\n%s", script, err, stderr.String())
	}
	dir := lastLine(stdout.String())
	if dir == "" {
		return "", fmt.Errorf("controlplane: %s printed no directory", script)
	}
	if err := checkBinDir(dir); err != nil {
		return "", fmt.Errorf("controlplane: after %s: %w", script, err)
	}
	return dir, nil
}

// RepoRoot returns the repository root: the nearest directory at or above
// the working directory whose go.mod declares module herd.dev/herd.
func RepoRoot() (string, error) {
	wd, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("controlplane: working directory: %w", err)
	}
	for dir := wd; ; {
		if modulePath(filepath.Join(dir, "go.mod")) == ModulePath {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("controlplane: no go.mod of module %s at or above %s (run inside the repository or set HERD_K8S_ASSETS)", ModulePath, wd)
		}
		dir = parent
	}
}

// modulePath returns the module path declared by the go.mod at path, or "".
func modulePath(path string) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if rest, ok := strings.CutPrefix(line, "module"); ok && rest != "" && (rest[0] == ' ' || rest[0] == '\t') {
			rest = strings.TrimSpace(rest)
			if i := strings.Index(rest, "//"); i >= 0 {
				rest = strings.TrimSpace(rest[:i])
			}
			return strings.Trim(rest, `"`)
		}
	}
	return ""
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}

// tailBuffer keeps the last 8 KiB written to it.
type tailBuffer struct {
	mu  sync.Mutex
	buf []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	const max = 8 << 10
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if len(t.buf) > max {
		t.buf = t.buf[len(t.buf)-max:]
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.buf)
}
