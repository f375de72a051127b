package programs

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestObjectsUpToDate regenerates every object and its Go loader into a
// temporary directory, with the go:generate lines of gen.go, and compares
// them byte for byte with the committed files: a change to the C sources
// without `make generate` fails here. bpf2go's builds are reproducible
// (no clang version or paths in the objects), so any difference is a
// stale file.
func TestObjectsUpToDate(t *testing.T) {
	for _, tool := range []string{"clang-14", "llvm-strip-14"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not found: `make deps` installs it (Debian packages clang-14, llvm-14)", tool)
		}
	}
	// Reading the sources here lets go test's cache see them change;
	// bpf2go and clang read them in other processes.
	sources, _ := filepath.Glob("*.bpf.c")
	headers, _ := filepath.Glob("include/*.h")
	for _, src := range append(sources, headers...) {
		if _, err := os.ReadFile(src); err != nil {
			t.Fatal(err)
		}
	}
	out := t.TempDir()
	for _, args := range generateLines(t) {
		// args is "tool bpf2go <flags> <ident> <source> -- <cflags>".
		args = append(append(args[:2:2], "-output-dir", out), args[2:]...)
		cmd := exec.Command("go", args...)
		cmd.Env = append(os.Environ(), "GOPACKAGE=programs")
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, b)
		}
	}
	fresh, err := filepath.Glob(filepath.Join(out, "*"))
	if err != nil || len(fresh) == 0 {
		t.Fatalf("nothing generated in %s: %v", out, err)
	}
	for _, f := range fresh {
		name := filepath.Base(f)
		want, _ := os.ReadFile(f)
		got, err := os.ReadFile(name)
		if err != nil {
			t.Errorf("%s is generated but not committed: run make generate", name)
			continue
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s is stale: run make generate and commit it", name)
		}
	}
}

// generateLines returns the arguments of gen.go's `go tool bpf2go` lines,
// as `go` takes them.
func generateLines(t *testing.T) [][]string {
	t.Helper()
	f, err := os.Open("gen.go")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var lines [][]string
	s := bufio.NewScanner(f)
	for s.Scan() {
		if rest, ok := strings.CutPrefix(s.Text(), "//go:generate go "); ok {
			lines = append(lines, strings.Fields(rest))
		}
	}
	if len(lines) == 0 {
		t.Fatal("no go:generate lines in gen.go")
	}
	return lines
}
