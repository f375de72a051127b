package image

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// runCaps are the capabilities a RUN step keeps: Docker's default set
// without raw sockets, device nodes and audit writes.
var runCaps = []string{"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
	"CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT"}

// sandboxMounts are mounted fresh in the sandbox; directories bubblewrap
// creates for them in the image are removed again.
var sandboxMounts = []string{"proc", "dev", "tmp", "run"}

// run runs RUN: the command in the image's root file system, in a
// bubblewrap sandbox with every namespace unshared (so no network), a fresh
// /proc, /dev, /tmp and /run, the ARG values as its only environment
// besides PATH and HOME. What it changes becomes the image.
func (b *builder) run(ctx context.Context, in Instruction) error {
	if err := b.materialize(ctx); err != nil {
		return err
	}
	argv := in.Args
	if !in.Exec {
		if _, err := os.Lstat(filepath.Join(b.rootfs, "bin", "sh")); err != nil {
			return errors.New("the image has no /bin/sh for the shell form; use the exec form RUN [\"/path/to/program\", ...]")
		}
		argv = []string{"/bin/sh", "-c", in.Args[0]}
	}
	var created []string
	for _, m := range sandboxMounts {
		if _, err := os.Lstat(filepath.Join(b.rootfs, m)); errors.Is(err, fs.ErrNotExist) {
			created = append(created, filepath.Join(b.rootfs, m))
		}
	}
	args := []string{"--unshare-all", "--die-with-parent", "--new-session",
		"--bind", b.rootfs, "/", "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--tmpfs", "/run",
		"--chdir", "/", "--clearenv",
		"--setenv", "PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"--setenv", "HOME", "/root", "--cap-drop", "ALL"}
	for _, c := range runCaps {
		args = append(args, "--cap-add", c)
	}
	for _, k := range b.order {
		args = append(args, "--setenv", k, b.args[k])
	}
	args = append(args, "--")
	args = append(args, argv...)
	fmt.Fprintf(b.opts.Log, "RUN %s\n", strings.Join(argv, " "))
	cmd := exec.CommandContext(ctx, b.opts.Bwrap, args...)
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
	cmd.Stdout, cmd.Stderr = b.opts.Log, b.opts.Log
	err := cmd.Run()
	for _, dir := range created {
		_ = os.Remove(dir) // only when empty: the command may have filled it
	}
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) && ctx.Err() == nil {
			return fmt.Errorf("%s exited with status %d", argv[0], ee.ExitCode())
		}
		return fmt.Errorf("bubblewrap: %w", err)
	}
	b.trees = []string{"dir=" + b.rootfs}
	return nil
}

// materialize makes b.rootfs the image as built so far: a checkout of the
// base, with the layers since overlaid.
func (b *builder) materialize(ctx context.Context) error {
	if b.rootfs == "" {
		dir := filepath.Join(b.work, "rootfs")
		if b.base != "" {
			if err := b.repo.Checkout(ctx, b.base, dir); err != nil {
				return err
			}
		} else if err := os.Mkdir(dir, 0o755); err != nil {
			return err
		}
		b.rootfs = dir
	}
	dst, err := os.OpenRoot(b.rootfs)
	if err != nil {
		return err
	}
	defer dst.Close()
	for _, layer := range b.layers {
		src, err := os.OpenRoot(layer)
		if err != nil {
			return err
		}
		c := &copier{ctx: ctx, src: src, dst: dst, keepOwner: true}
		err = c.tree(".", "/")
		src.Close()
		if err != nil {
			return fmt.Errorf("overlaying %s: %w", filepath.Base(layer), err)
		}
	}
	b.layers = nil
	return nil
}
