package image

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"
)

// Where IMAGE puts container images, and the unit that imports them into
// containerd at boot, before the kubelet starts.
const (
	PreloadDir  = "/usr/lib/herd/images"
	PreloadUnit = "/usr/lib/systemd/system/herd-preload-images.service"
	preloadWant = "/usr/lib/systemd/system/multi-user.target.wants/herd-preload-images.service"
)

// preloadUnitText imports every archive in PreloadDir into containerd's
// k8s.io namespace (the CRI's) at boot. Importing is idempotent, so it runs
// on every boot: a new deployment's images are there before the kubelet.
const preloadUnitText = `# Installed by herd os build (IMAGE): import the container images preloaded
# in the OS image into containerd's CRI namespace before the kubelet starts.
[Unit]
Description=Import container images preloaded in the OS image
After=containerd.service
Requires=containerd.service
Before=kubelet.service
ConditionDirectoryNotEmpty=` + PreloadDir + `

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh -c 'for a in ` + PreloadDir + `/*.tar; do ctr --namespace k8s.io images import --all-platforms "$a" || exit 1; done'

[Install]
WantedBy=multi-user.target
`

// image runs IMAGE: an OCI image archive from the build context goes into
// PreloadDir as <sha256>.tar, and the import unit comes with the first one.
func (b *builder) image(ctx context.Context, in Instruction) error {
	name, err := b.expand(in.Args[0])
	if err != nil {
		return err
	}
	src, err := os.OpenRoot(b.opts.Context)
	if err != nil {
		return fmt.Errorf("build context: %w", err)
	}
	defer src.Close()
	matches, err := globContext(src, name)
	if err != nil {
		return err
	}
	if len(matches) != 1 {
		return fmt.Errorf("%s: names %d files, want one OCI archive", name, len(matches))
	}
	sum, err := checkOCIArchive(src, matches[0])
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	layer, err := b.newLayer()
	if err != nil {
		return err
	}
	dst, err := os.OpenRoot(layer)
	if err != nil {
		return err
	}
	defer dst.Close()
	if err := b.makeParents(ctx, dst, PreloadDir); err != nil {
		return err
	}
	c := &copier{ctx: ctx, src: src, dst: dst}
	st, err := src.Lstat(matches[0])
	if err != nil {
		return err
	}
	target := path.Join(PreloadDir, sum+".tar")
	if err := c.entry(matches[0], target, st); err != nil {
		return err
	}
	if err := dst.Chmod(rel(target), 0o644); err != nil {
		return err
	}
	if !b.unit {
		if err := b.makeParents(ctx, dst, path.Dir(preloadWant)); err != nil {
			return err
		}
		if err := c.write(rel(PreloadUnit), strings.NewReader(preloadUnitText)); err != nil {
			return err
		}
		if err := dst.Chmod(rel(PreloadUnit), 0o644); err != nil {
			return err
		}
		if err := dst.Symlink("../"+path.Base(PreloadUnit), rel(preloadWant)); err != nil {
			return err
		}
		b.unit = true
	}
	b.addLayer(layer)
	fmt.Fprintf(b.opts.Log, "IMAGE %s -> %s\n", name, target)
	return nil
}

// checkOCIArchive checks that p is a tar of an OCI image layout (an
// oci-layout file and index.json) and returns its sha256.
func checkOCIArchive(root *os.Root, p string) (string, error) {
	f, err := root.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	tr := tar.NewReader(io.TeeReader(f, h))
	seen := map[string]bool{}
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return "", fmt.Errorf("not a tar archive of an OCI image layout: %w", err)
		}
		seen[path.Clean(strings.TrimPrefix(hdr.Name, "./"))] = true
	}
	if _, err := io.Copy(h, f); err != nil { // the tar's trailing padding
		return "", err
	}
	if !seen["oci-layout"] || !seen["index.json"] {
		return "", errors.New("not an OCI image layout archive: no oci-layout or index.json")
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
