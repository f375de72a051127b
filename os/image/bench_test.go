package image_test

import (
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"herd.dev/herd/os/image"
	"herd.dev/herd/os/ostree/osfixture"
)

// BenchmarkBuildOneFileLayer builds a one-file layer (COPY) on a 100 MiB
// base in an archive repository: the commit alone (--no-delta), and with
// the static delta from the ref's previous commit, as herd os build does
// by default. Each iteration copies another file content, so each makes a
// new commit.
//
//	go test -run '^$' -bench BuildOneFileLayer -benchtime 10x ./os/image/
func BenchmarkBuildOneFileLayer(b *testing.B) {
	r, err := osfixture.NewRepo(b.Context(), b.TempDir(), osfixture.Options{Versions: 1, PayloadMiB: 100})
	if err != nil {
		b.Fatal(err)
	}
	defer r.Close()
	ctxDir := b.TempDir()
	bf := filepath.Join(ctxDir, "Buildfile")
	os.WriteFile(bf, []byte("FROM "+r.Ref+"\nCOPY file /usr/share/herd/file\nLABEL version=bench\n"), 0o644)
	for _, mode := range []string{"no-delta", "with-delta"} {
		b.Run(mode, func(b *testing.B) {
			i := 0
			for b.Loop() {
				b.StopTimer()
				os.WriteFile(filepath.Join(ctxDir, "file"), []byte("content "+mode+strconv.Itoa(i)+"\n"), 0o644)
				i++
				b.StartTimer()
				_, err := image.Build(b.Context(), image.Options{Buildfile: bf, Repo: r.Path, Ref: "bench/" + mode, NoDelta: mode == "no-delta"})
				if err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
