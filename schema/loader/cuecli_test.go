package loader

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// cueCLI finds the official cue CLI: $HERD_CUE, the repository's tool cache
// (where `make tools` installs it), or PATH. The test needs it; it fails
// rather than skips without it.
func cueCLI(t *testing.T) string {
	t.Helper()
	candidates := []string{os.Getenv("HERD_CUE"), "../../.cache/bin/cue"}
	if p, err := exec.LookPath("cue"); err == nil {
		candidates = append(candidates, p)
	}
	for _, c := range candidates {
		if c == "" {
			continue
		}
		if _, err := os.Stat(c); err == nil {
			abs, _ := filepath.Abs(c)
			return abs
		}
	}
	t.Fatal("the cue CLI v0.17.1 is needed: run `make tools` (go install cuelang.org/go/cmd/cue@v0.17.1)")
	return ""
}

func writeFleet(t *testing.T, files map[string][]byte) string {
	t.Helper()
	dir := t.TempDir()
	for name, src := range files {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, src, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// TestCueVetAgrees runs the official cue CLI on the example fleet: it accepts
// it as herd does, and rejects an invalid pool with a position, as herd does.
func TestCueVetAgrees(t *testing.T) {
	cue := cueCLI(t)
	version, err := exec.Command(cue, "version").CombinedOutput()
	if err != nil || !strings.Contains(string(version), "v0.17.1") {
		t.Fatalf("cue version: %v\n%s", err, version)
	}

	vet := func(dir string) (string, error) {
		cmd := exec.Command(cue, "vet", "-c", "./...")
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "CUE_REGISTRY=none")
		var buf bytes.Buffer
		cmd.Stdout, cmd.Stderr = &buf, &buf
		err := cmd.Run()
		return buf.String(), err
	}

	files := exampleFiles(t)
	if out, err := vet(writeFleet(t, files)); err != nil {
		t.Fatalf("cue vet rejects the example fleet: %v\n%s", err, out)
	}
	if _, err := Load(files); err != nil {
		t.Fatalf("herd rejects the example fleet: %v", err)
	}

	files["pools/bad.cue"] = []byte("package fleet\n\npools: bad: {\n\tos: commit: \"abc\"\n}\n")
	out, err := vet(writeFleet(t, files))
	if err == nil {
		t.Fatalf("cue vet accepts an invalid pool:\n%s", out)
	}
	if !strings.Contains(out, "pools.bad.os.commit") || !strings.Contains(out, "pools/bad.cue:4:14") {
		t.Errorf("cue vet names no position for the invalid commit:\n%s", out)
	}
	if got := diagStrings(func() error { _, err := Load(files); return err }()); len(got) != 1 || !strings.HasPrefix(got[0], "pools/bad.cue:4:14: pools.bad.os.commit") {
		t.Errorf("herd disagrees with cue vet: %v", got)
	}
}
