package containerd

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"time"
)

// OCI media types of the pause image's parts.
const (
	mediaIndex    = "application/vnd.oci.image.index.v1+json"
	mediaManifest = "application/vnd.oci.image.manifest.v1+json"
	mediaConfig   = "application/vnd.oci.image.config.v1+json"
	mediaLayer    = "application/vnd.oci.image.layer.v1.tar"
)

// descriptor is an OCI content descriptor.
type descriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int64             `json:"size"`
	Annotations map[string]string `json:"annotations,omitempty"`
	Platform    *platform         `json:"platform,omitempty"`
}

type platform struct {
	Architecture string `json:"architecture"`
	OS           string `json:"os"`
}

// blob is one piece of content of an image archive.
type blob struct {
	desc descriptor
	data []byte
}

func newBlob(mediaType string, data []byte) blob {
	sum := sha256.Sum256(data)
	return blob{desc: descriptor{MediaType: mediaType, Digest: "sha256:" + hex.EncodeToString(sum[:]), Size: int64(len(data))}, data: data}
}

// buildPause compiles the pause program statically into dir and returns the
// binary's path. It uses the go command that runs the tests.
func buildPause(dir string) (string, error) {
	out := filepath.Join(dir, "pause")
	goBin := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(goBin); err != nil {
		goBin = "go"
	}
	cmd := exec.Command(goBin, "build", "-trimpath", "-ldflags=-s -w", "-o", out, "herd.dev/herd/test/containerd/pause")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("containerd: build the pause binary: %v\n%s", err, b)
	}
	return out, nil
}

// PauseImageArchive writes to path an OCI image archive (as `ctr images
// import` reads it) of an image named ref whose only file is the static
// binary at bin, run as its entrypoint.
func PauseImageArchive(path, ref, bin string) error {
	exe, err := os.ReadFile(bin)
	if err != nil {
		return fmt.Errorf("containerd: read the pause binary: %w", err)
	}
	layer, err := tarOf(map[string][]byte{"pause": exe})
	if err != nil {
		return err
	}
	layerBlob := newBlob(mediaLayer, layer)
	config, err := json.Marshal(map[string]any{
		"architecture": runtime.GOARCH,
		"os":           "linux",
		"config":       map[string]any{"Entrypoint": []string{"/pause"}},
		"rootfs":       map[string]any{"type": "layers", "diff_ids": []string{layerBlob.desc.Digest}},
	})
	if err != nil {
		return err
	}
	configBlob := newBlob(mediaConfig, config)
	manifest, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     mediaManifest,
		"config":        configBlob.desc,
		"layers":        []descriptor{layerBlob.desc},
	})
	if err != nil {
		return err
	}
	manifestBlob := newBlob(mediaManifest, manifest)
	mdesc := manifestBlob.desc
	mdesc.Platform = &platform{Architecture: runtime.GOARCH, OS: "linux"}
	mdesc.Annotations = map[string]string{"io.containerd.image.name": ref}
	index, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     mediaIndex,
		"manifests":     []descriptor{mdesc},
	})
	if err != nil {
		return err
	}
	files := map[string][]byte{
		"oci-layout": []byte(`{"imageLayoutVersion":"1.0.0"}`),
		"index.json": index,
	}
	for _, b := range []blob{layerBlob, configBlob, manifestBlob} {
		files["blobs/sha256/"+b.desc.Digest[len("sha256:"):]] = b.data
	}
	archive, err := tarOf(files)
	if err != nil {
		return err
	}
	if err := os.WriteFile(path, archive, 0o644); err != nil {
		return fmt.Errorf("containerd: write the pause image archive: %w", err)
	}
	return nil
}

// tarOf returns a tar of files (executable, owned by root), in a fixed order
// and with a fixed time so that the same input gives the same bytes.
func tarOf(files map[string][]byte) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	names := make([]string, 0, len(files))
	for name := range files {
		names = append(names, name)
	}
	slices.Sort(names)
	epoch := time.Unix(0, 0)
	dirs := map[string]bool{}
	for _, name := range names {
		for d := filepath.Dir(name); d != "." && !dirs[d]; d = filepath.Dir(d) {
			dirs[d] = true
		}
	}
	dirNames := make([]string, 0, len(dirs))
	for d := range dirs {
		dirNames = append(dirNames, d)
	}
	slices.Sort(dirNames)
	for _, d := range dirNames {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: 0o755, ModTime: epoch}); err != nil {
			return nil, err
		}
	}
	for _, name := range names {
		data := files[name]
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o755, Size: int64(len(data)), ModTime: epoch}); err != nil {
			return nil, err
		}
		if _, err := tw.Write(data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
