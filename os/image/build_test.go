package image_test

import (
	"archive/tar"
	"compress/gzip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"herd.dev/herd/os/image"
	"herd.dev/herd/os/ostree"
	"herd.dev/herd/os/ostree/osfixture"
)

const ref = "containeros/x86_64/stable"

// examples is examples/os of this repository.
func examples(t testing.TB) string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "examples", "os")
}

// buildBase builds examples/os/base into repo and returns its commit.
func buildBase(t testing.TB, repo, version string) string {
	t.Helper()
	ctxDir := filepath.Join(t.TempDir(), "base")
	if err := osfixture.CopyContext(filepath.Join(examples(t), "base"), ctxDir); err != nil {
		t.Fatal(err)
	}
	res, err := image.Build(t.Context(), image.Options{
		Buildfile: filepath.Join(ctxDir, "Buildfile"), Repo: repo, Ref: ref,
		BuildArgs: map[string]string{"VERSION": version},
	})
	if err != nil {
		t.Fatal(err)
	}
	return res.Commit
}

// layeredContext writes a build context using every instruction.
func layeredContext(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	write := func(name, content string, mode os.FileMode) {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
	}
	write("Buildfile", `# every instruction
ARG BASE=`+ref+`
FROM $BASE
ARG GREETING=hello
COPY motd /usr/etc/motd
COPY --chmod=0750 --chown=1000:1001 tools/ /usr/libexec/tools/
ADD extra.tar.gz /usr/share/extra/
RUN echo "$GREETING from RUN" > /usr/share/run-step && chmod 0600 /usr/share/run-step
IMAGE pause.tar
LABEL version=v2 description="layered \"test\" image"
`, 0o644)
	write("motd", "welcome\n", 0o600)
	write("tools/a.sh", "#!/bin/sh\necho a\n", 0o755)
	write("tools/sub/b.txt", "b\n", 0o644)
	if err := os.Symlink("a.sh", filepath.Join(dir, "tools/link")); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(filepath.Join(dir, "extra.tar.gz"))
	if err != nil {
		t.Fatal(err)
	}
	gz := gzip.NewWriter(f)
	tw := tar.NewWriter(gz)
	for _, h := range []tar.Header{
		{Name: "data/", Typeflag: tar.TypeDir, Mode: 0o700, Uid: 5, Gid: 6},
		{Name: "data/x", Typeflag: tar.TypeReg, Mode: 0o640, Size: 2, Uid: 5, Gid: 6},
		{Name: "../../escape", Typeflag: tar.TypeReg, Mode: 0o644, Size: 2},
	} {
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		if h.Size > 0 {
			tw.Write([]byte("x\n"))
		}
	}
	tw.Close()
	gz.Close()
	f.Close()
	if err := osfixture.WriteOCIArchive(filepath.Join(dir, "pause.tar"), "registry.k8s.io/pause:3.10", "pause"); err != nil {
		t.Fatal(err)
	}
	return dir
}

func entries(t testing.TB, repo, commit string) map[string]ostree.Entry {
	t.Helper()
	list, err := (&ostree.Repo{Path: repo}).List(t.Context(), commit)
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]ostree.Entry{}
	for _, e := range list {
		m[e.Path] = e
	}
	return m
}

func cat(t testing.TB, repo, commit, path string) string {
	t.Helper()
	out, err := exec.Command("ostree", "--repo="+repo, "cat", commit, path).CombinedOutput()
	if err != nil {
		t.Fatalf("ostree cat %s: %v: %s", path, err, out)
	}
	return string(out)
}

