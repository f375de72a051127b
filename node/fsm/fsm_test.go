package fsm_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"herd.dev/herd/node/fsm"
	"herd.dev/herd/schema"
)

// Actions, short.
const (
	readOS   = fsm.ReadOS
	fetch    = fsm.FetchRender
	inspect  = fsm.Inspect
	publish  = fsm.Publish
	pull     = fsm.Pull
	write    = fsm.WriteFiles
	sysctls  = fsm.ApplySysctls
	restart  = fsm.Restart
	deploy   = fsm.Deploy
	reboot   = fsm.Reboot
	cleanup  = fsm.Cleanup
	untaint  = fsm.Untaint
	has      = fsm.HasCommit
	prestage = fsm.Prestage
)

func wantActions(t *testing.T, what string, got []fsm.ActionKind, want ...fsm.ActionKind) {
	t.Helper()
	if d := cmp.Diff(names(want), names(got)); d != "" {
		t.Errorf("%s: actions (-want +got):\n%s", what, d)
	}
}

func names(ks []fsm.ActionKind) []string {
	out := make([]string, len(ks))
	for i, k := range ks {
		out[i] = k.String()
	}
	return out
}

// wantReport checks the state and a part of the message the node reports.
func wantReport(t *testing.T, w *world, state schema.NodeState, msg string) {
	t.Helper()
	r := w.node.Reported
	if r.State != state || !strings.Contains(r.Message, msg) {
		t.Errorf("reported %s %q, want %s with %q", r.State, r.Message, state, msg)
	}
}

func wantWait(t *testing.T, act fsm.Action, d time.Duration) {
	t.Helper()
	if act.Kind != fsm.Wait || act.After != d {
		t.Errorf("last action %v after %v, want wait %v", act.Kind, act.After, d)
	}
}

// osChange is a change of OS commit with files, sysctls and the kubelet.
func osChange(t testing.TB, w *world) string {
	return w.publish(t, spec{commit: v2, maxPods: 100,
		sysctl: map[string]string{"vm.max_map_count": "262144"},
		files:  []schema.File{{Path: "/etc/herd/files/motd", Content: "herd\n", Mode: 0o644}}})
}

// converge takes a fresh agent on w to the render of s and returns the
// agent and the render's hash.
func converge(t *testing.T, w *world, s spec) (*agent, string) {
	t.Helper()
	h := w.publish(t, s)
	w.desire(h, s.commit)
	a := start(t, w, fsm.Journal{}, epoch)
	if act := a.settle(); act.Kind == fsm.Wait && w.rebootRequests > 0 {
		w.reboot(false)
		a = start(t, w, a.saved, a.now)
		a.settle()
	}
	wantReport(t, w, schema.StateIdle, "up to date")
	if a.saved.Applied != h {
		t.Fatalf("converge: applied %q, want %q", a.saved.Applied, h)
	}
	return a, h
}

// A node without a desired state reports what runs, once.
func TestNoDesiredState(t *testing.T) {
	w := newWorld()
	a := start(t, w, fsm.Journal{}, epoch)
	wantWait(t, a.once(), 0)
	wantActions(t, "first sync", a.actions, readOS, publish)
	wantReport(t, w, schema.StateIdle, "no desired config")
	if r := w.node.Reported; r.OSBooted != v1 || r.CurrentConfig != "" || r.OSStaged != "" {
		t.Errorf("reported %+v", r)
	}
	n := len(a.actions)
	wantWait(t, a.once(), 0)
	wantActions(t, "second sync", a.since(n))
	if !a.saved.Equal(fsm.Journal{}) {
		t.Errorf("journal %+v, want none", a.saved)
	}

	w.desire("", v2)
	a.once()
	wantReport(t, w, schema.StateIdle, "desired-os is set without desired-config")
}

// An OS change: files and sysctls first, then deploy, Rebooting, reboot;
// after the boot, cleanup and Idle.
func TestOSChange(t *testing.T) {
	w := newWorld()
	h := osChange(t, w)
	w.desire(h, v2)
	a := start(t, w, fsm.Journal{}, epoch)
	wantWait(t, a.once(), time.Hour)
	wantActions(t, "the change", a.actions, readOS, fetch, inspect, publish, pull, write, sysctls, deploy, publish, reboot)
	wantReport(t, w, schema.StateRebooting, "rebooting into OS commit "+schema.Short(v2)+" for config "+schema.Short(h))
	j := a.saved
	want := fsm.Journal{Config: h, OS: v2, KernelArgs: []string{}, Phase: fsm.PhaseReboot, Started: epoch,
		Pulled: true, Deployed: true, Pending: []schema.Disruption{schema.DisruptionRestartKubelet}, BootID: "boot-1"}
	if d := cmp.Diff(want, j); d != "" {
		t.Errorf("journal before the reboot (-want +got):\n%s", d)
	}
	if r := w.node.Reported; r.OSBooted != v1 || r.OSStaged != v2 || r.CurrentConfig != "" {
		t.Errorf("reported %+v", r)
	}
	if len(w.restarts) != 0 || w.sysctls["vm.max_map_count"] != "262144" || w.files["/etc/herd/files/motd"] != "herd\n" {
		t.Errorf("restarts %v, sysctls %v, files %v", w.restarts, w.sysctls, w.files)
	}

	// Node events while the reboot is under way change nothing.
	n := len(a.actions)
	a.now = epoch.Add(time.Minute)
	wantWait(t, a.once(), 59*time.Minute)
	wantActions(t, "waiting for the reboot", a.since(n))

	w.reboot(false)
	b := start(t, w, a.saved, epoch.Add(3*time.Minute))
	wantWait(t, b.settle(), 0)
	wantActions(t, "after the boot", b.actions, readOS, fetch, cleanup, publish)
	wantReport(t, w, schema.StateIdle, "up to date: config "+schema.Short(h)+" on OS commit "+schema.Short(v2))
	if r := w.node.Reported; r.OSBooted != v2 || r.OSStaged != "" || r.CurrentConfig != h {
		t.Errorf("reported %+v", r)
	}
	if j := b.saved; j.Phase != fsm.PhaseDone || j.Applied != h || j.Pending != nil || j.BootID != "boot-2" {
		t.Errorf("journal after the boot: %+v", j)
	}
	if got := b.noted(fsm.NoteApplied); len(got) != 1 || got[0].Took != 3*time.Minute {
		t.Errorf("applied notes %+v, want one, 3m after the change began", got)
	}
	if len(w.restarts) != 0 || w.pulls != 1 || w.deploys != 1 {
		t.Errorf("restarts %v, %d pulls, %d deploys: the reboot takes the kubelet file on", w.restarts, w.pulls, w.deploys)
	}
	n = len(b.actions)
	b.once()
	wantActions(t, "at the target", b.since(n))
}

