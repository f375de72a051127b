package ostree

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// Deploy makes the commit, with the given kernel arguments, the default
// deployment for the next boot. The OS's own arguments of the current
// default deployment (root=, rw, ...; see PoolArg) are kept, ahead of the
// given ones. The commit must be in the sysroot
// repository (see HasCommit and Pull); otherwise the error is
// ErrCommitNotFound.
//
// It runs one ostree admin deploy and verifies the result by reading the new
// boot entry back; if the default deployment already is that commit with
// those arguments it runs nothing. The booted deployment, real or simulated
// (SimulateBoot pins it), stays on disk as the rollback, and so does the
// previous default (ostree's merge deployment, the source of the /etc merge):
// a sysroot holds at most three deployments of the stateroot, two on a real
// node. Objects freed by removed deployments are pruned by Cleanup, not here.
func (s *Sysroot) Deploy(ctx context.Context, checksum string, kernelArgs []string) error {
	if err := checkChecksum(checksum); err != nil {
		return err
	}
	for _, arg := range kernelArgs {
		if err := checkKernelArg(arg); err != nil {
			return fmt.Errorf("ostree: deploy %s: %w", checksum, err)
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	// Already the default? A staged deployment (finalized at shutdown, not
	// in the boot entries yet) would replace it, so look only without one.
	staged, err := exists(filepath.Join(s.Path, "run", "ostree", "staged-deployment"))
	if err != nil {
		return fmt.Errorf("ostree: deploy %s: %w", checksum, err)
	}
	cur, hasCur, err := s.defaultEntry()
	if err != nil {
		return fmt.Errorf("ostree: deploy %s: %w", checksum, err)
	}
	var keep []string // the OS's own arguments
	if hasCur && cur.deployment.OSName == s.OSName {
		keep = cur.osArgs
	}
	if !staged && hasCur && s.entryIs(cur, checksum, kernelArgs, keep) {
		return nil
	}
	args := []string{"admin", "deploy", s.sysrootFlag(), "--os=" + s.OSName, "--no-prune", "--karg-none"}
	for _, arg := range append(slices.Clone(keep), kernelArgs...) {
		args = append(args, "--karg-append="+arg)
	}
	args = append(args, checksum)
	if _, err := s.run(ctx, args...); err != nil {
		var ce *CommandError
		if errors.As(err, &ce) && strings.Contains(ce.Stderr, "No such metadata object "+checksum+".commit") {
			return fmt.Errorf("ostree: deploy %s: not in the sysroot repository: %w: %w", checksum, ErrCommitNotFound, err)
		}
		return fmt.Errorf("ostree: deploy %s: %w", checksum, err)
	}
	after, ok, err := s.defaultEntry()
	if err != nil {
		return fmt.Errorf("ostree: deploy %s: reading boot entry back: %w", checksum, err)
	}
	if !ok {
		return fmt.Errorf("ostree: deploy %s: no boot entry after deploy", checksum)
	}
	if !s.entryIs(after, checksum, kernelArgs, keep) {
		return fmt.Errorf("ostree: deploy %s: boot entry reads back %s with kernel arguments %q (the OS's %q), want %q (the OS's %q)",
			checksum, after.deployment.ID(), after.kargs, after.osArgs, kernelArgs, keep)
	}
	return nil
}

func (s *Sysroot) defaultEntry() (bootEntry, bool, error) {
	entries, err := s.bootEntries()
	if err != nil || len(entries) == 0 {
		return bootEntry{}, false, err
	}
	return entries[0], true, nil
}

func (s *Sysroot) entryIs(e bootEntry, checksum string, kernelArgs, osArgs []string) bool {
	return e.deployment.OSName == s.OSName && e.deployment.Checksum == checksum &&
		slices.Equal(e.kargs, kernelArgs) && slices.Equal(e.osArgs, osArgs)
}

func checkKernelArg(arg string) error {
	switch {
	case arg == "":
		return errors.New("empty kernel argument")
	case strings.HasPrefix(arg, "ostree="):
		return errors.New("kernel argument ostree= is managed by ostree")
	case strings.ContainsAny(arg, "\n\r"):
		return fmt.Errorf("kernel argument %q contains a line break", arg)
	case len(splitKernelArgs(arg)) != 1 || splitKernelArgs(arg)[0] != arg:
		return fmt.Errorf("kernel argument %q is not a single argument (quote blanks)", arg)
	}
	return nil
}

// SimulateBoot makes the default deployment the booted one on a sysroot
// nothing really boots from, as a reboot would. It records the deployment in
// <sysroot>/run/herd/booted, which Status reports as booted, pins it so that
// ostree never removes it while it is "running", unpins the deployment booted
// before, and then runs Cleanup.
//
// It fails on a sysroot with a real booted deployment.
func (s *Sysroot) SimulateBoot(ctx context.Context) error {
	st, err := s.Status(ctx)
	if err != nil {
		return fmt.Errorf("ostree: simulate boot: %w", err)
	}
	def, ok := st.Default()
	if !ok {
		return fmt.Errorf("ostree: simulate boot: %w", ErrNoDeployment)
	}
	prev, hadPrev, err := s.readBootRecord()
	if err != nil {
		return fmt.Errorf("ostree: simulate boot: %w", err)
	}
	if booted, ok := st.Booted(); ok && !st.SimulatedBoot {
		return fmt.Errorf("ostree: simulate boot: %s is really booted; simulation needs an offline sysroot", booted.ID())
	}
	if !def.Pinned {
		if _, err := s.run(ctx, "admin", "pin", s.sysrootFlag(), "0"); err != nil {
			return fmt.Errorf("ostree: simulate boot: pinning %s: %w", def.ID(), err)
		}
	}
	if err := s.writeBootRecord(*def); err != nil {
		return fmt.Errorf("ostree: simulate boot: %w", err)
	}
	if hadPrev && !prev.same(*def) {
		for i, d := range st.Deployments {
			if d.same(prev) && d.Pinned {
				if _, err := s.run(ctx, "admin", "pin", s.sysrootFlag(), "--unpin", strconv.Itoa(i)); err != nil {
					return fmt.Errorf("ostree: simulate boot: unpinning %s: %w", d.ID(), err)
				}
			}
		}
	}
	if err := s.Cleanup(ctx); err != nil {
		return fmt.Errorf("ostree: simulate boot: %w", err)
	}
	return nil
}
