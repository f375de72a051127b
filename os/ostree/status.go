package ostree

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// Deployment is one OSTree deployment: a checkout of a commit for a stateroot.
type Deployment struct {
	OSName   string
	Checksum string // commit
	Serial   int    // distinguishes deployments of the same commit
	Version  string // the commit's "version" metadata, if any

	// Booted is the running deployment: the one ostree reports as booted,
	// or, on a sysroot nothing has booted from, the one SimulateBoot recorded.
	Booted bool
	// Staged deployments are finalized by ostree at shutdown.
	Staged bool
	// Rollback is the deployment the node falls back to if the default one
	// fails: the booted deployment while another one is pending as default,
	// otherwise the first deployment after the default. Booted and Rollback
	// can both be set. (ostree admin status labels only the latter case.)
	Rollback bool
	Pinned   bool // protected from ostree's automatic removal

	// KernelArgs as written to the boot entry, without the ostree-managed
	// ostree= (and init= for initramfs-less kernels) arguments and without
	// the OS's own (see Sysroot.PoolArg). Nil for a staged deployment,
	// whose boot entry does not exist yet.
	KernelArgs []string
	// OSKernelArgs are the boot entry's arguments that belong to the OS,
	// which deploys keep (see Sysroot.PoolArg).
	OSKernelArgs []string
	Origin       string // refspec from the .origin file, when present
}

// ID is "osname checksum.serial", as ostree admin status prints it.
func (d Deployment) ID() string { return fmt.Sprintf("%s %s.%d", d.OSName, d.Checksum, d.Serial) }

func (d Deployment) same(o Deployment) bool {
	return d.OSName == o.OSName && d.Checksum == o.Checksum && d.Serial == o.Serial
}

// Status lists the deployments of a sysroot in boot order.
type Status struct {
	// Deployments in boot order: index 0 is the default for the next boot.
	Deployments []Deployment
	// SimulatedBoot is set when the booted deployment comes from
	// SimulateBoot's record rather than from ostree.
	SimulatedBoot bool
}

func (st Status) find(pred func(*Deployment) bool) (*Deployment, bool) {
	for i := range st.Deployments {
		if pred(&st.Deployments[i]) {
			return &st.Deployments[i], true
		}
	}
	return nil, false
}

// Default returns the deployment the node boots next.
func (st Status) Default() (*Deployment, bool) {
	if len(st.Deployments) == 0 {
		return nil, false
	}
	return &st.Deployments[0], true
}

// Booted returns the running (or simulated running) deployment.
func (st Status) Booted() (*Deployment, bool) {
	return st.find(func(d *Deployment) bool { return d.Booted })
}

// Rollback returns the deployment the node falls back to; see Deployment.Rollback.
func (st Status) Rollback() (*Deployment, bool) {
	return st.find(func(d *Deployment) bool { return d.Rollback })
}

// Status reads the sysroot's deployments: one ostree admin status command,
// plus the boot entries (kernel arguments) and the simulated-boot record read
// from disk.
func (s *Sysroot) Status(ctx context.Context) (Status, error) {
	out, err := s.run(ctx, "admin", "status", s.sysrootFlag())
	if err != nil {
		return Status{}, fmt.Errorf("ostree: status: %w", err)
	}
	deps, err := parseAdminStatus(out)
	if err != nil {
		return Status{}, fmt.Errorf("ostree: status: %w", err)
	}
	entries, err := s.bootEntries()
	if err != nil {
		return Status{}, fmt.Errorf("ostree: status: %w", err)
	}
	for i := range deps {
		for _, e := range entries {
			if e.deployment.same(deps[i]) {
				deps[i].KernelArgs, deps[i].OSKernelArgs = e.kargs, e.osArgs
			}
		}
	}
	simulated := false
	if !slices.ContainsFunc(deps, func(d Deployment) bool { return d.Booted }) {
		rec, ok, err := s.readBootRecord()
		if err != nil {
			return Status{}, fmt.Errorf("ostree: status: %w", err)
		}
		for i := range deps {
			if ok && deps[i].same(rec) {
				deps[i].Booted = true
				simulated = true
			}
		}
	}
	markRollback(deps)
	return Status{Deployments: deps, SimulatedBoot: simulated}, nil
}

func markRollback(deps []Deployment) {
	if len(deps) == 0 {
		return
	}
	for i := range deps {
		if deps[i].Booted && i > 0 {
			deps[i].Rollback = true
			return
		}
	}
	for i := 1; i < len(deps); i++ {
		if deps[i].OSName == deps[0].OSName {
			deps[i].Rollback = true
			return
		}
	}
}

// "* herd 0123…cdef.0 (pending)"
var statusLineRE = regexp.MustCompile(`^([* ]) (\S+) ([0-9a-f]{64})\.(\d+)(?: \((staged|pending|rollback)\))?$`)

// parseAdminStatus parses `ostree admin status` (2022.7 text format).
func parseAdminStatus(out string) ([]Deployment, error) {
	var deps []Deployment
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line == "No deployments." {
			continue
		}
		if m := statusLineRE.FindStringSubmatch(line); m != nil {
			serial, err := strconv.Atoi(m[4])
			if err != nil {
				return nil, fmt.Errorf("parsing %q: %w", line, err)
			}
			deps = append(deps, Deployment{
				OSName:   m[2],
				Checksum: m[3],
				Serial:   serial,
				Booted:   m[1] == "*",
				Staged:   m[5] == "staged",
			})
			continue
		}
		if !strings.HasPrefix(line, " ") {
			return nil, fmt.Errorf("unexpected ostree admin status line %q", line)
		}
		if len(deps) == 0 {
			continue
		}
		d := &deps[len(deps)-1]
		field := strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(field, "Version: "):
			d.Version = strings.TrimPrefix(field, "Version: ")
		case field == "Pinned: yes":
			d.Pinned = true
		case strings.HasPrefix(field, "origin refspec: "):
			d.Origin = strings.TrimPrefix(field, "origin refspec: ")
		}
	}
	return deps, sc.Err()
}