// Changes without a new OS are applied live: files and sysctls, restarts
// of the services whose files changed (containerd first), nothing more.
func TestLiveChanges(t *testing.T) {
	for _, tc := range []struct {
		name     string
		edit     func(s *spec)
		actions  []fsm.ActionKind
		restarts []string
	}{
		{"sysctl", func(s *spec) { s.sysctl = map[string]string{"vm.max_map_count": "524288"} },
			[]fsm.ActionKind{readOS, fetch, inspect, publish, write, sysctls, publish}, nil},
		{"file", func(s *spec) { s.files = []schema.File{{Path: "/etc/herd/files/motd", Content: "new\n"}} },
			[]fsm.ActionKind{readOS, fetch, inspect, publish, write, sysctls, publish}, nil},
		{"kubelet", func(s *spec) { s.maxPods = 64 },
			[]fsm.ActionKind{readOS, fetch, inspect, publish, write, sysctls, restart, publish}, []string{fsm.KubeletUnit}},
		{"kubelet and a registry file", func(s *spec) {
			s.maxPods = 64
			s.files = append(s.files, schema.File{Path: "/etc/containerd/certs.d/x/hosts.toml", Content: "server = \"x\"\n"})
		}, []fsm.ActionKind{readOS, fetch, inspect, publish, write, sysctls, restart, publish}, []string{fsm.KubeletUnit}},
	} {
		t.Run(strings.ReplaceAll(tc.name, " ", "_"), func(t *testing.T) {
			w := newWorld()
			base := spec{commit: v1, maxPods: 100, sysctl: map[string]string{"vm.max_map_count": "262144"}}
			a, _ := converge(t, w, base)
			w.restarts = nil
			s := base
			tc.edit(&s)
			h := w.publish(t, s)
			w.desire(h, v1)
			n := len(a.actions)
			wantWait(t, a.settle(), 0)
			wantActions(t, tc.name, a.since(n), tc.actions...)
			if d := cmp.Diff(tc.restarts, w.restarts); d != "" {
				t.Errorf("restarts (-want +got):\n%s", d)
			}
			if j := a.saved; j.Applied != h || j.Phase != fsm.PhaseDone || j.Pending != nil {
				t.Errorf("journal %+v", j)
			}
			if w.rebootRequests != 0 || w.deploys != 0 {
				t.Errorf("%d reboots, %d deploys", w.rebootRequests, w.deploys)
			}
		})
	}
}

// Restarts follow the order containerd, kubelet, each recorded in the
// journal as it is done.
func TestRestartOrder(t *testing.T) {
	w := newWorld()
	maxDL := 4
	a, _ := converge(t, w, spec{commit: v1, maxPods: 100})
	h := w.publish(t, spec{commit: v1, maxPods: 64})
	r := w.renders[h]
	cfg := r.Config
	cfg.Containerd = &schema.Containerd{MaxConcurrentDownloads: &maxDL}
	r2, err := schema.Render(cfg)
	if err != nil {
		t.Fatal(err)
	}
	w.renders[r2.Hash()] = r2
	w.desire(r2.Hash(), v1)
	w.restarts = nil
	before := len(a.noted(fsm.NoteRestarted))
	a.settle()
	if d := cmp.Diff([]string{fsm.ContainerdUnit, fsm.KubeletUnit}, w.restarts); d != "" {
		t.Errorf("restarts (-want +got):\n%s", d)
	}
	if got := a.noted(fsm.NoteRestarted)[before:]; len(got) != 2 || got[0].Unit != fsm.ContainerdUnit || got[1].Unit != fsm.KubeletUnit {
		t.Errorf("restart notes %+v", got)
	}
}

