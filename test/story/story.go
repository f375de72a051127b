// Package story sets up Herd's whole user story on one machine: a real
// control plane, a simulated fleet on real OSTree sysroots, a fleet repo
// served by git daemon, and the controller. make demo and the end-to-end
// test both use it.
package story

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"herd.dev/herd/config"
	"herd.dev/herd/node/sim"
	"herd.dev/herd/sync/cluster"
	"herd.dev/herd/sync/controller"
	"herd.dev/herd/sync/herdpool"
	"herd.dev/herd/test/controlplane"
)

// Options configures a story.
type Options struct {
	// Dir keeps the story's state: kubeconfig, the bare fleet repo under
	// git/, the working clone fleet/, the simulated nodes under sim/. It is
	// emptied first.
	Dir string
	// Pools maps pool names of the example fleet to node counts; default
	// system:3, general:6, batch:3.
	Pools map[string]int
	// RebootDelay is how long a simulated reboot takes; default 2s.
	RebootDelay time.Duration
	// Interval is how often the controller polls the fleet repo besides
	// the push webhook; default 5s.
	Interval time.Duration
	// Log receives the simulator's and controller's logs; nil discards.
	Log *slog.Logger
	// AgentBinary is the herd-agent binary every simulated node runs as a
	// process of its own (BuildAgent builds one); empty runs the agents
	// inside the simulator.
	AgentBinary string
	// AgentLog receives the herd-agent processes' logs; nil discards.
	AgentLog io.Writer
	// Sim, when set, adjusts the simulator's options before it starts
	// (its client's rate, linked sysroots, ...).
	Sim func(*sim.Options)
	// Progress receives a line per setup step; nil discards.
	Progress io.Writer

	// Healer runs each simulated node's health side (checks, herd
	// diagnose, repairs) every CheckInterval, with Leases of LeaseDuration
	// (sim's defaults when zero) and the nodes' real Runtimes.
	Healer        bool
	CheckInterval time.Duration
	LeaseDuration time.Duration
	SandboxGrace  time.Duration
	Runtimes      map[string]sim.Runtime

	// ControllerBin, when set, is a herd binary: the controller runs as a
	// process of its own (`herd controller`), logging to
	// Dir/controller.log, and StopController kills it with SIGKILL, as a
	// crash or an OOM kill would. Otherwise it runs in this process.
	ControllerBin string

	// Shards, when set, run one controller per shard in this process
	// (not with ControllerBin), each with its leader election on, its own
	// webhook receiver (the push hook posts to every one) and cache.
	Shards []Shard
}

// Shard is one controller shard: herd controller --shard-name Name
// --shard-selector Selector.
type Shard struct{ Name, Selector string }

// Story is the running setup.
type Story struct {
	CP         *controlplane.ControlPlane
	OS         *OSImages // the OS images, built by herd os build and served over HTTP
	Fleet      *sim.Fleet
	Client     client.Client
	Dir        string
	Kubeconfig string   // Dir/kubeconfig
	Work       string   // Dir/fleet: a working clone whose origin is Remote
	Remote     string   // git://127.0.0.1:PORT/fleet.git
	Webhook    string   // http://127.0.0.1:PORT/ (the first controller's)
	Webhooks   []string // every controller's receiver, one per shard
	Token      string   // the webhook's bearer token
	Cluster    string   // the controller's cluster name

	opts       Options
	daemon     *exec.Cmd
	controller func() // stops the controller at once
	ctrlDone   chan error
	pid        int // the controller process's, with ControllerBin
}

