package osfixture

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// WriteOCIArchive writes a tar of a minimal OCI image layout to path: one
// linux/amd64 image named ref (org.opencontainers.image.ref.name) whose one
// layer holds the file /hello with content. It is what IMAGE preloads in
// tests; ctr images import accepts it.
func WriteOCIArchive(path, ref, content string) error {
	var layer bytes.Buffer
	gz := gzip.NewWriter(&layer)
	lt := tar.NewWriter(gz)
	if err := lt.WriteHeader(&tar.Header{Name: "hello", Mode: 0o644, Size: int64(len(content)), Typeflag: tar.TypeReg}); err != nil {
		return err
	}
	if _, err := lt.Write([]byte(content)); err != nil {
		return err
	}
	if err := lt.Close(); err != nil {
		return err
	}
	if err := gz.Close(); err != nil {
		return err
	}
	diff := sha256.Sum256(func() []byte { // the uncompressed layer's digest
		var b bytes.Buffer
		t := tar.NewWriter(&b)
		_ = t.WriteHeader(&tar.Header{Name: "hello", Mode: 0o644, Size: int64(len(content)), Typeflag: tar.TypeReg})
		_, _ = t.Write([]byte(content))
		_ = t.Close()
		return b.Bytes()
	}())
	blobs := map[string][]byte{}
	add := func(b []byte) (string, int) {
		sum := sha256.Sum256(b)
		d := hex.EncodeToString(sum[:])
		blobs[d] = b
		return "sha256:" + d, len(b)
	}
	layerDigest, layerSize := add(layer.Bytes())
	config, _ := json.Marshal(map[string]any{
		"architecture": "amd64", "os": "linux",
		"config": map[string]any{"Cmd": []string{"/hello"}},
		"rootfs": map[string]any{"type": "layers", "diff_ids": []string{"sha256:" + hex.EncodeToString(diff[:])}},
	})
	configDigest, configSize := add(config)
	manifest, _ := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.manifest.v1+json",
		"config":        map[string]any{"mediaType": "application/vnd.oci.image.config.v1+json", "digest": configDigest, "size": configSize},
		"layers":        []any{map[string]any{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layerDigest, "size": layerSize}},
	})
	manifestDigest, manifestSize := add(manifest)
	index, _ := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"manifests": []any{map[string]any{
			"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifestDigest, "size": manifestSize,
			"platform":    map[string]string{"architecture": "amd64", "os": "linux"},
			"annotations": map[string]string{"org.opencontainers.image.ref.name": ref},
		}},
	})

	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("osfixture: %w", err)
	}
	tw := tar.NewWriter(f)
	file := func(name string, data []byte) error {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(data)), Typeflag: tar.TypeReg}); err != nil {
			return err
		}
		_, err := tw.Write(data)
		return err
	}
	err = file("oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`))
	if err == nil {
		err = file("index.json", index)
	}
	for _, d := range []string{layerDigest, configDigest, manifestDigest} {
		if err == nil {
			err = file("blobs/sha256/"+d[len("sha256:"):], blobs[d[len("sha256:"):]])
		}
	}
	if err == nil {
		err = tw.Close()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("osfixture: OCI archive %s: %w", path, err)
	}
	return nil
}

// StaticBusybox is Debian's static busybox (package busybox-static), which
// example images copy in to RUN shell commands.
const StaticBusybox = "/usr/bin/busybox"

// CopyContext copies the build context src (e.g. examples/os/base) to dst
// and adds a static busybox as dst/busybox, as the example Buildfiles
// expect. Symlinks are copied as symlinks.
func CopyContext(src, dst string) error {
	cmd := exec.Command("cp", "-a", src+"/.", dst)
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return err
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("osfixture: copy %s: %w: %s", src, err, out)
	}
	cmd = exec.Command("cp", StaticBusybox, filepath.Join(dst, "busybox"))
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("osfixture: copy busybox: %w: %s", err, out)
	}
	return nil
}