// A file whose class needs a reboot reboots the node without a deploy.
func TestFileNeedsReboot(t *testing.T) {
	w := newWorld()
	a, _ := converge(t, w, spec{commit: v1})
	h := w.publish(t, spec{commit: v1, files: []schema.File{{Path: "/etc/modules-load.d/herd.conf", Content: "br_netfilter\n"}}})
	w.desire(h, v1)
	n := len(a.actions)
	wantWait(t, a.settle(), time.Hour)
	wantActions(t, "the change", a.since(n), readOS, fetch, inspect, publish, write, sysctls, publish, reboot)
	wantReport(t, w, schema.StateRebooting, "rebooting to take on config "+schema.Short(h))
	if j := a.saved; j.Phase != fsm.PhaseReboot || j.Deployed || len(j.Pending) != 1 {
		t.Errorf("journal %+v", j)
	}
	w.reboot(false)
	b := start(t, w, a.saved, a.now)
	b.settle()
	wantReport(t, w, schema.StateIdle, "up to date")
	if w.deploys != 0 || w.pulls != 0 || b.saved.Applied != h || b.saved.Pending != nil {
		t.Errorf("%d deploys, %d pulls, journal %+v", w.deploys, w.pulls, b.saved)
	}
}

// Back to a commit still on disk: no pull, the rollback fast path; new
// kernel arguments on the same commit: a deploy, no pull.
func TestDeployWithoutPull(t *testing.T) {
	w := newWorld()
	a, _ := converge(t, w, spec{commit: v2})
	if w.pulls != 1 {
		t.Fatalf("%d pulls to v2", w.pulls)
	}
	for _, tc := range []struct {
		name string
		s    spec
		how  string
	}{
		{"rollback", spec{commit: v1}, "commit already on disk: rollback fast path, no pull"},
		{"kernel arguments", spec{commit: v1, kargs: []string{"console=ttyS0"}}, "same commit, new kernel arguments: no pull"},
	} {
		h := w.publish(t, tc.s)
		w.desire(h, tc.s.commit)
		a = start(t, w, a.saved, a.now)
		a.settle()
		wantReport(t, w, schema.StateRebooting, "("+tc.how+")")
		deployed := a.noted(fsm.NoteDeployed)
		if len(deployed) != 1 || !deployed[0].FastPath || deployed[0].Pulled || deployed[0].Msg != tc.how {
			t.Errorf("%s: deploy notes %+v", tc.name, deployed)
		}
		w.reboot(false)
		a = start(t, w, a.saved, a.now)
		a.settle()
		wantReport(t, w, schema.StateIdle, "("+tc.how+")")
	}
	if w.pulls != 1 || w.deploys != 3 {
		t.Errorf("%d pulls, %d deploys; want 1 and 3", w.pulls, w.deploys)
	}
}

// A boot that falls back to the previous deployment is refused: Degraded,
// for good, across restarts, until the desired state changes.
func TestFellBack(t *testing.T) {
	w := newWorld()
	h := osChange(t, w)
	w.desire(h, v2)
	a := start(t, w, fsm.Journal{}, epoch)
	a.settle()
	w.reboot(true)
	b := start(t, w, a.saved, epoch)
	wantWait(t, b.settle(), 0)
	wantActions(t, "after the failed boot", b.actions, readOS, fetch, publish)
	wantReport(t, w, schema.StateDegraded, "it fell back to the previous deployment")
	if r := w.node.Reported; r.OSBooted != v1 {
		t.Errorf("os-booted %s, want v1", r.OSBooted)
	}
	if j := b.saved; j.Refused == nil || j.Phase != fsm.PhaseDone || j.BootID != w.bootID {
		t.Errorf("journal %+v", j)
	}
	c := start(t, w, b.saved, epoch)
	c.settle()
	wantActions(t, "restarted", c.actions, readOS, publish)
	wantReport(t, w, schema.StateDegraded, "fell back")
	if len(b.noted(fsm.NoteRefused)) != 1 || len(c.noted(fsm.NoteRefused)) != 0 || w.rebootRequests != 1 {
		t.Errorf("refusals %d then %d, %d reboots", len(b.noted(fsm.NoteRefused)), len(c.noted(fsm.NoteRefused)), w.rebootRequests)
	}
}