// TestBuildLayered builds an image with every instruction on the example
// base and checks the files, modes, owners and metadata of the commit.
func TestBuildLayered(t *testing.T) {
	repo := filepath.Join(t.TempDir(), "repo")
	base := buildBase(t, repo, "v1")
	ctxDir := layeredContext(t)
	res, err := image.Build(t.Context(), image.Options{Buildfile: filepath.Join(ctxDir, "Buildfile"), Repo: repo, Ref: ref,
		BuildArgs: map[string]string{"GREETING": "hi"}})
	if err != nil {
		t.Fatal(err)
	}
	if res.Base != base || res.Previous != base {
		t.Errorf("base %s previous %s, want %s", res.Base, res.Previous, base)
	}
	if len(res.Deltas) != 1 || res.Deltas[0] != base {
		t.Errorf("deltas from %v, want from the previous commit %s", res.Deltas, base)
	}
	e := entries(t, repo, res.Commit)
	want := map[string]struct {
		typ      byte
		mode     os.FileMode
		uid, gid int
	}{
		"/usr/etc/motd":                       {'-', 0o600, 0, 0},
		"/usr/libexec/tools":                  {'d', 0o750, 1000, 1001},
		"/usr/libexec/tools/a.sh":             {'-', 0o750, 1000, 1001},
		"/usr/libexec/tools/sub/b.txt":        {'-', 0o750, 1000, 1001},
		"/usr/libexec/tools/link":             {'l', 0o777, 1000, 1001},
		"/usr/libexec":                        {'d', 0o755, 0, 0},
		"/usr/share/extra/data":               {'d', 0o700, 5, 6},
		"/usr/share/extra/data/x":             {'-', 0o640, 5, 6},
		"/usr/share/extra/escape":             {'-', 0o644, 0, 0},
		"/usr/share/run-step":                 {'-', 0o600, 0, 0},
		"/usr/lib/modules/6.1.0-herd":         {'d', 0o755, 0, 0},
		image.PreloadUnit:                     {'-', 0o644, 0, 0},
		"/usr/bin/busybox":                    {'-', 0o755, 0, 0},
		"/usr/lib/modules/6.1.0-herd/vmlinuz": {'-', 0o644, 0, 0},
	}
	for p, w := range want {
		got, ok := e[p]
		if !ok {
			t.Errorf("%s: missing from the image", p)
			continue
		}
		if got.Type != w.typ || got.Mode&0o7777 != w.mode || got.UID != w.uid || got.GID != w.gid {
			t.Errorf("%s: %c %o %d:%d, want %c %o %d:%d", p, got.Type, got.Mode&0o7777, got.UID, got.GID, w.typ, w.mode, w.uid, w.gid)
		}
	}
	for p := range e {
		if strings.Contains(p, "escape") && p != "/usr/share/extra/escape" {
			t.Errorf("%s: an archive entry left its destination", p)
		}
	}
	for _, m := range []string{"/proc", "/dev", "/tmp", "/run", "/etc"} {
		if _, ok := e[m]; ok {
			t.Errorf("%s: sandbox mount point or /etc left in the image", m)
		}
	}
	if got := cat(t, repo, res.Commit, "/usr/share/run-step"); got != "hi from RUN\n" {
		t.Errorf("RUN output %q, want the ARG value in it", got)
	}
	var images int
	for p := range e {
		if strings.HasPrefix(p, image.PreloadDir+"/") && strings.HasSuffix(p, ".tar") {
			images++
		}
	}
	if images != 1 {
		t.Errorf("%d preloaded archives in %s, want 1", images, image.PreloadDir)
	}
	r := &ostree.Repo{Path: repo}
	for k, v := range map[string]string{
		"version":           "v2",
		"description":       `layered "test" image`,
		image.MetaBase:      base,
		image.MetaBuildfile: mustDigest(t, filepath.Join(ctxDir, "Buildfile")),
		image.MetaLabels:    `{"description":"layered \"test\" image","version":"v2"}`,
	} {
		got, ok, err := r.Metadata(t.Context(), res.Commit, k)
		if err != nil || !ok || got != v {
			t.Errorf("metadata %s = %q (found %v, %v), want %q", k, got, ok, err, v)
		}
	}
}

func mustDigest(t testing.TB, path string) string {
	bf, err := image.ParseFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return bf.Digest
}

// TestBuildReproducible builds the same inputs into two fresh repositories,
// at different times and from differently ordered contexts: the commits are
// the same.
func TestBuildReproducible(t *testing.T) {
	var commits []string
	for i := range 2 {
		repo := filepath.Join(t.TempDir(), "repo")
		buildBase(t, repo, "v1")
		ctxDir := layeredContext(t)
		if i == 1 { // other mtimes, and a file created after the others
			os.WriteFile(filepath.Join(ctxDir, "tools/sub/b.txt"), []byte("b\n"), 0o644)
		}
		res, err := image.Build(t.Context(), image.Options{Buildfile: filepath.Join(ctxDir, "Buildfile"), Repo: repo, Ref: ref})
		if err != nil {
			t.Fatal(err)
		}
		commits = append(commits, res.Commit)
	}
	if commits[0] != commits[1] {
		t.Fatalf("same inputs gave commits %s and %s", commits[0], commits[1])
	}
}

