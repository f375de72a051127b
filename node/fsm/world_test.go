package fsm_test

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"herd.dev/herd/node/fsm"
	"herd.dev/herd/schema"
)

// world is a node in memory: a sysroot, a repository and its remote, the
// files and sysctls under the root, the Node object and the rendered
// ConfigMaps. It carries out the state machine's actions as the executor
// does on a real node, so that the tests below drive fsm.Step through
// whole changes without root, OSTree or an API server. The integration
// tests of package node run the same changes on the real parts.
type world struct {
	bootID string
	boots  int

	deps   []deployment // in boot order: deps[0] boots next
	booted int          // id of the running deployment
	nextID int
	disk   map[string]bool // commits in the sysroot's repository
	remote map[string]bool // commits the remote serves

	files    map[string]string // rendered files on disk, by path
	manifest string            // the render the files were written for
	sysctls  map[string]string // the kernel's, by key

	renders map[string]*schema.Rendered // rendered ConfigMaps, by hash
	node    fsm.Node
	rv      int

	// fail makes the next action of a kind fail with the error.
	fail map[fsm.ActionKind]error
	// interruptPrestage makes the next Prestage stop as the Node changed.
	interruptPrestage bool
	// failWrite makes the next WriteFiles fail halfway and restore the
	// previous files, as the executor does.
	failWrite bool
	// before runs (once) right before the next action of its kind: the
	// world changing while the agent works.
	before map[fsm.ActionKind]func()

	// What the world saw done.
	pulls, deploys, cleanups, untaints int
	restarts                           []string
	rebootRequests                     int
	rebootPending                      bool     // requested, not yet played (reboot)
	written                            []string // files written or removed, in order
}

type deployment struct {
	id       int
	checksum string
	kargs    []string
}

// commit returns a fake OSTree commit checksum named by s.
func commit(s string) string { return strings.Repeat(fmt.Sprintf("%x", s[0]), 32) }

var (
	v1 = commit("1")
	v2 = commit("2")
	v3 = commit("3")
)

// newWorld is a node booted into v1, whose remote serves v1, v2 and v3.
func newWorld() *world {
	w := &world{
		disk:    map[string]bool{v1: true},
		remote:  map[string]bool{v1: true, v2: true, v3: true},
		files:   map[string]string{},
		sysctls: map[string]string{"vm.max_map_count": "65530", "net.core.somaxconn": "4096"},
		renders: map[string]*schema.Rendered{},
		fail:    map[fsm.ActionKind]error{},
		before:  map[fsm.ActionKind]func(){},
	}
	w.deps = []deployment{{id: 1, checksum: v1, kargs: []string{}}}
	w.booted, w.nextID = 1, 2
	w.rv = 1
	w.node.ResourceVersion = "1"
	w.newBoot()
	return w
}

func (w *world) newBoot() {
	w.boots++
	w.bootID = fmt.Sprintf("boot-%d", w.boots)
}

// reboot boots the default deployment, or, when fallback, the one that
// ran before (a failed boot).
func (w *world) reboot(fallback bool) {
	w.rebootPending = false
	if !fallback {
		w.booted = w.deps[0].id
	}
	w.newBoot()
}

// spec is a render's knobs.
type spec struct {
	commit  string
	kargs   []string
	maxPods int
	sysctl  map[string]string
	files   []schema.File
	remote  string // "" for the default remote "origin"
}

// publish stores the render of s as a ConfigMap and returns its hash.
func (w *world) publish(t testing.TB, s spec) string {
	t.Helper()
	remote := s.remote
	if remote == "" {
		remote = "origin"
	}
	cfg := schema.NodeConfig{
		OS:         schema.OSConfig{Ref: "os/stable", Commit: s.commit, Remote: &schema.RemoteConfig{Name: remote, URL: "https://os.example.com/repo"}},
		KernelArgs: s.kargs,
		Sysctl:     s.sysctl,
		Files:      slices.Clone(s.files),
	}
	if s.maxPods != 0 {
		mp := s.maxPods
		cfg.Kubelet = &schema.Kubelet{MaxPods: &mp}
	}
	r, err := schema.Render(cfg)
	if err != nil {
		t.Fatal(err)
	}
	w.renders[r.Hash()] = r
	return r.Hash()
}

