// Package containerd runs a real containerd (Debian's containerd and runc)
// for Herd's CRI tests, with its root, state, config and socket in a temp dir.
//
// Start writes a config whose CRI plugin uses a pause image built here (a
// static Go binary packed as an OCI image archive and imported with `ctr`),
// since no image registry is reachable. CNI is optional: without a CNI
// config the runtime reports NetworkReady=false, as a node without a network
// plugin does; EnableCNI writes a loopback-only network (Debian's
// containernetworking-plugins), which makes NetworkReady true without
// touching the host's network. Tests run host-network sandboxes, which need
// no CNI at all. Stop removes every sandbox, stops containerd and its shims
// (by PID) and unmounts what is left under the dir.
package containerd

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// PauseImage is the name of the locally built pause image.
const PauseImage = "herd.dev/pause:test"

// Namespace is the containerd namespace of the CRI plugin.
const Namespace = "k8s.io"

// CNIBinDir is where Debian's containernetworking-plugins install the
// plugins.
const CNIBinDir = "/usr/lib/cni"

// Binaries Start needs, and the Debian package of each.
var binaries = map[string]string{
	"containerd":              "containerd",
	"containerd-shim-runc-v2": "containerd",
	"ctr":                     "containerd",
	"runc":                    "runc",
}

// Options configure Start. The zero value is valid.
type Options struct {
	// CNI writes a loopback-only CNI config before containerd starts, so
	// that the runtime reports NetworkReady=true from the start.
	CNI bool
	// StartTimeout bounds Start; default 1m.
	StartTimeout time.Duration
}

// Containerd is a running containerd.
type Containerd struct {
	dir     string
	socket  string
	cfgPath string // the config file, for Restart
	cmd     *exec.Cmd
	done    chan struct{}
	waitErr error

	stopOnce sync.Once
	stopErr  error
}

// Dir is the run directory: config, root, state, CNI config and log.
func (c *Containerd) Dir() string { return c.dir }

// Socket is the path of containerd's gRPC socket, which serves the CRI.
func (c *Containerd) Socket() string { return c.socket }

// Root is containerd's root directory (images, snapshots), the filesystem a
// node's runtime disk checks watch.
func (c *Containerd) Root() string { return filepath.Join(c.dir, "root") }

// PID is containerd's process ID.
func (c *Containerd) PID() int { return c.cmd.Process.Pid }

// LogPath is containerd's log file.
func (c *Containerd) LogPath() string { return filepath.Join(c.dir, "containerd.log") }

func (c *Containerd) cniConfDir() string { return filepath.Join(c.dir, "cni") }

// Start starts containerd in a new temp dir and imports the pause image.
// On error nothing is left running.
func Start(ctx context.Context, opts Options) (_ *Containerd, err error) {
	if opts.StartTimeout <= 0 {
		opts.StartTimeout = time.Minute
	}
	if err := checkBinaries(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, opts.StartTimeout)
	defer cancel()
	// A short path: the socket path must fit in a sockaddr_un (108 bytes).
	dir, err := os.MkdirTemp("", "herd-ctd-")
	if err != nil {
		return nil, fmt.Errorf("containerd: create run dir: %w", err)
	}
	c := &Containerd{dir: dir, socket: filepath.Join(dir, "c.sock"), done: make(chan struct{})}
	defer func() {
		if err != nil {
			if stopErr := c.Stop(); stopErr != nil {
				err = fmt.Errorf("%w (stopping after the failure: %v)", err, stopErr)
			}
		}
	}()
	if err := os.MkdirAll(c.cniConfDir(), 0o755); err != nil {
		return c, fmt.Errorf("containerd: %w", err)
	}
	if opts.CNI {
		if err := c.EnableCNI(); err != nil {
			return c, err
		}
	}
	pauseBin, err := buildPause(dir)
	if err != nil {
		return c, err
	}
	archive := filepath.Join(dir, "pause.tar")
	if err := PauseImageArchive(archive, PauseImage, pauseBin); err != nil {
		return c, err
	}
	config := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(config, []byte(c.config()), 0o644); err != nil {
		return c, fmt.Errorf("containerd: write config: %w", err)
	}
	c.cfgPath = config
	if err := c.spawn(config); err != nil {
		return c, err
	}
	if err := c.waitSocket(ctx); err != nil {
		return c, err
	}
	if err := c.ctr(ctx, "images", "import", archive); err != nil {
		return c, err
	}
	return c, nil
}