// TestRunHasNoNetwork: a RUN step sees only a loopback interface, and a
// failing step fails the build naming its line.
func TestRunSandbox(t *testing.T) {
	repo := filepath.Join(t.TempDir(), "repo")
	buildBase(t, repo, "v1")
	dir := t.TempDir()
	bf := filepath.Join(dir, "Buildfile")
	os.WriteFile(bf, []byte("FROM "+ref+"\nRUN test \"$(grep -c : /proc/net/dev)\" = 1 && ! test -e /proc/1/root/work\nRUN exit 3\n"), 0o644)
	_, err := image.Build(t.Context(), image.Options{Buildfile: bf, Repo: repo, Ref: "test"})
	if err == nil || !strings.Contains(err.Error(), "Buildfile:3: RUN: /bin/sh exited with status 3") {
		t.Fatalf("build error %v, want line 3 to fail with status 3 (and line 2 to pass: no network)", err)
	}
}

func TestBuildErrors(t *testing.T) {
	repo := filepath.Join(t.TempDir(), "repo")
	buildBase(t, repo, "v1")
	for _, tc := range []struct {
		name, buildfile string
		args            map[string]string
		want            string
	}{
		{"undeclared arg", "FROM " + ref + "\n", map[string]string{"X": "1"}, "--build-arg X: no ARG X"},
		{"outside context", "FROM " + ref + "\nCOPY ../x /x\n", nil, "Buildfile:2: COPY: ../x: outside the build context"},
		{"missing source", "FROM " + ref + "\nCOPY nope /x\n", nil, "Buildfile:2: COPY: nope: not in the build context"},
		{"unknown base", "FROM other/ref\n", nil, "Buildfile:1: FROM: other/ref is not in the repository"},
		{"etc", "FROM " + ref + "\nCOPY f /etc/f\n", nil, "OSTree images keep it in /usr/etc"},
		{"not oci", "FROM " + ref + "\nIMAGE f\n", nil, "Buildfile:2: IMAGE: f: not a tar archive of an OCI image layout"},
		{"bad chown", "FROM " + ref + "\nCOPY --chown=root f /f\n", nil, "Buildfile:2: COPY: --chown=root: want numeric UID[:GID]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			os.WriteFile(filepath.Join(dir, "f"), []byte("f\n"), 0o644)
			bf := filepath.Join(dir, "Buildfile")
			os.WriteFile(bf, []byte(tc.buildfile), 0o644)
			_, err := image.Build(t.Context(), image.Options{Buildfile: bf, Repo: repo, Ref: "test", BuildArgs: tc.args})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want it to say %q", err, tc.want)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct{ src, want string }{
		{"COPY a b\n", "Buildfile:1: COPY: must come after FROM"},
		{"FROM a\nFROM b\n", "Buildfile:2: FROM: only one FROM"},
		{"FROM a\nENV X=1\n", "Buildfile:2: ENV is not a Buildfile instruction"},
		{"FROM a\nCOPY --from=x a b\n", "Buildfile:2: COPY takes no flag --from"},
		{"FROM a\nCOPY a\n", "Buildfile:2: COPY: want COPY"},
		{"FROM a\nIMAGE\n", "Buildfile:2: IMAGE: want IMAGE"},
		{"FROM a\nARG 1x\n", "Buildfile:2: ARG: invalid name"},
		{"ARG X\n", "Buildfile: no FROM instruction"},
		{"FROM a\nLABEL\n", "Buildfile:2: LABEL"},
	} {
		_, err := image.Parse("Buildfile", []byte(tc.src))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Parse(%q) = %v, want %q", tc.src, err, tc.want)
		}
	}
}

// FROM --repo takes the base from another repository: a local path, or an
// archive repository served over HTTP.
func TestBuildFromOtherRepo(t *testing.T) {
	src := filepath.Join(t.TempDir(), "src")
	base := buildBase(t, src, "v1")
	srv, err := osfixture.Serve(src)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	for name, from := range map[string]string{"path": src, "http": srv.URL} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			bf := filepath.Join(dir, "Buildfile")
			os.WriteFile(filepath.Join(dir, "f"), []byte("f\n"), 0o644)
			os.WriteFile(bf, []byte("FROM --repo="+from+" "+ref+"\nCOPY f /usr/share/f\n"), 0o644)
			repo := filepath.Join(t.TempDir(), "repo")
			res, err := image.Build(t.Context(), image.Options{Buildfile: bf, Repo: repo, Ref: "layered"})
			if err != nil {
				t.Fatal(err)
			}
			if res.Base != base {
				t.Errorf("base %s, want %s", res.Base, base)
			}
			if got := cat(t, repo, res.Commit, "/usr/lib/modules/6.1.0-herd/vmlinuz"); !strings.Contains(got, "kernel") {
				t.Errorf("the base's kernel is not in the image: %q", got)
			}
		})
	}
}