// Start brings the story up. Stop it with Stop, also after an error.
func Start(ctx context.Context, opts Options) (s *Story, err error) {
	if opts.Pools == nil {
		opts.Pools = map[string]int{"system": 3, "general": 6, "batch": 3}
	}
	if opts.RebootDelay == 0 {
		opts.RebootDelay = 2 * time.Second
	}
	if opts.Interval == 0 {
		opts.Interval = 5 * time.Second
	}
	if opts.Progress == nil {
		opts.Progress = io.Discard
	}
	step := func(format string, args ...any) { fmt.Fprintf(opts.Progress, "==> "+format+"\n", args...) }
	dir, err := filepath.Abs(opts.Dir)
	if err != nil {
		return nil, err
	}
	if err := os.RemoveAll(dir); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	s = &Story{Dir: dir, Kubeconfig: filepath.Join(dir, "kubeconfig"), Work: filepath.Join(dir, "fleet"), Cluster: "demo", opts: opts}
	defer func() {
		if err != nil {
			_ = s.Stop()
		}
	}()

	step("starting a control plane: etcd, kube-apiserver, kube-controller-manager")
	if s.CP, err = controlplane.Start(ctx, controlplane.Options{}); err != nil {
		return s, err
	}
	if err := copyFile(s.CP.KubeconfigPath(), s.Kubeconfig); err != nil {
		return s, err
	}
	sch := controller.Scheme()
	_ = apiextensionsv1.AddToScheme(sch)
	rc := s.CP.Config()
	rc.QPS, rc.Burst = 200, 400
	if s.Client, err = client.New(rc, client.Options{Scheme: sch}); err != nil {
		return s, err
	}
	step("herd install: HerdPool CRD, RBAC, admission policy")
	manifests, err := config.Render()
	if err != nil {
		return s, err
	}
	if err := cluster.Apply(ctx, s.Client, manifests); err != nil {
		return s, err
	}

	step("herd os build: OS images from examples/os, signed, served over HTTP")
	if s.OS, err = BuildOSImages(ctx, filepath.Join(dir, "os"), io.Discard); err != nil {
		return s, err
	}

	agents := "herd-agent processes"
	if opts.AgentBinary == "" {
		agents = "agents in the simulator"
	}
	step("herd sim: %d nodes on real OSTree sysroots, trusting only that repository; %s", total(opts.Pools), agents)
	simOpts := sim.Options{Config: rc, Pools: opts.Pools, RebootDelay: opts.RebootDelay,
		Dir: filepath.Join(dir, "sim"), Log: opts.Log, Repo: s.OS.Fixture(), TrustFile: s.OS.TrustFile,
		AgentBinary: opts.AgentBinary, AgentLog: opts.AgentLog,
		Healer: opts.Healer, CheckInterval: opts.CheckInterval, LeaseDuration: opts.LeaseDuration,
		SandboxGrace: opts.SandboxGrace, Runtimes: opts.Runtimes}
	if opts.Sim != nil {
		opts.Sim(&simOpts)
	}
	if s.Fleet, err = sim.Start(ctx, simOpts); err != nil {
		return s, err
	}

	step("fleet repo from examples/fleet-repo, pinned to the simulator's OS commits")
	if err := s.makeFleetRepo(); err != nil {
		return s, err
	}
	if err := s.startGitDaemon(ctx); err != nil {
		return s, err
	}
	if _, err := git(dir, "clone", "-q", s.Remote, s.Work); err != nil {
		return s, err
	}

	step("herd controller, following %s", s.Remote)
	s.StartController()
	return s, nil
}

// StopController stops the controller at once, as a crash would: whatever
// it was doing is cut short. A controller process is killed with SIGKILL.
func (s *Story) StopController() error {
	if s.controller == nil {
		return nil
	}
	s.controller()
	s.controller = nil
	select {
	case err := <-s.ctrlDone:
		if errors.Is(err, context.Canceled) || errors.Is(err, errKilled) {
			return nil
		}
		return err
	case <-time.After(30 * time.Second):
		return errors.New("the controller did not stop within 30s")
	}
}

// errKilled is how a controller process killed by StopController ends.
var errKilled = errors.New("killed with SIGKILL")

// StartController starts a new controller: it knows nothing but what the
// cluster and the Git remote hold.
func (s *Story) StartController() { s.startController(s.opts) }

// makeFleetRepo writes the example fleet with the simulator's OS commits and
// repository, commits it into git/fleet.git, and installs a push hook that
// tells the controller at once.
func (s *Story) makeFleetRepo() error {
	root, err := RepoRoot()
	if err != nil {
		return err
	}
	seed := filepath.Join(s.Dir, "seed")
	if err := copyTree(filepath.Join(root, "examples", "fleet-repo"), seed); err != nil {
		return err
	}
	commits := s.Fleet.Commits()
	if len(commits) < 2 {
		return errors.New("the simulator made fewer than two OS versions")
	}
	fleetCue := filepath.Join(seed, "fleet.cue")
	b, err := os.ReadFile(fleetCue)
	if err != nil {
		return err
	}
	src := strings.NewReplacer(
		"1fff1fd9a3c54e8c1b3d0e7f6a2b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b", commits[0],
		"7a3283c6e1d04f5a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a", commits[1],
		"https://ostree.example.com/containeros", s.Fleet.RepoURL(),
	).Replace(string(b))
	if err := os.WriteFile(fleetCue, []byte(src), 0o644); err != nil {
		return err
	}
	// A demo's soak: long enough to see, short enough to wait for.
	general := filepath.Join(seed, "pools", "general.cue")
	if b, err := os.ReadFile(general); err == nil {
		_ = os.WriteFile(general, []byte(strings.Replace(string(b), `soak:           "5m"`, `soak:           "5s"`, 1)), 0o644)
	}
	for _, args := range [][]string{{"init", "-q", "-b", "main"}, {"add", "-A"}, {"commit", "-q", "-m", "Start the fleet"}} {
		if _, err := git(seed, args...); err != nil {
			return err
		}
	}
	bare := filepath.Join(s.Dir, "git", "fleet.git")
	if _, err := git(s.Dir, "clone", "-q", "--bare", seed, bare); err != nil {
		return err
	}
	if err := os.RemoveAll(seed); err != nil {
		return err
	}
	s.Token = randomHex(16)
	hook := "#!/bin/sh\n# Tell herd about the push at once, as a Git host's webhook does.\n"
	for range max(1, len(s.opts.Shards)) {
		url := "http://" + freeAddr() + "/"
		s.Webhooks = append(s.Webhooks, url)
		hook += fmt.Sprintf("curl -fsS -m 5 -X POST -H 'Authorization: Bearer %s' %s >/dev/null 2>&1 || true\n", s.Token, url)
	}
	s.Webhook = s.Webhooks[0]
	return os.WriteFile(filepath.Join(bare, "hooks", "post-receive"), []byte(hook), 0o755)
}

