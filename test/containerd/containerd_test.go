package containerd

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestMountsUnder(t *testing.T) {
	info := `22 1 8:1 / / rw - ext4 /dev/vda rw
90 22 0:50 / /tmp/herd-ctd-1/state/run/shm rw - tmpfs shm rw
91 22 0:51 / /tmp/herd-ctd-1/root/with\040space rw - overlay overlay rw
92 22 0:52 / /tmp/herd-ctd-10/other rw - tmpfs t rw
`
	got, err := mountsUnder(strings.NewReader(info), "/tmp/herd-ctd-1")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"/tmp/herd-ctd-1/state/run/shm", "/tmp/herd-ctd-1/root/with space"}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("(-want +got):\n%s", d)
	}
}

// TestPauseImageArchive: the archive is an OCI layout whose blobs match
// their digests and whose index names the image.
func TestPauseImageArchive(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "pause")
	if err := os.WriteFile(bin, []byte("\x7fELF not really"), 0o755); err != nil {
		t.Fatal(err)
	}
	archive := filepath.Join(dir, "pause.tar")
	if err := PauseImageArchive(archive, PauseImage, bin); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(archive)
	if err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{}
	tr := tar.NewReader(bytes.NewReader(data))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(tr)
		files[h.Name] = b
	}
	for name, b := range files {
		if digest, ok := strings.CutPrefix(name, "blobs/sha256/"); ok && digest != "" {
			sum := sha256.Sum256(b)
			if hex.EncodeToString(sum[:]) != digest {
				t.Errorf("blob %s does not match its digest", name)
			}
		}
	}
	var index struct {
		Manifests []descriptor `json:"manifests"`
	}
	if err := json.Unmarshal(files["index.json"], &index); err != nil {
		t.Fatal(err)
	}
	if len(index.Manifests) != 1 || index.Manifests[0].Annotations["io.containerd.image.name"] != PauseImage {
		t.Fatalf("index: %+v", index)
	}
	if _, ok := files["blobs/sha256/"+strings.TrimPrefix(index.Manifests[0].Digest, "sha256:")]; !ok {
		t.Error("the index names a manifest the archive lacks")
	}
	again := filepath.Join(dir, "again.tar")
	if err := PauseImageArchive(again, PauseImage, bin); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(again); !bytes.Equal(b, data) {
		t.Error("the same input gave a different archive")
	}
}
