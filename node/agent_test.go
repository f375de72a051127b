package node_test

import (
	"slices"
	"strings"
	"testing"
	"time"

	"herd.dev/herd/node"
	"herd.dev/herd/os/ostree/osfixture"
	"herd.dev/herd/schema"
)

const limitsFile = "/etc/security/limits.d/50-test.conf"

// One node through a whole life: a new OS with config, a sysctl-only change,
// a kubelet change, a rollback to the previous commit (fast path, no pull),
// and a kernel-argument change.
func TestAgentLifecycle(t *testing.T) {
	t.Parallel()
	repo := newRepo(t, osfixture.Options{Versions: 2})
	v1, v2 := repo.Commits[0], repo.Commits[1]
	n := newTestNode(t, repo, osfixture.SysrootOptions{})

	n.start(nil)
	// No desired state yet: the agent reports what runs.
	ann := n.waitState(schema.StateIdle, 30*time.Second)
	if ann[schema.AnnotationOSBooted] != v1 || ann[schema.AnnotationCurrentConfig] != "" {
		t.Fatalf("fresh node annotations %v", ann)
	}

	// 1. New OS and config: files and sysctls first, then deploy, reboot.
	base := spec{
		commit:  v2,
		maxPods: 110,
		sysctl:  map[string]string{"vm.max_map_count": "262144"},
		files:   []schema.File{{Path: limitsFile, Content: "* soft nofile 4096\n", Mode: 0o644}},
	}
	r1 := render(t, repo, base)
	h1 := publishRender(t, n.cs, r1)
	n.setDesired(h1, v2)
	n.awaitReboot()
	ann = n.annotations()
	if ann[schema.AnnotationState] != string(schema.StateRebooting) || ann[schema.AnnotationOSStaged] != v2 || ann[schema.AnnotationOSBooted] != v1 {
		t.Errorf("before the reboot: %v", ann)
	}
	if got := n.readRootFile(strings.TrimPrefix(limitsFile, "/")); got != "* soft nofile 4096\n" {
		t.Errorf("limits file = %q before the deploy's reboot", got)
	}
	if got := n.readRootFile("proc/sys/vm/max_map_count"); got != "262144\n" {
		t.Errorf("vm.max_map_count = %q", got)
	}
	n.rebootNow(true)
	ann = n.waitUpToDate(h1, v2)
	if _, ok := ann[schema.AnnotationOSStaged]; ok {
		t.Errorf("os-staged still set after the boot: %v", ann)
	}
	c := n.metrics.Snapshot()
	if c.Pulls != 1 || c.Deploys != 1 || c.Reboots != 1 || len(n.services.list()) != 0 {
		t.Errorf("after the OS change: %+v, restarts %v; want 1 pull, 1 deploy, 1 reboot, no restart (the reboot covers the kubelet file)", c, n.services.list())
	}

	// 2. A sysctl-only change: applied live, no pull, deploy, reboot or restart.
	s2 := base
	s2.sysctl = map[string]string{"vm.max_map_count": "524288"}
	h2 := publishRender(t, n.cs, render(t, repo, s2))
	n.setDesired(h2, v2)
	n.waitUpToDate(h2, v2)
	if got := n.readRootFile("proc/sys/vm/max_map_count"); got != "524288\n" {
		t.Errorf("vm.max_map_count = %q after the sysctl change", got)
	}
	if got := n.readRootFile("etc/sysctl.d/50-herd.conf"); !strings.Contains(got, "vm.max_map_count = 524288") {
		t.Errorf("sysctl.d file = %q", got)
	}
	n.noRebootRequested()
	if c2 := n.metrics.Snapshot(); c2.Pulls != 1 || c2.Deploys != 1 || c2.Reboots != 1 || len(n.services.list()) != 0 {
		t.Errorf("after the sysctl change: %+v, restarts %v", c2, n.services.list())
	}

	// 3. A kubelet change restarts the kubelet, once, and nothing else.
	s3 := s2
	s3.maxPods = 64
	h3 := publishRender(t, n.cs, render(t, repo, s3))
	n.setDesired(h3, v2)
	n.waitUpToDate(h3, v2)
	if got := n.services.list(); !slices.Equal(got, []string{node.KubeletUnit}) {
		t.Errorf("restarts = %v, want one kubelet restart", got)
	}
	n.noRebootRequested()

	// 4. Back to v1, which is still on disk as the rollback deployment: no
	// pull. The render's remote leads nowhere, so a pull would fail.
	s4 := s3
	s4.commit = v1
	s4.remote = &schema.RemoteConfig{Name: osfixture.DefaultRemote, URL: "file:///nonexistent/repo"}
	h4 := publishRender(t, n.cs, render(t, repo, s4))
	start := time.Now()
	n.setDesired(h4, v1)
	n.awaitReboot()
	t.Logf("rollback: reboot requested %v after the desired change", time.Since(start))
	if msg := n.annotations()[schema.AnnotationMessage]; !strings.Contains(msg, "no pull") {
		t.Errorf("rebooting message %q does not say the fast path was taken", msg)
	}
	n.rebootNow(true)
	ann = n.waitUpToDate(h4, v1)
	if !strings.Contains(ann[schema.AnnotationMessage], "no pull") {
		t.Errorf("idle message %q does not say the fast path was taken", ann[schema.AnnotationMessage])
	}
	if c4 := n.metrics.Snapshot(); c4.Pulls != 1 || c4.FastPaths != 1 || c4.Deploys != 2 || c4.Reboots != 2 {
		t.Errorf("after the rollback: %+v; want still 1 pull, 1 fast path, 2 deploys, 2 reboots", c4)
	}

	// 5. Only kernel arguments change: the same commit, deployed again, reboot.
	s5 := s4
	s5.kargs = []string{"console=ttyS0,115200n8", "herd.test=1"}
	h5 := publishRender(t, n.cs, render(t, repo, s5))
	n.setDesired(h5, v1)
	n.awaitReboot()
	if msg := n.annotations()[schema.AnnotationMessage]; !strings.Contains(msg, "new kernel arguments: no pull") {
		t.Errorf("rebooting message %q", msg)
	}
	n.rebootNow(true)
	n.waitUpToDate(h5, v1)
	if d := n.booted(); d.Checksum != v1 || !slices.Equal(d.KernelArgs, s5.kargs) {
		t.Errorf("booted %s with %q, want v1 with %q", d.ID(), d.KernelArgs, s5.kargs)
	}
	if c5 := n.metrics.Snapshot(); c5.Pulls != 1 || c5.Deploys != 3 || c5.Reboots != 3 {
		t.Errorf("after the kernel argument change: %+v", c5)
	}

	// 6. A file dropped from the render is removed.
	s6 := s5
	s6.files = nil
	h6 := publishRender(t, n.cs, render(t, repo, s6))
	n.setDesired(h6, v1)
	n.waitUpToDate(h6, v1)
	if got := n.readRootFile(strings.TrimPrefix(limitsFile, "/")); got != "" {
		t.Errorf("dropped file still there: %q", got)
	}

	// 7. An agent restarted at its target changes nothing and stays Idle.
	before := n.metrics.Snapshot()
	n.stop()
	n.start(nil)
	n.waitUpToDate(h6, v1)
	if after := n.metrics.Snapshot(); after.Files != before.Files || after.Deploys != before.Deploys || after.Applied != before.Applied {
		t.Errorf("a restart at the target did work: before %+v, after %+v", before, after)
	}
}