func (s *Story) startGitDaemon(ctx context.Context) error {
	addr := freeAddr()
	host, port, _ := net.SplitHostPort(addr)
	base := filepath.Join(s.Dir, "git")
	s.daemon = exec.Command("git", "daemon", "--reuseaddr", "--export-all", "--enable=receive-pack",
		"--base-path="+base, "--listen="+host, "--port="+port, base)
	// Its own process group: git daemon forks, and Stop ends them all.
	s.daemon.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := s.daemon.Start(); err != nil {
		return fmt.Errorf("git daemon: %w", err)
	}
	s.Remote = fmt.Sprintf("git://%s/fleet.git", addr)
	return wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 10*time.Second, true, func(context.Context) (bool, error) {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return err == nil, nil
	})
}

func (s *Story) startController(opts Options) {
	if opts.ControllerBin != "" {
		s.startProcess(opts)
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.controller, s.ctrlDone = cancel, make(chan error, 1)
	log := logr.Discard()
	if opts.Log != nil {
		log = logr.FromSlogHandler(opts.Log.Handler())
	}
	cfg := controller.Config{
		Rest:           s.CP.Config(),
		Repo:           s.Remote,
		Cluster:        s.Cluster,
		Interval:       opts.Interval,
		StatusInterval: 2 * time.Second,
		CacheDir:       filepath.Join(s.Dir, "controller"),
		WebhookAddr:    strings.TrimSuffix(strings.TrimPrefix(s.Webhook, "http://"), "/"),
		WebhookToken:   s.Token,
		MetricsAddr:    "0",
		Log:            log,
	}
	if len(opts.Shards) == 0 {
		go func() { s.ctrlDone <- controller.Run(ctx, cfg) }()
		return
	}
	errs := make(chan error, len(opts.Shards))
	for i, sh := range opts.Shards {
		c := cfg
		shard, err := controller.ParseShard(sh.Name, sh.Selector)
		if err != nil {
			errs <- err
			continue
		}
		c.Shard = shard
		c.CacheDir = filepath.Join(s.Dir, "controller-"+shard.Name)
		c.WebhookAddr = strings.TrimSuffix(strings.TrimPrefix(s.Webhooks[i], "http://"), "/")
		c.LeaderElection.Enable = true
		c.LeaderElection.ReleaseOnCancel = true
		c.Log = log.WithValues("shard", shard.Name)
		go func() { errs <- controller.Run(ctx, c) }()
	}
	go func() { // the first to stop stops the story's controllers
		var failed []error
		for i := range opts.Shards {
			if err := <-errs; err != nil && !errors.Is(err, context.Canceled) {
				failed = append(failed, err)
			}
			if i == 0 {
				cancel()
			}
		}
		if len(failed) == 0 {
			failed = append(failed, context.Canceled)
		}
		s.ctrlDone <- errors.Join(failed...)
	}()
}

// startProcess runs `herd controller` as a process of its own, with the
// flags the in-process controller gets as its Config.
func (s *Story) startProcess(opts Options) {
	s.ctrlDone = make(chan error, 1)
	log, err := os.OpenFile(filepath.Join(s.Dir, "controller.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		s.ctrlDone <- err
		s.controller = func() {}
		return
	}
	cmd := exec.Command(opts.ControllerBin, "controller",
		"--kubeconfig", s.Kubeconfig,
		"--repo", s.Remote,
		"--cluster", s.Cluster,
		"--interval", opts.Interval.String(),
		"--status-interval", "2s",
		"--cache-dir", filepath.Join(s.Dir, "controller"),
		"--webhook-addr", strings.TrimSuffix(strings.TrimPrefix(s.Webhook, "http://"), "/"),
		"--metrics-addr", "0",
		// The story's commits are not signed; the in-process controller
		// does not verify them either.
		"--insecure-skip-verify")
	cmd.Env = append(os.Environ(), "HERD_WEBHOOK_TOKEN="+s.Token)
	cmd.Stdout, cmd.Stderr = log, log
	// It dies with this process, whatever happens to it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		log.Close()
		s.ctrlDone <- fmt.Errorf("start %s controller: %w", opts.ControllerBin, err)
		s.controller = func() {}
		return
	}
	s.pid = cmd.Process.Pid
	var killed atomic.Bool
	s.controller = func() {
		killed.Store(true)
		_ = cmd.Process.Signal(syscall.SIGKILL)
	}
	go func() {
		err := cmd.Wait()
		log.Close()
		if killed.Load() {
			err = errKilled
		} else {
			err = fmt.Errorf("herd controller exited (see %s): %v", filepath.Join(s.Dir, "controller.log"), err)
		}
		s.ctrlDone <- err
	}()
}

// ControllerPID is the controller process's id, 0 when it runs in this
// process or not at all.
func (s *Story) ControllerPID() int {
	if s.opts.ControllerBin == "" || s.controller == nil {
		return 0
	}
	return s.pid
}

// WaitUpToDate waits until every pool's HerdPool reports UpToDate at the
// fleet's current revision.
func (s *Story) WaitUpToDate(ctx context.Context, timeout time.Duration) error {
	head, err := git(s.Work, "rev-parse", "origin/main")
	if err != nil {
		return err
	}
	return wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		select {
		case err := <-s.ctrlDone:
			return false, fmt.Errorf("the controller stopped: %w", err)
		default:
		}
		var list herdpool.HerdPoolList
		if err := s.Client.List(ctx, &list); err != nil {
			return false, nil
		}
		if len(list.Items) == 0 {
			return false, nil
		}
		for _, np := range list.Items {
			if np.Status.ObservedRevision != head || np.Status.Phase != herdpool.PhaseUpToDate {
				return false, nil
			}
		}
		return true, nil
	})
}