// Every refusal leaves the node Degraded with a message naming the
// problem, before any file changes; it is not retried on other events or
// after a restart, and a new desired state is tried.
func TestRefusals(t *testing.T) {
	for _, tc := range []struct {
		name string
		// setup publishes the render and returns desired-config and -os.
		setup func(t *testing.T, w *world) (string, string)
		want  string
	}{{
		name:  "desired-config not a hash",
		setup: func(*testing.T, *world) (string, string) { return "rendered-abc", v1 },
		want:  `desired-config "rendered-abc" is not a config hash`,
	}, {
		name:  "desired-os not a hash",
		setup: func(t *testing.T, w *world) (string, string) { return w.publish(t, spec{commit: v1}), "v1" },
		want:  `desired-os "v1" is not an OSTree commit checksum`,
	}, {
		name:  "no commit at all",
		setup: func(t *testing.T, w *world) (string, string) { return w.publish(t, spec{}), "" },
		want:  "names no valid OS commit",
	}, {
		name:  "desired-os disagrees with the render",
		setup: func(t *testing.T, w *world) (string, string) { return w.publish(t, spec{commit: v2}), v3 },
		want:  "is not the OS commit " + schema.Short(v2),
	}, {
		name: "denied kernel argument",
		setup: func(t *testing.T, w *world) (string, string) {
			return w.publish(t, spec{commit: v2, kargs: []string{"systemd.run=/bin/sh"}}), v2
		},
		want: `kernel argument "systemd.run=/bin/sh" is denied`,
	}, {
		name: "unknown sysctl",
		setup: func(t *testing.T, w *world) (string, string) {
			return w.publish(t, spec{commit: v2, sysctl: map[string]string{"vm.no_such": "1"}}), v2
		},
		want: "unknown sysctl vm.no_such",
	}, {
		name: "commit the remote does not have",
		setup: func(t *testing.T, w *world) (string, string) {
			c := commit("9")
			return w.publish(t, spec{commit: c, files: []schema.File{{Path: "/etc/herd/files/x", Content: "x"}}}), c
		},
		want: "commit not found",
	}, {
		name: "render that fails its checks",
		setup: func(t *testing.T, w *world) (string, string) {
			w.fail[fetch] = fsm.Refusef("config abc: hashes to def")
			return w.publish(t, spec{commit: v2}), v2
		},
		want: "hashes to def",
	}} {
		t.Run(strings.ReplaceAll(tc.name, " ", "_"), func(t *testing.T) {
			w := newWorld()
			config, os := tc.setup(t, w)
			w.desire(config, os)
			a := start(t, w, fsm.Journal{}, epoch)
			wantWait(t, a.settle(), 0)
			wantReport(t, w, schema.StateDegraded, tc.want)
			for _, k := range a.actions {
				if k == write || k == sysctls || k == deploy || k == reboot || k == restart {
					t.Errorf("a refused change did %v: %v", k, a.actions)
				}
			}
			if j := a.saved; j.Refused == nil || j.Refused.Config != config || j.Refused.OS != os || !strings.Contains(j.Refused.Message, tc.want) {
				t.Errorf("journal %+v", j)
			}
			if len(w.files) != 0 || w.sysctls["vm.max_map_count"] != "65530" {
				t.Errorf("files %v, sysctls %v", w.files, w.sysctls)
			}
			// No hot loop: other events and a restart do not retry.
			n := len(a.actions)
			a.once()
			wantActions(t, "another event", a.since(n))
			b := start(t, w, a.saved, epoch)
			b.settle()
			wantActions(t, "restarted", b.actions, readOS, publish)
			if len(a.noted(fsm.NoteRefused)) != 1 || len(b.noted(fsm.NoteRefused)) != 0 {
				t.Errorf("refusal notes: %d, then %d after a restart", len(a.noted(fsm.NoteRefused)), len(b.noted(fsm.NoteRefused)))
			}
			// A new desired state is tried.
			h := w.publish(t, spec{commit: v1, sysctl: map[string]string{"vm.max_map_count": "262144"}})
			w.desire(h, v1)
			b.settle()
			wantReport(t, w, schema.StateIdle, "up to date")
			if b.saved.Refused != nil {
				t.Errorf("refusal still recorded: %+v", b.saved.Refused)
			}
		})
	}
}

// A sysroot without a booted deployment is refused.
func TestNoBootedDeployment(t *testing.T) {
	w := newWorld()
	w.booted = 0
	h := w.publish(t, spec{commit: v1})
	w.desire(h, v1)
	a := start(t, w, fsm.Journal{}, epoch)
	a.settle()
	wantReport(t, w, schema.StateDegraded, "no booted deployment")
}

// Transient failures are retried with exponential backoff that Node events
// do not cut short; from the third the node is Degraded; a new desired
// state starts afresh.
func TestTransientFailures(t *testing.T) {
	w := newWorld()
	h := w.publish(t, spec{commit: v1, sysctl: map[string]string{"vm.max_map_count": "262144"}})
	r := w.renders[h]
	delete(w.renders, h) // the ConfigMap is not there yet
	w.desire(h, v1)
	a := start(t, w, fsm.Journal{}, epoch)
	wantWait(t, a.once(), time.Second)
	wantReport(t, w, schema.StateWorking, "not found (attempt 1, retrying in 1s)")

	n := len(a.actions)
	a.now = epoch.Add(500 * time.Millisecond)
	wantWait(t, a.once(), 500*time.Millisecond)
	wantActions(t, "an event while backing off", a.since(n))

	a.now = epoch.Add(time.Second)
	wantWait(t, a.once(), 2*time.Second)
	wantReport(t, w, schema.StateWorking, "(attempt 2, retrying in 2s)")
	a.now = epoch.Add(3 * time.Second)
	wantWait(t, a.once(), 4*time.Second)
	wantReport(t, w, schema.StateDegraded, "(attempt 3, retrying in 4s)")
	if got := len(a.noted(fsm.NoteRetry)); got != 3 {
		t.Errorf("%d retry notes", got)
	}

	// The ConfigMap appears: the next try converges; the failure stays the
	// message until then (no Working in between).
	w.renders[h] = r
	a.now = epoch.Add(7 * time.Second)
	n = len(a.actions)
	wantWait(t, a.settle(), 0)
	wantActions(t, "the retry", a.since(n), readOS, fetch, inspect, write, sysctls, publish)
	wantReport(t, w, schema.StateIdle, "up to date")

	// A new desired state that fails starts at attempt 1 again.
	h2 := w.publish(t, spec{commit: v1})
	delete(w.renders, h2)
	w.desire(h2, v1)
	a.once()
	wantReport(t, w, schema.StateWorking, "(attempt 1, retrying in 1s)")
	if got := backoffs(a); got[len(got)-1] != time.Second {
		t.Errorf("backoffs %v", got)
	}
}

func backoffs(a *agent) []time.Duration {
	var out []time.Duration
	for _, n := range a.noted(fsm.NoteRetry) {
		out = append(out, n.Took)
	}
	return out
}