// checkBinaries fails with the packages to install when a binary is missing.
func checkBinaries() error {
	var missing []string
	for bin, pkg := range binaries {
		if _, err := exec.LookPath(bin); err != nil {
			missing = append(missing, fmt.Sprintf("%s (Debian package %s)", bin, pkg))
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("containerd: missing %s: run `make deps` as root", strings.Join(missing, ", "))
	}
	if os.Geteuid() != 0 {
		return errors.New("containerd: must run as root (CI runs the tests as root)")
	}
	return nil
}

// config is containerd's config: everything under dir, the CRI plugin with
// the local pause image, runc with cgroupfs and its state, like network
// namespaces, under dir, and the plugins that cannot work here disabled.
func (c *Containerd) config() string {
	return fmt.Sprintf(`version = 2
root = %[1]q
state = %[2]q
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.internal.v1.opt",
  "io.containerd.tracing.processor.v1.otlp",
]

[grpc]
  address = %[3]q

[ttrpc]
  address = %[4]q

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %[5]q
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  netns_mounts_under_state_dir = true
  # A sandbox's OOM score may not go below containerd's own: lowering it
  # needs CAP_SYS_RESOURCE, which the test machine's root lacks.
  restrict_oom_score_adj = true

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
  Root = %[8]q

[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = %[6]q
  conf_dir = %[7]q
`, c.Root(), filepath.Join(c.dir, "state"), c.socket, c.socket+".ttrpc", PauseImage, CNIBinDir, c.cniConfDir(), filepath.Join(c.dir, "runc"))
}

// EnableCNI writes a CNI config with only the loopback plugin. containerd
// watches the directory and reports NetworkReady=true once it has loaded it.
func (c *Containerd) EnableCNI() error {
	if _, err := os.Stat(filepath.Join(CNIBinDir, "loopback")); err != nil {
		return fmt.Errorf("containerd: no CNI loopback plugin (Debian package containernetworking-plugins): %w", err)
	}
	conf := `{"cniVersion": "1.0.0", "name": "herd-test", "plugins": [{"type": "loopback"}]}`
	path := filepath.Join(c.cniConfDir(), "10-herd-test.conflist")
	if err := os.WriteFile(path+".tmp", []byte(conf), 0o644); err != nil {
		return fmt.Errorf("containerd: write CNI config: %w", err)
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		return fmt.Errorf("containerd: write CNI config: %w", err)
	}
	return nil
}

func (c *Containerd) spawn(config string) error {
	log, err := os.OpenFile(c.LogPath(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644) // appended to after a Restart
	if err != nil {
		return fmt.Errorf("containerd: create log: %w", err)
	}
	cmd := exec.Command("containerd", "--config", config)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.Dir = c.dir
	// Its own process group: a Ctrl-C of the test does not reach it first,
	// Stop does.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		log.Close()
		return fmt.Errorf("containerd: start: %w", err)
	}
	c.cmd = cmd
	go func() {
		c.waitErr = cmd.Wait()
		log.Close()
		close(c.done)
	}()
	return nil
}

// waitSocket polls until the socket accepts `ctr version`, containerd exits
// or ctx ends.
func (c *Containerd) waitSocket(ctx context.Context) error {
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		select {
		case <-c.done:
			return fmt.Errorf("containerd: exited while starting: %v; log:\n%s", c.waitErr, c.TailLog(30))
		default:
		}
		if _, err := os.Stat(c.socket); err == nil {
			if last = c.ctr(ctx, "version"); last == nil {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("containerd: not serving on %s (last error: %v): %w; log:\n%s", c.socket, last, ctx.Err(), c.TailLog(30))
		case <-tick.C:
		}
	}
}

// ctr runs the ctr CLI against this containerd in the CRI namespace.
func (c *Containerd) ctr(ctx context.Context, args ...string) error {
	full := append([]string{"--address", c.socket, "--namespace", Namespace}, args...)
	out, err := exec.CommandContext(ctx, "ctr", full...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("containerd: ctr %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Exited reports whether containerd has exited.
func (c *Containerd) Exited() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// Kill stops containerd with SIGKILL, as a crash would, and waits for it;
// its shims and sandboxes keep running, and Stop still cleans them up.
func (c *Containerd) Kill() error {
	if c.cmd == nil || c.Exited() {
		return nil
	}
	if err := c.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		return fmt.Errorf("containerd: kill pid %d: %w", c.cmd.Process.Pid, err)
	}
	<-c.done
	return nil
}

// Restart starts containerd again, as its supervisor does: it kills it if
// it runs (SIGKILL: shims and sandboxes keep running, as on a node) and
// starts it on the same root, state and socket, and waits until it serves.
func (c *Containerd) Restart(ctx context.Context) error {
	if err := c.Kill(); err != nil {
		return err
	}
	c.done, c.waitErr = make(chan struct{}), nil
	if err := c.spawn(c.cfgPath); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	return c.waitSocket(ctx)
}

// Stop stops containerd (SIGTERM, SIGKILL after 15 s), then the shims and
// sandbox processes still running (by the PIDs in the state dir), unmounts
// what is mounted under the dir and removes it. RemoveSandboxes before Stop
// shuts the sandboxes down the way kubelet would.
func (c *Containerd) Stop() error {
	c.stopOnce.Do(func() {
		var errs []error
		if c.cmd != nil && !c.Exited() {
			_ = c.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-c.done:
			case <-time.After(15 * time.Second):
				_ = c.cmd.Process.Signal(syscall.SIGKILL)
				<-c.done
			}
		}
		errs = append(errs, c.killLeftovers()...)
		errs = append(errs, unmountUnder(c.dir)...)
		if err := os.RemoveAll(c.dir); err != nil {
			errs = append(errs, fmt.Errorf("containerd: remove %s: %w", c.dir, err))
		}
		c.stopErr = errors.Join(errs...)
	})
	return c.stopErr
}

// killLeftovers kills, by the PIDs recorded in the state dir, the sandbox
// processes (init.pid) and then the shims (shim.pid) that outlived
// containerd, then any shim of this containerd still running (one whose
// task was deleted has no state dir left but may not have exited), and
// waits until they are gone.
func (c *Containerd) killLeftovers() []error {
	var pids []int
	taskDir := filepath.Join(c.dir, "state", "io.containerd.runtime.v2.task", Namespace)
	for _, name := range []string{"init.pid", "shim.pid"} {
		files, _ := filepath.Glob(filepath.Join(taskDir, "*", name))
		for _, f := range files {
			if pid, err := readPID(f); err == nil {
				pids = append(pids, pid)
			}
		}
	}
	pids = append(pids, shimsOf(c.socket)...)
	var errs []error
	for _, pid := range pids {
		if !alive(pid) {
			continue
		}
		_ = syscall.Kill(pid, syscall.SIGKILL)
		if err := waitGone(pid, 10*time.Second); err != nil {
			errs = append(errs, err)
		}
	}
	return errs
}

// shimsOf lists the shim processes started for the containerd serving on
// socket: their command line names it as -address.
func shimsOf(socket string) []int {
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	var pids []int
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
		if len(args) == 0 || !strings.Contains(filepath.Base(args[0]), "containerd-shim") || !slices.Contains(args, socket) {
			continue
		}
		if pid, err := strconv.Atoi(filepath.Base(filepath.Dir(p))); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}

func readPID(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

func alive(pid int) bool { return pid > 0 && syscall.Kill(pid, 0) == nil }

// waitGone polls until pid no longer exists (a shim's parent is init, which
// reaps it).
func waitGone(pid int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for alive(pid) {
		if time.Now().After(deadline) {
			return fmt.Errorf("containerd: pid %d still running after SIGKILL", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}

// unmountUnder lazily unmounts every mount below dir, deepest first.
func unmountUnder(dir string) []error {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return []error{fmt.Errorf("containerd: read mountinfo: %w", err)}
	}
	defer f.Close()
	mounts, err := mountsUnder(f, dir)
	if err != nil {
		return []error{err}
	}
	var errs []error
	for i := len(mounts) - 1; i >= 0; i-- {
		if err := syscall.Unmount(mounts[i], syscall.MNT_DETACH); err != nil && !errors.Is(err, syscall.EINVAL) && !errors.Is(err, syscall.ENOENT) {
			errs = append(errs, fmt.Errorf("containerd: unmount %s: %w", mounts[i], err))
		}
	}
	return errs
}

// mountsUnder returns the mount points below dir in mountinfo order.
func mountsUnder(r io.Reader, dir string) ([]string, error) {
	var out []string
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMount(fields[4])
		if strings.HasPrefix(mp, dir+"/") {
			out = append(out, mp)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("containerd: read mountinfo: %w", err)
	}
	return out, nil
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// TailLog returns the last n lines of containerd's log.
func (c *Containerd) TailLog(n int) string {
	b, err := os.ReadFile(c.LogPath())
	if err != nil {
		return fmt.Sprintf("(cannot read log: %v)", err)
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