// Git runs git in the working clone.
func (s *Story) Git(args ...string) (string, error) { return git(s.Work, args...) }

// Stop stops everything the story started.
func (s *Story) Stop() error {
	var errs []error
	if err := s.StopController(); err != nil && !errors.Is(err, context.Canceled) {
		errs = append(errs, err)
	}
	if s.daemon != nil && s.daemon.Process != nil {
		_ = syscall.Kill(-s.daemon.Process.Pid, syscall.SIGKILL)
		_ = s.daemon.Wait()
	}
	if s.Fleet != nil {
		errs = append(errs, s.Fleet.Stop())
	}
	if s.OS != nil {
		errs = append(errs, s.OS.Close())
	}
	if s.CP != nil {
		errs = append(errs, s.CP.Stop())
	}
	return errors.Join(errs...)
}

// BuildAgent builds the herd-agent binary into dir as make build does
// (static) and returns its path.
func BuildAgent(dir string) (string, error) {
	bin := filepath.Join(dir, "herd-agent")
	build := exec.Command("go", "build", "-tags", "grpcnotrace", "-o", bin, "herd.dev/herd/cmd/herd-agent")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build herd-agent: %v\n%s", err, out)
	}
	return bin, nil
}

// RepoRoot finds the herd repository from the working directory.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil && strings.HasPrefix(string(b), "module herd.dev/herd\n") {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("not inside the herd repository")
		}
		dir = parent
	}
}

// git runs the git CLI with the story's identity.
func git(dir string, args ...string) (string, error) {
	cmd := exec.Command("git", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(),
		"GIT_AUTHOR_NAME=Fleet Owner", "GIT_AUTHOR_EMAIL=owner@example.com",
		"GIT_COMMITTER_NAME=Fleet Owner", "GIT_COMMITTER_EMAIL=owner@example.com")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("git %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out)), nil
}

func copyTree(src, dst string) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		out := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(out, 0o755)
		}
		return copyFile(p, out)
	})
}

func copyFile(src, dst string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, b, 0o644)
}

func freeAddr() string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func total(pools map[string]int) int {
	n := 0
	for _, c := range pools {
		n += c
	}
	return n
}