// A failed action of the change is a transient failure at that point: the
// retry resumes without doing anything twice.
func TestFailuresResume(t *testing.T) {
	for _, k := range []fsm.ActionKind{readOS, inspect, publish, pull, write, sysctls, deploy, reboot} {
		t.Run(k.String(), func(t *testing.T) {
			w := newWorld()
			h := osChange(t, w)
			w.desire(h, v2)
			w.fail[k] = errors.New("injected")
			a := start(t, w, fsm.Journal{}, epoch)
			a.once()
			if got := len(a.noted(fsm.NoteRetry)); got != 1 {
				t.Fatalf("%d retries after %v failed", got, k)
			}
			a.now = epoch.Add(time.Minute)
			a.settle()
			wantReport(t, w, schema.StateRebooting, "rebooting into")
			if w.pulls != 1 || w.deploys != 1 || w.rebootRequests != 1 {
				t.Errorf("%d pulls, %d deploys, %d reboot requests; want one each", w.pulls, w.deploys, w.rebootRequests)
			}
		})
	}
}

// A failed restart is retried; the unit is restarted once it works.
func TestRestartFails(t *testing.T) {
	w := newWorld()
	a, _ := converge(t, w, spec{commit: v1, maxPods: 100})
	h := w.publish(t, spec{commit: v1, maxPods: 64})
	w.desire(h, v1)
	w.restarts = nil
	w.fail[restart] = errors.New("unit kubelet.service failed")
	a.once()
	wantReport(t, w, schema.StateWorking, "config "+schema.Short(h)+": unit kubelet.service failed (attempt 1")
	if a.saved.Pending == nil {
		t.Errorf("pending restart dropped: %+v", a.saved)
	}
	a.now = a.now.Add(time.Minute)
	a.settle()
	wantReport(t, w, schema.StateIdle, "up to date")
	if d := cmp.Diff([]string{fsm.KubeletUnit}, w.restarts); d != "" {
		t.Errorf("restarts (-want +got):\n%s", d)
	}
}

// Writing files fails halfway and the previous files are restored: the
// restored files' disruption is still taken on, also when the desired
// state goes back to what the disk holds.
func TestWriteFailsAndRestores(t *testing.T) {
	w := newWorld()
	a, h1 := converge(t, w, spec{commit: v1, maxPods: 100})
	h2 := w.publish(t, spec{commit: v1, maxPods: 64})
	w.desire(h2, v1)
	w.restarts = nil
	w.failWrite = true
	a.once()
	wantReport(t, w, schema.StateWorking, "no space left on device; restored the previous files (attempt 1")
	if j := a.saved; len(j.Pending) != 1 || j.Pending[0] != schema.DisruptionRestartKubelet {
		t.Errorf("journal %+v", j)
	}
	w.desire(h1, v1) // back to what the disk holds
	a.settle()
	wantReport(t, w, schema.StateIdle, "up to date")
	if d := cmp.Diff([]string{fsm.KubeletUnit}, w.restarts); d != "" {
		t.Errorf("restarts (-want +got):\n%s", d)
	}
}

// The agent publishes its report again when someone else overwrote the
// annotations, but not for a Node older than its own last patch.
func TestReportRepublished(t *testing.T) {
	w := newWorld()
	a, h := converge(t, w, spec{commit: v1})
	good := w.node.Reported
	w.node.Reported = fsm.Report{State: schema.StateDegraded}
	w.rv = 1000
	w.node.ResourceVersion = "1000"
	n := len(a.actions)
	a.once()
	wantActions(t, "overwritten", a.since(n), publish)
	if w.node.Reported != good {
		t.Errorf("reported %+v, want %+v", w.node.Reported, good)
	}
	// A stale copy from the watch, from before the agent's last patch.
	w.node.Reported, w.node.ResourceVersion = fsm.Report{}, "999"
	n = len(a.actions)
	a.once()
	wantActions(t, "stale", a.since(n))
	_ = h
}

// A reboot that does not come is requested again after the timeout,
// without a second deploy.
func TestRebootRequestedAgain(t *testing.T) {
	w := newWorld()
	h := osChange(t, w)
	w.desire(h, v2)
	a := start(t, w, fsm.Journal{}, epoch)
	a.settle()
	a.now = epoch.Add(30 * time.Minute)
	wantWait(t, a.once(), 30*time.Minute)
	a.now = epoch.Add(61 * time.Minute)
	a.settle()
	if len(a.noted(fsm.NoteRebootAgain)) != 1 || w.rebootRequests != 2 || w.deploys != 1 || w.pulls != 1 {
		t.Errorf("%d reboot-again notes, %d reboot requests, %d deploys, %d pulls", len(a.noted(fsm.NoteRebootAgain)), w.rebootRequests, w.deploys, w.pulls)
	}
}

// A new agent (a restart) after the reboot request, in the same boot,
// requests the reboot again: the deployment is staged, nothing is redone.
func TestRestartBeforeReboot(t *testing.T) {
	w := newWorld()
	h := osChange(t, w)
	w.desire(h, v2)
	a := start(t, w, fsm.Journal{}, epoch)
	a.settle()
	b := start(t, w, a.saved, epoch)
	wantWait(t, b.settle(), time.Hour)
	wantActions(t, "restarted", b.actions, readOS, fetch, inspect, publish, sysctls, publish, reboot)
	if w.rebootRequests != 2 || w.deploys != 1 || w.pulls != 1 {
		t.Errorf("%d reboot requests, %d deploys, %d pulls", w.rebootRequests, w.deploys, w.pulls)
	}
}

