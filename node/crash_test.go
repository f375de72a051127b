package node_test

import (
	"slices"
	"strings"
	"testing"

	"herd.dev/herd/node"
	"herd.dev/herd/os/ostree/osfixture"
	"herd.dev/herd/schema"
)

// killAt returns a hook that kills the agent at the nth time it reaches point.
func killAt(point string, nth int) func(string, func()) {
	seen := 0
	return func(p string, kill func()) {
		if p == point {
			if seen++; seen == nth {
				kill()
			}
		}
	}
}

// An agent killed at any point of an OS change, and started again, ends at
// the target and reports it, without pulling or deploying twice.
func TestAgentKilledDuringOSChange(t *testing.T) {
	t.Parallel()
	repo := newRepo(t, osfixture.Options{Versions: 2})
	v1, v2 := repo.Commits[0], repo.Commits[1]
	s := spec{
		commit:  v2,
		maxPods: 100,
		sysctl:  map[string]string{"vm.max_map_count": "262144", "net.core.somaxconn": "8192"},
		files: []schema.File{
			{Path: limitsFile, Content: "* soft nofile 4096\n", Mode: 0o644},
			{Path: "/etc/herd/files/motd", Content: "herd\n", Mode: 0o644},
		},
	}
	for _, tc := range []struct {
		point string
		nth   int
	}{
		{node.HookFilesPlanned, 1},
		{node.HookFileWritten, 1}, // files half-written
		{node.HookFileWritten, 3},
		{node.HookFilesWritten, 1},
		{node.HookSysctls, 1},
		{node.HookDeployed, 1}, // deployed, no reboot yet
		{node.HookRebooting, 1},
		{"after-reboot-request", 0}, // the reboot was asked for but never came
	} {
		t.Run(strings.ReplaceAll(tc.point, "-", "_")+"_"+string(rune('0'+tc.nth)), func(t *testing.T) {
			t.Parallel()
			n := newTestNode(t, repo, osfixture.SysrootOptions{})
			h := publishRender(t, n.cs, render(t, repo, s))
			n.setDesired(h, v2)
			if tc.point == "after-reboot-request" {
				n.start(nil)
				n.awaitReboot()
				n.stop()
			} else {
				n.start(killAt(tc.point, tc.nth))
				n.wait()
			}
			ann := n.annotations()
			t.Logf("killed at %s #%d: %v", tc.point, tc.nth, ann)
			if ann[schema.AnnotationState] == string(schema.StateIdle) || ann[schema.AnnotationState] == string(schema.StateDegraded) {
				t.Errorf("state %s after the kill", ann[schema.AnnotationState])
			}

			n.start(nil)
			n.awaitReboot()
			n.rebootNow(true)
			ann = n.waitUpToDate(h, v2)
			if d := n.booted(); d.Checksum != v2 {
				t.Errorf("booted %s, want v2", d.ID())
			}
			if got := n.readRootFile("etc/herd/files/motd"); got != "herd\n" {
				t.Errorf("motd = %q", got)
			}
			if got := n.readRootFile("proc/sys/net/core/somaxconn"); got != "8192\n" {
				t.Errorf("somaxconn = %q", got)
			}
			c := n.metrics.Snapshot()
			if c.Pulls != 1 || c.Deploys != 1 || c.Applied != 1 {
				t.Errorf("counters %+v: want exactly 1 pull, 1 deploy, 1 apply", c)
			}
			if len(n.services.list()) != 0 {
				t.Errorf("restarts %v: the reboot takes the kubelet file on", n.services.list())
			}
			if ann[schema.AnnotationOSStaged] != "" {
				t.Errorf("os-staged %q after the boot", ann[schema.AnnotationOSStaged])
			}
			_ = v1
		})
	}
}

// A restart that was pending when the agent died happens after it starts
// again, exactly once.
func TestAgentKilledBeforeRestart(t *testing.T) {
	t.Parallel()
	repo := newRepo(t, osfixture.Options{Versions: 1})
	v1 := repo.Commits[0]
	for _, tc := range []struct {
		point    string
		restarts int // restarts by the first agent
	}{
		{node.HookFileWritten, 0},
		{node.HookFilesWritten, 0},
		{node.HookSysctls, 0},
		{node.HookRestarted, 1},
	} {
		t.Run(strings.ReplaceAll(tc.point, "-", "_"), func(t *testing.T) {
			t.Parallel()
			n := newTestNode(t, repo, osfixture.SysrootOptions{})
			h0 := publishRender(t, n.cs, render(t, repo, spec{commit: v1, maxPods: 110}))
			n.setDesired(h0, v1)
			n.start(nil)
			n.waitUpToDate(h0, v1)
			n.stop()
			base := len(n.services.list())

			h1 := publishRender(t, n.cs, render(t, repo, spec{commit: v1, maxPods: 50}))
			n.setDesired(h1, v1)
			n.start(killAt(tc.point, 1))
			n.wait()
			if got := len(n.services.list()) - base; got != tc.restarts {
				t.Errorf("first agent restarted %d times, want %d", got, tc.restarts)
			}
			n.start(nil)
			n.waitUpToDate(h1, v1)
			if got := n.services.list()[base:]; !slices.Equal(got, []string{node.KubeletUnit}) {
				t.Errorf("restarts for the change = %v, want exactly one kubelet restart", got)
			}
			n.noRebootRequested()
		})
	}
}

// Killed after the deploy, the agent finds the desired state went back to the
// running commit: it takes the staged deployment back and does not reboot.
func TestAgentUnstagesWhenTargetReverts(t *testing.T) {
	t.Parallel()
	repo := newRepo(t, osfixture.Options{Versions: 2})
	v1, v2 := repo.Commits[0], repo.Commits[1]
	n := newTestNode(t, repo, osfixture.SysrootOptions{})
	h1 := publishRender(t, n.cs, render(t, repo, spec{commit: v1, maxPods: 110}))
	h2 := publishRender(t, n.cs, render(t, repo, spec{commit: v2, maxPods: 110}))
	n.setDesired(h2, v2)
	n.start(killAt(node.HookDeployed, 1))
	n.wait()

	n.setDesired(h1, v1)
	n.start(nil)
	ann := n.waitUpToDate(h1, v1)
	n.noRebootRequested()
	if ann[schema.AnnotationOSStaged] != "" {
		t.Errorf("os-staged = %q, want none", ann[schema.AnnotationOSStaged])
	}
	st, err := n.sysroot.Status(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if def, _ := st.Default(); def.Checksum != v1 {
		t.Errorf("default deployment %s, want v1: the next boot would run v2", def.ID())
	}
}