// desire sets the controller's annotations.
func (w *world) desire(config, commit string) {
	w.node.Desired = fsm.Key{Config: config, OS: commit}
	w.rv++
	w.node.ResourceVersion = fmt.Sprint(w.rv)
}

func (w *world) dep(id int) *deployment {
	for i := range w.deps {
		if w.deps[i].id == id {
			return &w.deps[i]
		}
	}
	return nil
}

func (w *world) os() fsm.OS {
	var o fsm.OS
	if b := w.dep(w.booted); b != nil {
		o.Booted = &fsm.Deployment{ID: fmt.Sprint(b.id), Checksum: b.checksum, KernelArgs: slices.Clone(b.kargs)}
	}
	d := w.deps[0]
	o.Default = &fsm.Deployment{ID: fmt.Sprint(d.id), Checksum: d.checksum, KernelArgs: slices.Clone(d.kargs)}
	return o
}

// classOf is the disruption a change of the file at p needs.
func classOf(p string) schema.Disruption {
	switch p {
	case schema.KubeletDropInPath:
		return schema.DisruptionRestartKubelet
	case schema.ContainerdDropInPath:
		return schema.DisruptionRestartContainerd
	}
	if r, ok := schema.AllowedPath(p); ok {
		return r.Apply
	}
	return schema.DisruptionNone
}

// diff returns the files that differ between the disk and r: changed,
// new, or written before and not in r.
func (w *world) diff(r *schema.Rendered) []string {
	var out []string
	want := map[string]string{}
	for _, f := range r.Files {
		want[f.Path] = f.Content
		if have, ok := w.files[f.Path]; !ok || have != f.Content {
			out = append(out, f.Path)
		}
	}
	for p := range w.files {
		if _, ok := want[p]; !ok {
			out = append(out, p)
		}
	}
	slices.Sort(out)
	return out
}

func classes(paths []string) []schema.Disruption {
	var out []schema.Disruption
	for _, p := range paths {
		if c := classOf(p); !slices.Contains(out, c) {
			out = append(out, c)
		}
	}
	slices.Sort(out)
	return out
}

var errNotFound = errors.New("commit not found")