// Killed after the deploy, the agent finds the desired state went back to
// the running commit: it takes the staged deployment back, no reboot.
func TestUnstageWhenTargetReverts(t *testing.T) {
	w := newWorld()
	a, h1 := converge(t, w, spec{commit: v1, maxPods: 100})
	h2 := w.publish(t, spec{commit: v2, maxPods: 100})
	w.desire(h2, v2)
	a = start(t, w, a.saved, epoch)
	a.sync(dieAfter(deploy))
	w.desire(h1, v1)
	b := start(t, w, a.saved, epoch)
	wantWait(t, b.settle(), 0)
	wantReport(t, w, schema.StateIdle, "up to date")
	if r := w.node.Reported; r.OSStaged != "" || r.CurrentConfig != h1 {
		t.Errorf("reported %+v", r)
	}
	if w.deps[0].checksum != v1 || w.rebootRequests != 0 || len(b.noted(fsm.NoteUnstaged)) != 1 {
		t.Errorf("default %s, %d reboot requests, unstage notes %v", schema.Short(w.deps[0].checksum), w.rebootRequests, b.noted(fsm.NoteUnstaged))
	}
}

// A change that needs a reboot for its files, while a deployment of an
// earlier target is staged, takes the staged one back first: the reboot
// boots the running commit.
func TestUnstageBeforeFileReboot(t *testing.T) {
	w := newWorld()
	a, _ := converge(t, w, spec{commit: v1})
	w.desire(w.publish(t, spec{commit: v2}), v2)
	a = start(t, w, a.saved, epoch)
	a.sync(dieAfter(deploy))
	h := w.publish(t, spec{commit: v1, files: []schema.File{{Path: "/etc/modules-load.d/x.conf", Content: "x\n"}}})
	w.desire(h, v1)
	b := start(t, w, a.saved, epoch)
	b.settle()
	if w.deps[0].checksum != v1 || w.rebootRequests != 1 {
		t.Fatalf("default %s, %d reboot requests", schema.Short(w.deps[0].checksum), w.rebootRequests)
	}
	w.reboot(false)
	c := start(t, w, b.saved, epoch)
	c.settle()
	wantReport(t, w, schema.StateIdle, "up to date")
}

// Pre-staging pulls the commit prestage-os names while Idle, without
// disruption, reports os-pulled, and the apply then needs no pull.
func TestPrestage(t *testing.T) {
	w := newWorld()
	a, h1 := converge(t, w, spec{commit: v1})
	w.node.PrestageOS = v2
	n := len(a.actions)
	a.settle()
	wantActions(t, "pre-stage", a.since(n), has, fetch, publish, prestage, publish)
	if r := w.node.Reported; r.OSPulled != v2 || r.State != schema.StateIdle || !strings.Contains(r.Message, "up to date") {
		t.Errorf("reported %+v", r)
	}
	if j := a.saved; j.OSPulled != v2 || j.PrePulled != v2 || j.Applied != h1 {
		t.Errorf("journal %+v", j)
	}
	if len(a.noted(fsm.NotePrestageHandled)) != 1 || w.deploys != 0 || len(w.written) != 0 {
		t.Errorf("handled %d, %d deploys, written %v", len(a.noted(fsm.NotePrestageHandled)), w.deploys, w.written)
	}
	// Handled once: other events do nothing.
	n = len(a.actions)
	a.settle()
	wantActions(t, "again", a.since(n))

	// The rollout: deploy without a pull, noted as pre-staged.
	h2 := w.publish(t, spec{commit: v2})
	w.desire(h2, v2)
	a.settle()
	wantReport(t, w, schema.StateRebooting, "(commit pre-staged: no pull)")
	if j := a.saved; !j.Prestaged || j.PrePulled != "" {
		t.Errorf("journal %+v", j)
	}
	if d := a.noted(fsm.NoteDeployed); len(d) != 1 || d[0].Pulled || d[0].FastPath {
		t.Errorf("deploy notes %+v", d)
	}
	if w.pulls != 1 {
		t.Errorf("%d pulls", w.pulls)
	}
	// The request ends: os-pulled goes.
	w.reboot(false)
	w.node.PrestageOS = ""
	b := start(t, w, a.saved, epoch)
	b.settle()
	if r := w.node.Reported; r.OSPulled != "" || r.State != schema.StateIdle {
		t.Errorf("reported %+v", r)
	}
	if b.saved.OSPulled != "" {
		t.Errorf("journal %+v", b.saved)
	}
}

// A commit on disk already is reported without a pull; a commit prestage-os
// names while the node is not Idle waits.
func TestPrestageOnDiskAndNotIdle(t *testing.T) {
	w := newWorld()
	a, _ := converge(t, w, spec{commit: v1})
	w.node.PrestageOS = v1
	n := len(a.actions)
	a.settle()
	wantActions(t, "on disk", a.since(n), has, publish)
	if w.node.Reported.OSPulled != v1 || a.saved.PrePulled != "" {
		t.Errorf("reported %+v, journal %+v", w.node.Reported, a.saved)
	}

	w2 := newWorld()
	w2.desire("nonsense", "")
	w2.node.PrestageOS = v2
	b := start(t, w2, fsm.Journal{}, epoch)
	b.settle()
	wantReport(t, w2, schema.StateDegraded, "not a config hash")
	for _, k := range b.actions {
		if k == prestage || k == has {
			t.Errorf("pre-staged while Degraded: %v", b.actions)
		}
	}
}

