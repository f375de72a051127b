package story

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"herd.dev/herd/os/image"
	"herd.dev/herd/os/ostree/osfixture"
)

// Names the example fleet uses for its OS (examples/fleet-repo/fleet.cue).
const (
	OSRef    = "containeros/x86_64/stable"
	OSRemote = "containeros"
)

// OSImages are the fleet's OS images as a platform team publishes them:
// built by herd os build from the Buildfiles in examples/os, GPG-signed,
// with static deltas, in an archive repository served over HTTP; and the
// operator's trust file that lets nodes pull from it.
type OSImages struct {
	Repo      string // the archive repository
	URL       string // where it is served
	Commits   []string
	Key       *osfixture.GPGKey // signs the commits
	TrustFile string            // the nodes' operator-owned trust file

	dir       string
	templates string // sysroot templates, in /dev/shm: ostree admin deploy syncs and freezes the file system of /boot
	server    *osfixture.Server
}

// BuildOSImages builds examples/os/base as 2026.10.1 and examples/os/node
// on it as 2026.11.0 into dir/repo, signs them, and serves the repository.
func BuildOSImages(ctx context.Context, dir string, log io.Writer) (_ *OSImages, err error) {
	root, err := RepoRoot()
	if err != nil {
		return nil, err
	}
	o := &OSImages{Repo: filepath.Join(dir, "repo"), dir: dir}
	defer func() {
		if err != nil {
			o.Close()
		}
	}()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	if o.templates, err = os.MkdirTemp(shmDir(), "herd-story-sysroots-"); err != nil {
		return nil, err
	}
	if o.Key, err = osfixture.NewGPGKey(ctx, dir); err != nil {
		return nil, err
	}
	for _, b := range []struct{ name, version string }{{"base", "2026.10.1"}, {"node", "2026.11.0"}} {
		ctxDir := filepath.Join(dir, "context", b.name)
		if err := osfixture.CopyContext(filepath.Join(root, "examples", "os", b.name), ctxDir); err != nil {
			return nil, err
		}
		if b.name == "node" {
			if err := os.MkdirAll(filepath.Join(ctxDir, "images"), 0o755); err != nil {
				return nil, err
			}
			if err := osfixture.WriteOCIArchive(filepath.Join(ctxDir, "images", "pause.tar"), "registry.k8s.io/pause:3.10", "pause"); err != nil {
				return nil, err
			}
		}
		commit, err := o.Build(ctx, filepath.Join(ctxDir, "Buildfile"), map[string]string{"VERSION": b.version}, log)
		if err != nil {
			return nil, fmt.Errorf("herd os build examples/os/%s: %w", b.name, err)
		}
		o.Commits = append(o.Commits, commit)
	}
	if o.server, err = osfixture.Serve(o.Repo); err != nil {
		return nil, err
	}
	o.URL = o.server.URL
	key, err := os.ReadFile(o.Key.PublicKeyPath)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, OSRemote+".asc"), key, 0o644); err != nil {
		return nil, err
	}
	o.TrustFile = filepath.Join(dir, "remotes.yaml")
	trust := fmt.Sprintf("# The operator's trust: nodes pull only from these remotes.\nremotes:\n  - name: %s\n    url: %s\n    gpgKeyFile: %s.asc\n", OSRemote, o.URL, OSRemote)
	return o, os.WriteFile(o.TrustFile, []byte(trust), 0o644)
}

// Build runs herd os build on a Buildfile into the repository on OSRef,
// signed with Key.
func (o *OSImages) Build(ctx context.Context, buildfile string, args map[string]string, log io.Writer) (string, error) {
	res, err := image.Build(ctx, image.Options{
		Buildfile: buildfile, Repo: o.Repo, Ref: OSRef, BuildArgs: args,
		SignKey: o.Key.ID, GPGHome: o.Key.Home, Log: log,
	})
	if err != nil {
		return "", err
	}
	return res.Commit, nil
}

// Fixture wraps the repository for the simulator.
func (o *OSImages) Fixture() *osfixture.Repo {
	return osfixture.Existing(o.templates, o.Repo, o.URL, OSRef, o.Key.PublicKeyPath, o.Commits)
}

// Server counts what the repository served.
func (o *OSImages) Server() *osfixture.Server { return o.server }

// Close stops serving and the signing key's agent.
func (o *OSImages) Close() error {
	var err error
	if o.server != nil {
		err = o.server.Close()
	}
	if o.Key != nil {
		if kerr := o.Key.Close(); err == nil {
			err = kerr
		}
	}
	if o.templates != "" {
		if rerr := os.RemoveAll(o.templates); err == nil {
			err = rerr
		}
	}
	return err
}

func shmDir() string {
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		return "/dev/shm"
	}
	return ""
}