// do carries out an action and returns its result, as the executor does.
func (w *world) do(act fsm.Action) fsm.Result {
	r := fsm.Result{Of: act.Kind}
	if f, ok := w.before[act.Kind]; ok {
		delete(w.before, act.Kind)
		f()
	}
	if err, ok := w.fail[act.Kind]; ok {
		delete(w.fail, act.Kind)
		r.Err = err
		return r
	}
	switch act.Kind {
	case fsm.ReadOS:
		r.OS = w.os()
	case fsm.FetchRender:
		rr, ok := w.renders[act.Config]
		if !ok {
			r.Err = fmt.Errorf("rendered config herd-system/herd-rendered-%s not found", act.Config)
		}
		r.Render = rr
	case fsm.Inspect:
		for k := range act.Render.Config.Sysctl {
			if _, ok := w.sysctls[k]; !ok {
				r.Err = fsm.Refusef("config %s: unknown sysctl %s", schema.Short(act.Render.Hash()), k)
				return r
			}
		}
		d := w.diff(act.Render)
		r.Classes, r.Differ, r.ManifestHash = classes(d), len(d), w.manifest
	case fsm.Publish:
		w.node.Reported = act.Report
		w.rv++
		w.node.ResourceVersion = fmt.Sprint(w.rv)
		r.ResourceVersion = w.node.ResourceVersion
	case fsm.Pull, fsm.Prestage:
		if act.Kind == fsm.Prestage && w.interruptPrestage {
			w.interruptPrestage = false
			r.Interrupted, r.Err = true, errors.New("context canceled")
			return r
		}
		switch {
		case w.disk[act.Commit]:
		case w.remote[act.Commit]:
			w.disk[act.Commit], r.Done = true, true
			w.pulls++
		default:
			r.Err = &fsm.Refusal{Msg: "OS commit " + schema.Short(act.Commit) + ": commit not found", Err: errNotFound}
		}
	case fsm.HasCommit:
		r.Done = w.disk[act.Commit]
	case fsm.WriteFiles:
		d := w.diff(act.Render)
		if w.failWrite {
			// The first file was written, then restored.
			w.failWrite = false
			w.written = append(w.written, d[0], d[0])
			r.Classes, r.Count = classes(d[:1]), 1
			r.Err = errors.New("write " + d[0] + ": no space left on device; restored the previous files")
			return r
		}
		w.files = map[string]string{}
		for _, f := range act.Render.Files {
			w.files[f.Path] = f.Content
		}
		w.manifest = act.Config
		w.written = append(w.written, d...)
		r.Classes, r.Count = classes(d), len(d)
	case fsm.ApplySysctls:
		for k, v := range act.Render.Config.Sysctl {
			if w.sysctls[k] != v {
				w.sysctls[k] = v
				r.Count++
			}
		}
	case fsm.Restart:
		w.restarts = append(w.restarts, act.Unit)
	case fsm.Deploy:
		if !w.disk[act.Commit] {
			r.Err = &fsm.Refusal{Msg: "OS commit " + schema.Short(act.Commit) + ": commit not found", Err: errNotFound}
			return r
		}
		w.deploys++
		d := deployment{id: w.nextID, checksum: act.Commit, kargs: slices.Clone(act.KernelArgs)}
		w.nextID++
		keep := []deployment{d}
		for _, o := range w.deps {
			if o.id == w.booted {
				keep = append(keep, o)
			}
		}
		w.deps = keep
	case fsm.Reboot:
		w.rebootRequests++
		w.rebootPending = true
	case fsm.Cleanup:
		w.cleanups++
	case fsm.Untaint:
		// As the executor: only while the Node still desires what the
		// agent is at.
		if w.node.Desired != (fsm.Key{Config: act.Config, OS: act.Commit}) {
			return r
		}
		r.Done = w.node.Tainted
		w.node.Tainted = false
		w.untaints++
	default:
		panic(fmt.Sprintf("world: action %v", act.Kind))
	}
	return r
}

// agent is a state machine at work on a world: the executor's loop, with
// the journal "on disk" in saved.
type agent struct {
	t     testing.TB
	w     *world
	s     fsm.State
	saved fsm.Journal
	now   time.Time

	actions []fsm.ActionKind // every action carried out
	notes   []fsm.Note
}

var epoch = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// start starts an agent from the journal on disk, as after a restart: it
// remembers nothing else.
func start(t testing.TB, w *world, saved fsm.Journal, now time.Time) *agent {
	return &agent{t: t, w: w, s: fsm.New(saved, w.bootID, time.Hour), saved: saved, now: now}
}

// step runs one Step and writes the journal when it changed, recording
// the transition.
func (a *agent) step(in fsm.Input) fsm.Action {
	a.t.Helper()
	before := a.s.Journal.Clone()
	var out fsm.Output
	a.s, out = fsm.Step(a.s, in)
	if !before.Equal(a.s.Journal) {
		recordTransitions(before, a.s.Journal, a.s.BootID)
	}
	if !a.s.Journal.Equal(a.saved) {
		a.saved = a.s.Journal.Clone()
	}
	a.notes = append(a.notes, out.Notes...)
	return out.Action
}

// crash says where a sync dies: before carrying out the n-th action of
// the sync (the journal is written, the action not done), or after it
// (done, its result never reaches the state machine).
type crash func(n int, k fsm.ActionKind, after bool) bool

// sync is one sync of the executor: Step on the Node, then carry out the
// actions until the machine waits, or until dies says the agent dies.
// It returns the last action Step returned and whether the agent died.
func (a *agent) sync(dies crash) (fsm.Action, bool) {
	a.t.Helper()
	node := a.w.node
	act := a.step(fsm.Input{Now: a.now, Node: &node})
	for n := 0; act.Kind != fsm.Wait && act.Kind != fsm.Resync; n++ {
		if dies != nil && dies(n, act.Kind, false) {
			return act, true
		}
		if len(a.actions) > 500 {
			a.t.Fatalf("no end to the actions: %v", a.actions[len(a.actions)-20:])
		}
		a.actions = append(a.actions, act.Kind)
		res := a.w.do(act)
		if dies != nil && dies(n, act.Kind, true) {
			return act, true
		}
		act = a.step(fsm.Input{Now: a.now, Result: &res})
	}
	return act, false
}

