package sim

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"herd.dev/herd/node/healer"
	"herd.dev/herd/node/health"
	"herd.dev/herd/node/kube"
	"herd.dev/herd/node/remedy"
	"herd.dev/herd/node/sim/hostbus"
)

// startHealer runs the node's health side for this boot, when the fleet
// has healers; the channel is closed once it stopped.
func (f *Fleet) startHealer(ctx context.Context, n *simNode, feed *kube.Feed) <-chan struct{} {
	done := make(chan struct{})
	if !f.opts.Healer {
		close(done)
		return done
	}
	boot, err := os.ReadFile(filepath.Join(n.root, "proc/sys/kernel/random/boot_id"))
	if err != nil {
		f.log.Error("sim: healer: boot id", "node", n.name, "err", err)
	}
	rt, hasRuntime := f.opts.Runtimes[n.name]
	o := healer.Options{
		NodeName:          n.name,
		Client:            f.agents,
		Dynamic:           f.dyn,
		Feed:              feed,
		Root:              n.root,
		StateDir:          filepath.Join(n.root, "var/lib/herd"),
		BootID:            strings.TrimSpace(string(boot)),
		KubeletHealthzURL: f.kubeletHealthzURL(n),
		CRISocket:         rt.Socket,
		NoRuntime:         !hasRuntime,
		Units:             &simUnits{f: f, n: n},
		Rebooter:          rebooter(n.reboot),
		Interval:          f.opts.CheckInterval,
		SandboxGrace:      f.opts.SandboxGrace,
		Log:               f.log,
	}
	go func() {
		defer close(done)
		if err := healer.Run(ctx, o); err != nil && ctx.Err() == nil {
			f.log.Error("sim: healer stopped", "node", n.name, "err", err)
		}
	}()
	return done
}

// kubeletHealthzURL is the /healthz of node n's simulated kubelet.
func (f *Fleet) kubeletHealthzURL(n *simNode) string { return f.healthz + "/" + n.name + "/healthz" }

// healerArgs are the health side's flags of node n's herd-agent process.
func (f *Fleet) healerArgs(n *simNode) []string {
	if !f.opts.Healer {
		return []string{"--health=false"}
	}
	args := []string{"--kubelet-healthz-url", f.kubeletHealthzURL(n)}
	if rt, ok := f.opts.Runtimes[n.name]; ok {
		args = append(args, "--cri-socket", rt.Socket)
	} else {
		args = append(args, "--no-runtime")
	}
	if f.opts.CheckInterval > 0 {
		args = append(args, "--check-interval", f.opts.CheckInterval.String())
	}
	if f.opts.SandboxGrace > 0 {
		args = append(args, "--sandbox-grace", f.opts.SandboxGrace.String())
	}
	return args
}

// machine is node n as the host bus sees it, for its herd-agent process:
// reboots, and with Options.Healer its units.
func (f *Fleet) machine(n *simNode) hostbus.Machine {
	m := hostbus.Machine{Reboot: n.requestReboot}
	if f.opts.Healer {
		u := &simUnits{f: f, n: n}
		m.Restart, m.InvocationID = u.Restart, u.InvocationID
	}
	return m
}

// simUnits is a simulated node's systemd for repairs: kubelet.service is
// the simulated kubelet, containerd.service the node's runtime (a real
// containerd the test supervises, when it has one).
type simUnits struct {
	f *Fleet
	n *simNode
}

func (u *simUnits) Restart(ctx context.Context, unit string) error {
	switch unit {
	case remedy.KubeletUnit:
		return u.f.kubelet.restart(u.n.name)
	case remedy.ContainerdUnit:
		u.n.mu.Lock()
		u.n.runtimeStarts++
		u.n.mu.Unlock()
		u.f.kubelet.runtimeRestarted(u.n.name)
		if rt, ok := u.f.opts.Runtimes[u.n.name]; ok && rt.Restart != nil {
			return rt.Restart(ctx)
		}
		return nil
	}
	return fmt.Errorf("sim: no unit %s", unit)
}

func (u *simUnits) InvocationID(_ context.Context, unit string) (string, error) {
	switch unit {
	case remedy.KubeletUnit:
		return u.f.kubelet.invocation(u.n.name), nil
	case remedy.ContainerdUnit:
		u.n.mu.Lock()
		defer u.n.mu.Unlock()
		return fmt.Sprintf("containerd-%d", u.n.runtimeStarts), nil
	}
	return "", fmt.Errorf("sim: no unit %s", unit)
}

// InjectKubeletFault makes the node's kubelet misbehave until a repair
// (or ClearKubeletFault) clears the fault: it stops renewing its Lease,
// its /healthz fails, or it reports PLEG unhealthy in Ready.
func (f *Fleet) InjectKubeletFault(name string, fault KubeletFault) error {
	return f.kubelet.setFault(name, fault)
}

// ClearKubeletFault clears the node's kubelet fault, as if it went away by
// itself.
func (f *Fleet) ClearKubeletFault(name string) error {
	return f.kubelet.setFault(name, KubeletFault{})
}

// KubeletStarts is how many times the node's kubelet started after its
// first start: restarts and boots.
func (f *Fleet) KubeletStarts(name string) int {
	f.kubelet.mu.Lock()
	defer f.kubelet.mu.Unlock()
	if st := f.kubelet.state[name]; st != nil {
		return st.starts
	}
	return 0
}

// healthDirs are the directories the disk checks read on a simulated
// node's root.
func healthDirs(root string) error {
	for _, d := range health.DefaultDiskPaths {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return err
		}
	}
	return nil
}