// A failed pre-stage is reported in the message only; an interrupted one
// is tried again.
func TestPrestageFailsOrIsInterrupted(t *testing.T) {
	w := newWorld()
	a, _ := converge(t, w, spec{commit: v1})
	w.node.PrestageOS = commit("9") // not on the remote
	a.settle()
	wantReport(t, w, schema.StateIdle, "pre-staging OS commit "+schema.Short(commit("9"))+" failed (the apply will pull it)")
	if len(a.noted(fsm.NotePrestageFailed)) != 1 || len(a.noted(fsm.NotePrestageHandled)) != 1 {
		t.Errorf("notes %+v", a.notes)
	}
	w.node.PrestageOS = "v2"
	a.settle()
	wantReport(t, w, schema.StateIdle, `prestage-os "v2" is not an OSTree commit checksum`)

	w.node.PrestageOS = v2
	w.interruptPrestage = true
	a.settle()
	if len(a.noted(fsm.NotePrestageInterrupted)) != 1 || w.node.Reported.OSPulled != v2 {
		t.Errorf("interrupted notes %d, reported %+v (the second try pulls)", len(a.noted(fsm.NotePrestageInterrupted)), w.node.Reported)
	}
}

// The converging taint goes once the node is Idle at its target, not
// before; a failed removal is retried with backoff.
func TestConvergingTaint(t *testing.T) {
	w := newWorld()
	w.node.Tainted = true
	h := osChange(t, w)
	w.desire(h, v2)
	a := start(t, w, fsm.Journal{}, epoch)
	a.settle()
	if w.untaints != 0 {
		t.Fatal("untainted before the target")
	}
	w.reboot(false)
	w.fail[untaint] = errors.New("conflict")
	b := start(t, w, a.saved, epoch)
	wantWait(t, b.settle(), time.Second)
	if !w.node.Tainted || len(b.noted(fsm.NoteUntaintFailed)) != 1 {
		t.Errorf("tainted %v, notes %+v", w.node.Tainted, b.notes)
	}
	n := len(b.actions)
	b.now = epoch.Add(500 * time.Millisecond)
	wantWait(t, b.once(), 500*time.Millisecond)
	wantActions(t, "backing off", b.since(n))
	b.now = epoch.Add(time.Second)
	b.settle()
	if w.node.Tainted || len(b.noted(fsm.NoteUntainted)) != 1 {
		t.Errorf("tainted %v, notes %+v", w.node.Tainted, b.notes)
	}
}

// Pending disruptions of an unfinished change carry over to the next one;
// a reboot takes them all on.
func TestPendingCarriesOver(t *testing.T) {
	w := newWorld()
	a, _ := converge(t, w, spec{commit: v1, maxPods: 100})
	h2 := w.publish(t, spec{commit: v1, maxPods: 64})
	w.desire(h2, v1)
	a = start(t, w, a.saved, epoch)
	a.sync(dieAfter(write)) // killed after writing the kubelet file
	h3 := w.publish(t, spec{commit: v1, maxPods: 64, sysctl: map[string]string{"net.core.somaxconn": "8192"}})
	w.desire(h3, v1)
	w.restarts = nil
	b := start(t, w, a.saved, epoch)
	b.settle()
	if d := cmp.Diff([]string{fsm.KubeletUnit}, w.restarts); d != "" {
		t.Errorf("restarts (-want +got):\n%s", d)
	}

	// A pending restart a reboot took on is dropped.
	h4 := w.publish(t, spec{commit: v1, maxPods: 32})
	w.desire(h4, v1)
	c := start(t, w, b.saved, epoch)
	c.sync(dieAfter(write))
	w.reboot(false)
	w.restarts = nil
	d := start(t, w, c.saved, epoch)
	d.settle()
	if len(w.restarts) != 0 {
		t.Errorf("restarted %v after a reboot", w.restarts)
	}
	wantReport(t, w, schema.StateIdle, "up to date")
}

// The agent restarted after it requested the reboot, in the same boot,
// finds the desired state went back to the running commit: it takes the
// staged deployment back and does not reboot.
func TestTargetRevertedBeforeTheReboot(t *testing.T) {
	w := newWorld()
	a, h1 := converge(t, w, spec{commit: v1, maxPods: 100})
	w.desire(w.publish(t, spec{commit: v2, maxPods: 100}), v2)
	a = start(t, w, a.saved, epoch)
	a.settle()
	if a.saved.Phase != fsm.PhaseReboot || w.rebootRequests != 1 {
		t.Fatalf("journal %+v, %d reboot requests", a.saved, w.rebootRequests)
	}
	w.desire(h1, v1)
	b := start(t, w, a.saved, epoch)
	wantWait(t, b.settle(), 0)
	wantActions(t, "reverted", b.actions, readOS, fetch, inspect, publish, write, sysctls, deploy, publish)
	wantReport(t, w, schema.StateIdle, "up to date")
	if w.deps[0].checksum != v1 || w.rebootRequests != 1 || b.saved.Phase != fsm.PhaseDone {
		t.Errorf("default %s, %d reboot requests, journal %+v", schema.Short(w.deps[0].checksum), w.rebootRequests, b.saved)
	}
}