// bootEntry is a boot loader entry (/boot/loader/entries/*.conf) written by ostree.
type bootEntry struct {
	version    string
	deployment Deployment // OSName, Checksum, Serial only
	kargs      []string   // the pool's
	osArgs     []string   // the OS's own, kept across deploys
}

// bootEntries reads the current boot loader entries, default first. This is
// the source of truth ostree itself loads deployments from.
func (s *Sysroot) bootEntries() ([]bootEntry, error) {
	dir := filepath.Join(s.Path, "boot", "loader", "entries")
	names, err := filepath.Glob(filepath.Join(dir, "*.conf"))
	if err != nil {
		return nil, err
	}
	var entries []bootEntry
	for _, name := range names {
		e, ok, err := s.readBootEntry(name)
		if err != nil {
			return nil, err
		}
		if ok {
			entries = append(entries, e)
		}
	}
	// Like ostree: highest version first.
	sort.SliceStable(entries, func(i, j int) bool {
		return compareVersion(entries[i].version, entries[j].version) > 0
	})
	return entries, nil
}

func compareVersion(a, b string) int {
	ai, errA := strconv.Atoi(a)
	bi, errB := strconv.Atoi(b)
	if errA == nil && errB == nil {
		return ai - bi
	}
	return strings.Compare(a, b)
}

func (s *Sysroot) readBootEntry(name string) (bootEntry, bool, error) {
	data, err := os.ReadFile(name)
	if err != nil {
		return bootEntry{}, false, err
	}
	var e bootEntry
	var options string
	for line := range strings.SplitSeq(string(data), "\n") {
		key, val, _ := strings.Cut(strings.TrimSpace(line), " ")
		switch key {
		case "version":
			e.version = strings.TrimSpace(val)
		case "options":
			options = strings.TrimSpace(val)
		}
	}
	var ostreeArg string
	e.kargs = []string{} // an entry with no arguments has empty, not nil, kargs
	for _, arg := range splitKernelArgs(options) {
		switch {
		case strings.HasPrefix(arg, "ostree="):
			ostreeArg = strings.TrimPrefix(arg, "ostree=")
		case strings.HasPrefix(arg, "init=/ostree/boot.") && strings.HasSuffix(arg, "/ostree-prepare-root"):
			// Added by ostree for kernels without an initramfs.
		case s.PoolArg != nil && !s.PoolArg(arg):
			e.osArgs = append(e.osArgs, arg)
		default:
			e.kargs = append(e.kargs, arg)
		}
	}
	if ostreeArg == "" {
		return bootEntry{}, false, nil // not an ostree entry
	}
	// ostree=/ostree/boot.N/OS/BOOTCSUM/SERIAL -> ../../../deploy/OS/deploy/CSUM.SERIAL
	target, err := os.Readlink(filepath.Join(s.Path, ostreeArg))
	if err != nil {
		return bootEntry{}, false, fmt.Errorf("boot entry %s: %w", filepath.Base(name), err)
	}
	csum, serial, ok := strings.Cut(filepath.Base(target), ".")
	n, err := strconv.Atoi(serial)
	if !ok || err != nil || !checksumRE.MatchString(csum) {
		return bootEntry{}, false, fmt.Errorf("boot entry %s: unexpected deployment link %q", filepath.Base(name), target)
	}
	e.deployment = Deployment{
		OSName:   filepath.Base(filepath.Dir(filepath.Dir(target))),
		Checksum: csum,
		Serial:   n,
	}
	return e, true, nil
}

// splitKernelArgs splits a kernel command line on blanks outside double quotes.
func splitKernelArgs(cmdline string) []string {
	var args []string
	var cur strings.Builder
	quoted := false
	for _, r := range cmdline {
		switch {
		case r == '"':
			quoted = !quoted
			cur.WriteRune(r)
		case (r == ' ' || r == '\t') && !quoted:
			if cur.Len() > 0 {
				args = append(args, cur.String())
				cur.Reset()
			}
		default:
			cur.WriteRune(r)
		}
	}
	if cur.Len() > 0 {
		args = append(args, cur.String())
	}
	return args
}

// The simulated-boot record: "<osname> <checksum>.<serial>\n".
func (s *Sysroot) bootRecordPath() string {
	return filepath.Join(s.Path, "run", "herd", "booted")
}

func (s *Sysroot) readBootRecord() (Deployment, bool, error) {
	data, err := os.ReadFile(s.bootRecordPath())
	if errors.Is(err, os.ErrNotExist) {
		return Deployment{}, false, nil
	}
	if err != nil {
		return Deployment{}, false, err
	}
	osname, rest, ok1 := strings.Cut(strings.TrimSpace(string(data)), " ")
	csum, serial, ok2 := strings.Cut(rest, ".")
	n, err := strconv.Atoi(serial)
	if !ok1 || !ok2 || err != nil || !checksumRE.MatchString(csum) {
		return Deployment{}, false, fmt.Errorf("corrupt boot record %s: %q", s.bootRecordPath(), data)
	}
	return Deployment{OSName: osname, Checksum: csum, Serial: n}, true, nil
}

func (s *Sysroot) writeBootRecord(d Deployment) error {
	path := s.bootRecordPath()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(d.ID()+"\n"), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
