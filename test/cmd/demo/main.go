// Command demo runs Herd's whole story on this machine for `make demo`: a
// real control plane, 12 simulated nodes on real OSTree each running
// bin/herd-agent, a fleet repo served by git daemon, and the controller.
// Ctrl-C stops everything it started.
package main

import (
	"context"
	"flag"
	"fmt"
	"herd.dev/herd/schema/sandbox"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"herd.dev/herd/node/sim"
	"herd.dev/herd/test/story"
)

func main() {
	sandbox.Main() // the controller evaluates fleets in a child process of this binary
	dir := flag.String("dir", ".demo", "where the demo keeps its state")
	pools := flag.String("pools", "system:3,general:6,batch:3", "pools of the example fleet and their node counts")
	reboot := flag.Duration("reboot", 2*time.Second, "how long a simulated reboot takes")
	verbose := flag.Bool("v", false, "log the simulator and the controller to .demo/herd.log")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *dir, *pools, *reboot, *verbose); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, dir, pools string, reboot time.Duration, verbose bool) error {
	counts, err := sim.ParsePools(pools)
	if err != nil {
		return err
	}
	root, err := story.RepoRoot()
	if err != nil {
		return err
	}
	agent := filepath.Join(root, "bin", "herd-agent")
	if _, err := os.Stat(agent); err != nil {
		return fmt.Errorf("the demo runs %s on every node: make build builds it (%w)", agent, err)
	}
	opts := story.Options{Dir: dir, Pools: counts, RebootDelay: reboot, Interval: 5 * time.Second, Progress: os.Stdout, AgentBinary: agent}
	if verbose {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		f, err := os.CreateTemp("", "herd-demo-*.log")
		if err != nil {
			return err
		}
		defer f.Close()
		opts.Log = slog.New(slog.NewTextHandler(f, nil))
		opts.AgentLog = f
		fmt.Println("logs:", f.Name())
	}
	s, err := story.Start(ctx, opts)
	if err != nil {
		return err
	}
	defer func() {
		fmt.Println("\nstopping: controller, simulated nodes, git daemon, control plane")
		if err := s.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "demo: stop:", err)
		}
	}()
	fmt.Println("==> waiting for the fleet to converge on its first revision")
	if err := s.WaitUpToDate(ctx, 5*time.Minute); err != nil {
		return err
	}

	rel := func(p string) string {
		if r, err := filepath.Rel(root, p); err == nil {
			return r
		}
		return p
	}
	kubectl := rel(s.CP.KubectlPath())
	fmt.Printf(`
Herd is running: %d simulated nodes in pools %s, real OSTree sysroots,
a real kube-apiserver, and a fleet repo at %s.

  export KUBECONFIG=$PWD/%s
  %s get herdpools
  bin/herd status --watch

The OS images were built by herd os build from examples/os (Buildfiles),
signed, and are served at %s; nodes trust only that remote and its key.
What release 2026.11.0 changes in the image:

  bin/herd os diff %.12s %.12s --repo %s

Roll a new OS out to the general pool, batch by batch:

  cd %s
  sed -i 's/_releases\["2026.10.1"\]/_releases["2026.11.0"]/' pools/general.cue
  git commit -qam "general: 2026.11.0" && git push -q

Watch it (herd status --watch), then see it in Git:

  git fetch -q origin herd/status && git log --oneline origin/herd/status | head
  ../../bin/herd history

Roll it back (nodes switch to the OSTree deployment on disk, no download):

  ../../bin/herd rollback HEAD

Ctrl-C stops everything.
`, len(s.Fleet.Nodes()), pools, s.Remote, rel(s.Kubeconfig), kubectl, s.OS.URL, s.OS.Commits[0], s.OS.Commits[1], rel(s.OS.Repo), rel(s.Work))
	<-ctx.Done()
	return nil
}
