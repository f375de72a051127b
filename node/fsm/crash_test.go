package fsm_test

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"herd.dev/herd/node/fsm"
	"herd.dev/herd/schema"
)

// change is a change the crash tests take a node through.
type change struct {
	name     string
	from, to spec
	restarts []string // what the change restarts
	deploys  int      // and deploys
	pulls    int
}

var changes = []change{
	{name: "OS, files, sysctls and kubelet",
		from: spec{commit: v1, maxPods: 100},
		to: spec{commit: v2, maxPods: 64, sysctl: map[string]string{"vm.max_map_count": "262144"},
			files: []schema.File{{Path: "/etc/herd/files/motd", Content: "herd\n"}}},
		deploys: 1, pulls: 1},
	{name: "kubelet, containerd registry and sysctls",
		from: spec{commit: v1, maxPods: 100},
		to: spec{commit: v1, maxPods: 64, sysctl: map[string]string{"net.core.somaxconn": "8192"},
			files: []schema.File{{Path: "/etc/containerd/certs.d/r/hosts.toml", Content: "x\n"}}},
		restarts: []string{fsm.KubeletUnit}},
	{name: "a file that needs a reboot",
		from: spec{commit: v1},
		to:   spec{commit: v1, files: []schema.File{{Path: "/etc/modules-load.d/x.conf", Content: "x\n"}}}},
	{name: "rollback to the commit on disk",
		from:    spec{commit: v2, files: []schema.File{{Path: "/etc/herd/files/a", Content: "a\n"}}},
		to:      spec{commit: v1},
		deploys: 1},
	{name: "kernel arguments",
		from:    spec{commit: v1},
		to:      spec{commit: v1, kargs: []string{"console=ttyS0"}},
		deploys: 1},
}

// run takes the node to the desired state: agents that sync, reboots
// played when requested, a new agent after each. The first agent dies at
// the crash point dies says (nil: never); its successor starts from the
// journal. It returns the agents.
func run(t *testing.T, w *world, saved fsm.Journal, dies crash) []*agent {
	t.Helper()
	a := start(t, w, saved, epoch)
	agents := []*agent{a}
	for range 20 {
		act, died := a.sync(dies)
		switch {
		case died:
			dies = nil
		case act.Kind == fsm.Resync:
			continue
		case w.rebootPending:
			w.reboot(false)
		default:
			return agents
		}
		a = start(t, w, a.saved, epoch)
		agents = append(agents, a)
	}
	t.Fatal("the change never ends")
	return nil
}

// A node killed at any point of a change (before or after any action),
// and started again, ends at the target, without pulling or deploying
// twice, restarting a unit twice (unless killed right after restarting
// it, before the journal says so), or applying twice.
func TestCrashAtEveryPoint(t *testing.T) {
	for _, c := range changes {
		t.Run(strings.ReplaceAll(c.name, " ", "_"), func(t *testing.T) {
			clean := newWorld()
			a, _ := converge(t, clean, c.from)
			saved := a.saved
			h := clean.publish(t, c.to)
			clean.desire(h, c.to.commit)
			var total int
			for _, a := range run(t, clean, saved, nil) {
				total += len(a.actions)
			}
			for i := range total {
				for _, after := range []bool{false, true} {
					t.Run(fmt.Sprintf("%d_%v", i, map[bool]string{false: "before", true: "after"}[after]), func(t *testing.T) {
						w := newWorld()
						a, _ := converge(t, w, c.from)
						saved := a.saved
						w.pulls, w.deploys, w.restarts = 0, 0, nil
						w.desire(w.publish(t, c.to), c.to.commit)
						n := 0
						var killed fsm.ActionKind
						dies := func(_ int, k fsm.ActionKind, a bool) bool {
							if a != after {
								return false
							}
							if n++; n == i+1 {
								killed = k
								return true
							}
							return false
						}
						agents := run(t, w, saved, dies)
						last := agents[len(agents)-1]
						wantReport(t, w, schema.StateIdle, "up to date")
						if r := w.node.Reported; r.CurrentConfig != h || r.OSBooted != c.to.commit || r.OSStaged != "" {
							t.Errorf("reported %+v", r)
						}
						if j := last.saved; j.Applied != h || j.Phase != fsm.PhaseDone || j.Pending != nil || j.Refused != nil {
							t.Errorf("journal %+v", j)
						}
						if d := w.diff(w.renders[h]); len(d) != 0 || w.manifest != h {
							t.Errorf("files differ: %v, manifest %s", d, w.manifest)
						}
						for k, v := range c.to.sysctl {
							if w.sysctls[k] != v {
								t.Errorf("sysctl %s = %s", k, w.sysctls[k])
							}
						}
						if w.pulls != c.pulls || w.deploys != c.deploys {
							t.Errorf("%d pulls, %d deploys; want %d, %d", w.pulls, w.deploys, c.pulls, c.deploys)
						}
						want := c.restarts
						if killed == restart && after {
							want = append(slices.Clone(want), want...) // at least once: done, not yet recorded
						}
						if !slices.Equal(w.restarts, want) {
							t.Errorf("restarts %v, want %v (killed %s %v)", w.restarts, want, map[bool]string{false: "before", true: "after"}[after], killed)
						}
						applied := 0
						for _, a := range agents {
							applied += len(a.noted(fsm.NoteApplied))
						}
						if applied != 1 {
							t.Errorf("applied noted %d times", applied)
						}
					})
				}
			}
		})
	}
}