// The agent restarted after it requested the reboot, in the same boot,
// finds a new target: it pulls and deploys that one and reboots into it.
func TestNewTargetBeforeTheReboot(t *testing.T) {
	w := newWorld()
	a, _ := converge(t, w, spec{commit: v1})
	w.desire(w.publish(t, spec{commit: v2}), v2)
	a = start(t, w, a.saved, epoch)
	a.settle()
	h3 := w.publish(t, spec{commit: v3})
	w.desire(h3, v3)
	b := start(t, w, a.saved, epoch)
	wantWait(t, b.settle(), time.Hour)
	wantActions(t, "new target", b.actions, readOS, fetch, inspect, publish, pull, write, sysctls, deploy, publish, reboot)
	w.reboot(false)
	c := start(t, w, b.saved, epoch)
	c.settle()
	wantReport(t, w, schema.StateIdle, "up to date: config "+schema.Short(h3)+" on OS commit "+schema.Short(v3))
}

// The pre-stage request ends while the agent runs: os-pulled goes with a
// report of its own.
func TestPrestageRequestEnds(t *testing.T) {
	w := newWorld()
	a, _ := converge(t, w, spec{commit: v1})
	w.node.PrestageOS = v2
	a.settle()
	w.node.PrestageOS = ""
	n := len(a.actions)
	a.settle()
	wantActions(t, "request gone", a.since(n), publish)
	if w.node.Reported.OSPulled != "" || a.saved.OSPulled != "" || w.node.Reported.State != schema.StateIdle {
		t.Errorf("reported %+v, journal %+v", w.node.Reported, a.saved)
	}
	// The commit stays pre-pulled for the change that takes it on.
	if a.saved.PrePulled != v2 {
		t.Errorf("journal %+v", a.saved)
	}
}

// Reports that fail are tried again: a refusal's after 5 s, a transient
// failure's with the backoff, a re-publish after 5 s, os-pulled after 5 s.
func TestReportFailures(t *testing.T) {
	injected := errors.New("apiserver unavailable")

	t.Run("refusal", func(t *testing.T) {
		w := newWorld()
		w.desire("bad", "")
		a := start(t, w, fsm.Journal{}, epoch)
		a.once() // refuses, recorded in the journal
		b := start(t, w, a.saved, epoch)
		w.fail[publish] = injected
		wantWait(t, b.once(), 5*time.Second)
		if len(b.noted(fsm.NoteReportFailed)) != 1 {
			t.Errorf("notes %+v", b.notes)
		}
		b.now = epoch.Add(time.Second)
		n := len(b.actions)
		wantWait(t, b.once(), 4*time.Second)
		wantActions(t, "backing off", b.since(n))
		b.now = epoch.Add(5 * time.Second)
		b.settle()
		wantReport(t, w, schema.StateDegraded, "not a config hash")
	})

	t.Run("transient", func(t *testing.T) {
		w := newWorld()
		h := w.publish(t, spec{commit: v1})
		delete(w.renders, h)
		w.desire(h, v1)
		a := start(t, w, fsm.Journal{}, epoch)
		w.fail[publish] = injected // the first report: Working fails
		a.once()
		w.fail[publish] = injected
		wantWait(t, a.once(), time.Second) // the failure's report fails too
		if len(a.noted(fsm.NoteReportFailed)) != 1 || len(a.noted(fsm.NoteRetry)) != 1 {
			t.Errorf("notes %+v", a.notes)
		}
	})

	t.Run("re-publish", func(t *testing.T) {
		w := newWorld()
		a, _ := converge(t, w, spec{commit: v1})
		w.node.Reported, w.rv = fsm.Report{}, 1000
		w.node.ResourceVersion = "1000"
		w.fail[publish] = injected
		wantWait(t, a.once(), 5*time.Second)
		a.once()
		wantReport(t, w, schema.StateIdle, "up to date")
	})

	t.Run("os-pulled", func(t *testing.T) {
		w := newWorld()
		a, _ := converge(t, w, spec{commit: v1})
		w.node.PrestageOS = v1
		w.fail[publish] = injected
		if act := a.once(); act.Kind != fsm.Resync || w.node.Reported.OSPulled != "" {
			t.Fatalf("after a failed report of os-pulled: %v, reported %+v", act.Kind, w.node.Reported)
		}
		w.fail[publish] = injected
		wantWait(t, a.once(), 5*time.Second) // the settled sync reports os-pulled, fails again
		a.once()
		if w.node.Reported.OSPulled != v1 {
			t.Errorf("reported %+v", w.node.Reported)
		}
	})
}

// The target moves on just as the agent reaches the old one: the taint
// stays until the node is at the new target (a joining node takes no work
// before), then goes.
func TestTaintStaysWhenTargetMoves(t *testing.T) {
	w := newWorld()
	w.node.Tainted = true
	h1 := w.publish(t, spec{commit: v1, sysctl: map[string]string{"vm.max_map_count": "262144"}})
	h2 := w.publish(t, spec{commit: v1, sysctl: map[string]string{"vm.max_map_count": "524288"}})
	w.desire(h1, v1)
	w.before[untaint] = func() { w.desire(h2, v1) } // the controller moves the target on
	a := start(t, w, fsm.Journal{}, epoch)
	a.once()
	if !w.node.Tainted || len(a.noted(fsm.NoteUntainted)) != 0 {
		t.Fatalf("the taint went at %s while the node desires %s", schema.Short(a.saved.Applied), schema.Short(h2))
	}
	a.settle()
	wantReport(t, w, schema.StateIdle, "up to date: config "+schema.Short(h2))
	if w.node.Tainted || len(a.noted(fsm.NoteUntainted)) != 1 {
		t.Errorf("tainted %v at the new target; notes %+v", w.node.Tainted, a.noted(fsm.NoteUntainted))
	}
}
