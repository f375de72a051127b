package node

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"herd.dev/herd/os/ostree"
)

// sysrootStamp is a cheap fingerprint of a sysroot's deployments: ostree
// swaps boot/loader between loader.0 and loader.1 on every change of the
// boot entries, deployments come and go in ostree/deploy/<os>/deploy, a
// staged deployment appears in run/ostree, and SimulateBoot records the
// booted deployment in run/herd. Any change there changes the stamp.
func sysrootStamp(s *ostree.Sysroot) string {
	var b strings.Builder
	link, _ := os.Readlink(filepath.Join(s.Path, "boot", "loader"))
	b.WriteString(link)
	for _, p := range []string{
		filepath.Join(s.Path, "ostree", "deploy", s.OSName, "deploy"),
		filepath.Join(s.Path, "run", "ostree", "staged-deployment"),
		filepath.Join(s.Path, "run", "herd", "booted"),
	} {
		if st, err := os.Stat(p); err == nil {
			fmt.Fprintf(&b, "|%d.%d", st.ModTime().UnixNano(), st.Size())
		} else {
			b.WriteString("|-")
		}
	}
	return b.String()
}

// osStatus returns the sysroot's status, reading it with ostree admin status
// only when the sysroot changed since the last read: an agent that is told
// to change the OS does not pay for a status command first. A real reboot
// starts a new agent, which reads it afresh.
func (a *Agent) osStatus(ctx context.Context) (ostree.Status, error) {
	stamp := sysrootStamp(a.opts.Sysroot)
	if a.osCache != nil && stamp == a.osStamp {
		return *a.osCache, nil
	}
	st, err := a.opts.Sysroot.Status(ctx)
	if err != nil {
		return ostree.Status{}, err
	}
	a.osCache, a.osStamp = &st, stamp
	return st, nil
}