// The agent re-reports when someone else overwrites its annotations.
func TestAgentReportsTheTruthAgain(t *testing.T) {
	t.Parallel()
	repo := newRepo(t, osfixture.Options{Versions: 1})
	n := newTestNode(t, repo, osfixture.SysrootOptions{})
	h := publishRender(t, n.cs, render(t, repo, spec{commit: repo.Commits[0], sysctl: map[string]string{"net.core.somaxconn": "8192"}}))
	n.setDesired(h, repo.Commits[0])
	n.start(nil)
	n.waitUpToDate(h, repo.Commits[0])
	setAnnotations(t, n.cs, n.name, map[string]any{schema.AnnotationState: "Degraded", schema.AnnotationCurrentConfig: nil})
	n.waitUpToDate(h, repo.Commits[0])
	if c := n.metrics.Snapshot(); c.Applied != 1 || c.Sysctls != 1 {
		t.Errorf("counters %+v: re-reporting must not apply again", c)
	}
}

// Files whose class needs a reboot (modules-load.d) reboot the node without
// a new deployment; a containerd change restarts containerd only.
func TestAgentFileDisruptions(t *testing.T) {
	t.Parallel()
	repo := newRepo(t, osfixture.Options{Versions: 1})
	v1 := repo.Commits[0]
	n := newTestNode(t, repo, osfixture.SysrootOptions{})
	n.start(nil)

	mods := spec{commit: v1, files: []schema.File{{Path: "/etc/modules-load.d/herd.conf", Content: "br_netfilter\n", Mode: 0o644}}}
	h1 := publishRender(t, n.cs, render(t, repo, mods))
	n.setDesired(h1, v1)
	n.awaitReboot()
	if ann := n.annotations(); ann[schema.AnnotationOSStaged] != "" || !strings.Contains(ann[schema.AnnotationMessage], "rebooting to take on config") {
		t.Errorf("before the reboot: %v", ann)
	}
	n.rebootNow(false) // nothing staged: the same deployment boots
	n.waitUpToDate(h1, v1)
	if c := n.metrics.Snapshot(); c.Deploys != 0 || c.Pulls != 0 || c.Reboots != 1 || len(n.services.list()) != 0 {
		t.Errorf("counters %+v, restarts %v: want one reboot and nothing else", c, n.services.list())
	}

	maxDL := 4
	r := render(t, repo, mods)
	cfg := r.Config
	cfg.Containerd = &schema.Containerd{MaxConcurrentDownloads: &maxDL}
	r2, err := schema.Render(cfg)
	if err != nil {
		t.Fatal(err)
	}
	h2 := publishRender(t, n.cs, r2)
	n.setDesired(h2, v1)
	n.waitUpToDate(h2, v1)
	if got := n.services.list(); !slices.Equal(got, []string{node.ContainerdUnit}) {
		t.Errorf("restarts %v, want containerd once", got)
	}
	n.noRebootRequested()
}