// once is one sync to its end.
func (a *agent) once() fsm.Action {
	a.t.Helper()
	act, _ := a.sync(nil)
	return act
}

// dieAfter ends a sync right after the first action of kind k.
func dieAfter(k fsm.ActionKind) crash {
	return func(_ int, kind fsm.ActionKind, after bool) bool { return after && kind == k }
}

// settle syncs until the machine waits without asking to look again.
func (a *agent) settle() fsm.Action {
	a.t.Helper()
	for range 10 {
		if act := a.once(); act.Kind != fsm.Resync {
			return act
		}
	}
	a.t.Fatal("the machine keeps asking to look again")
	return fsm.Action{}
}

// since returns the actions carried out from index i on.
func (a *agent) since(i int) []fsm.ActionKind { return slices.Clone(a.actions[i:]) }

// noted returns the notes of a kind.
func (a *agent) noted(k fsm.NoteKind) []fsm.Note {
	var out []fsm.Note
	for _, n := range a.notes {
		if n.Kind == k {
			out = append(out, n)
		}
	}
	return out
}

// transitions are the journal changes the tests caused (TestMain checks
// them against allTransitions).
var transitions = map[string]bool{}

func phaseName(p fsm.Phase) string {
	if p == fsm.PhaseNone {
		return "none"
	}
	return string(p)
}

// recordTransitions notes what changed from journal a to b in boot bootID.
func recordTransitions(a, b fsm.Journal, bootID string) {
	if a.Phase != b.Phase {
		transitions["phase "+phaseName(a.Phase)+" -> "+phaseName(b.Phase)] = true
	}
	switch {
	case a.Refused == nil && b.Refused != nil:
		transitions["refused: recorded"] = true
	case a.Refused != nil && b.Refused == nil:
		transitions["refused: cleared"] = true
	}
	for _, d := range b.Pending {
		if !slices.Contains(a.Pending, d) {
			transitions["pending: add "+d.String()] = true
		}
	}
	for _, d := range a.Pending {
		if slices.Contains(b.Pending, d) {
			continue
		}
		switch {
		case a.BootID != "" && a.BootID != bootID:
			transitions["pending: cleared by a reboot"] = true
		case b.Phase == fsm.PhaseDone:
			transitions["pending: cleared at done"] = true
		default:
			transitions["pending: drop "+d.String()] = true
		}
	}
	if a.Applied != b.Applied {
		transitions["applied"] = true
	}
	if a.Config != b.Config || a.OS != b.OS || !slices.Equal(a.KernelArgs, b.KernelArgs) {
		transitions["change: new"] = true
	}
	for _, f := range []struct {
		name string
		a, b bool
	}{{"pulled", a.Pulled, b.Pulled}, {"deployed", a.Deployed, b.Deployed}, {"prestaged", a.Prestaged, b.Prestaged}, {"sameCommit", a.SameCommit, b.SameCommit}} {
		if !f.a && f.b {
			transitions[f.name+": set"] = true
		}
	}
	switch {
	case a.OSPulled == "" && b.OSPulled != "":
		transitions["osPulled: set"] = true
	case a.OSPulled != "" && b.OSPulled == "":
		transitions["osPulled: cleared"] = true
	}
	switch {
	case a.PrePulled == "" && b.PrePulled != "":
		transitions["prePulled: set"] = true
	case a.PrePulled != "" && b.PrePulled == "":
		transitions["prePulled: taken on"] = true
	}
	if a.BootID != b.BootID {
		transitions["bootID: this boot"] = true
	}
}

// sortedTransitions lists what recordTransitions saw.
func sortedTransitions() []string { return slices.Sorted(maps.Keys(transitions)) }
