package planner

import (
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"

	"herd.dev/herd/schema"
)

// The model-based test drives the controller's decision logic (Compute, its
// actions, Next) through long random sequences of events against a model of
// the cluster, and checks after every event:
//
//   - starting nodes never takes a pool past maxUnavailable;
//   - no node reboots twice for one target in one attempt;
//   - a halted pool starts nothing;
//   - once the events stop, every healthy node converges.
//
// A seed that ever fails goes into regressionSeeds, which always run.

var regressionSeeds = []uint64{
	113, // a forgiven failure forgiven again: failure marks now clear on every new target
	137, // a node failing again after a resume was retried forever: forgiveness is per failure
	140, // after a revert, nodes at the new target but told an old one stayed cordoned
	143, // a rollback did not count the nodes it had already sent back
}

const modelSteps = 600

// modelSeeds is how many seeds a run tries; HERD_MODEL_SEEDS sets more.
var modelSeeds = func() int {
	if n, err := strconv.Atoi(os.Getenv("HERD_MODEL_SEEDS")); err == nil && n > 0 {
		return n
	}
	return 200
}()

func TestModel(t *testing.T) {
	seeds := slices.Clone(regressionSeeds)
	for s := range uint64(modelSeeds) {
		if !slices.Contains(regressionSeeds, s) {
			seeds = append(seeds, s)
		}
	}
	for _, seed := range seeds {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			t.Parallel()
			newModel(t, seed).run()
		})
	}
}

// mnode is a node in the model: what the planner sees, and what its agent
// is doing.
type mnode struct {
	Node
	step      string    // the agent's step: "", "apply", "reboot"
	until     time.Time // when the step ends
	applying  Target    // what the agent is applying
	failOn    map[string]bool
	rebooted  map[string]int // reboots per target hash and attempt
	attempt   int            // the attempt its target was dispatched in
	notReady  time.Time      // NotReady on its own until then
	pulling   time.Time
	pullingOS string
}

type model struct {
	t       *testing.T
	seed    uint64
	r       *rand.Rand
	now     time.Time
	nodes   []*mnode
	pools   []Pool // the target over time; the last is current
	earlier map[string]*schema.Rendered
	rollout Rollout
	quiet   bool
	resume  bool
	joined  int
	attempt int // resumes and new targets start a new attempt
}

func newModel(t *testing.T, seed uint64) *model {
	r := rand.New(rand.NewPCG(seed, 7))
	m := &model{t: t, seed: seed, r: r, now: time.Date(2026, 11, 2, 0, 0, 0, 0, time.UTC), earlier: map[string]*schema.Rendered{}}
	first := m.newTarget(0)
	m.pools = []Pool{first}
	for i := range 8 + r.IntN(25) {
		m.addNode(fmt.Sprintf("n-%02d", i), false)
	}
	for _, n := range m.nodes { // every node starts at the first target
		n.DesiredConfig, n.DesiredOS = first.Hash, first.Spec.OS.Commit
		n.CurrentConfig, n.OSBooted = first.Hash, first.Spec.OS.Commit
	}
	m.rollout = Rollout{Hash: first.Hash, LastGood: Target{first.Hash, first.Spec.OS.Commit}}
	return m
}

var modelOS = []string{osOld, osNew, "0c0ffee0e1d04f5a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a"}

// newTarget makes the pool's k-th target: an OS commit, a config, and a
// random rollout policy.
func (m *model) newTarget(k int) Pool {
	r := m.r
	p := testPool(m.t, "p", modelOS[r.IntN(len(modelOS))], 100+k, func(s *schema.NodePool) {
		s.Rollout.MaxUnavailable = schema.IntOrPercent{Int: 1 + r.IntN(4)}
		if r.IntN(3) == 0 {
			s.Rollout.MaxUnavailable = schema.IntOrPercent{Percent: 10 + r.IntN(40), IsPct: true}
		}
		s.Rollout.MaxFailures = r.IntN(3)
		s.Rollout.FailurePolicy = []string{schema.FailurePolicyHalt, schema.FailurePolicyRollback}[r.IntN(2)]
		if r.IntN(3) == 0 {
			s.Rollout.Canary = 1 + r.IntN(2)
		}
		s.Rollout.Soak = []string{"", "10m", "30m"}[r.IntN(3)]
		s.Rollout.NodeTimeout = "2h"
		s.Rollout.Prestage = r.IntN(4)
		if r.IntN(3) == 0 {
			s.Rollout.Quarantine = &schema.Quarantine{After: 1 + r.IntN(2)}
		}
	})
	if r.IntN(3) == 0 {
		w, err := schema.Window{Days: []string{"Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"}, Start: "06:00", End: "18:00", TimeZone: "Europe/Berlin"}.Compile()
		if err != nil {
			m.t.Fatal(err)
		}
		p.Windows = schema.Windows{w}
	}
	m.earlier[p.Hash] = p.Rendered
	return p
}

func (m *model) addNode(name string, converging bool) {
	zones := []string{"a", "b", "c"}
	n := &mnode{Node: node(name, "p", zones[len(m.nodes)%3], "", ""), failOn: map[string]bool{}, rebooted: map[string]int{}}
	n.Converging = converging
	m.nodes = append(m.nodes, n)
}

func (m *model) pool() Pool { return m.pools[len(m.pools)-1] }

// tracef logs what happens to the node named in HERD_MODEL_TRACE.
func (m *model) tracef(node, format string, args ...any) {
	if node == os.Getenv("HERD_MODEL_TRACE") {
		m.t.Logf("%s %s: "+format, append([]any{m.now.Format("Mon 15:04"), node}, args...)...)
	}
}

func (m *model) fatalf(format string, args ...any) {
	m.t.Helper()
	m.t.Fatalf("seed %d at %s: "+format+"\n%s", append(append([]any{m.seed, m.now.Format("Mon 15:04")}, args...), m.dump())...)
}

// dump describes every node, for failure messages.
func (m *model) dump() string {
	p := m.pool()
	out := fmt.Sprintf("target %s/%s, rollout %+v\n", short(p.Hash), short(p.Spec.OS.Commit), m.rollout)
	for _, n := range m.nodes {
		out += fmt.Sprintf("  %-8s ready=%-5v unsched=%-5v cordoned=%-5v state=%-9s step=%-6s desired=%s/%s current=%s/%s failed=%s quarantined=%q converging=%v\n",
			n.Name, n.Ready, n.Unschedulable, n.Cordoned, n.State, n.step, short(n.DesiredConfig), short(n.DesiredOS), short(n.CurrentConfig), short(n.OSBooted), short(n.FailedTarget), n.Quarantined, n.Converging)
	}
	return out
}

func (m *model) run() {
	for step := range modelSteps {
		m.now = m.now.Add(5 * time.Minute)
		m.events()
		m.agents()
		m.controller(m.r.IntN(20) == 0) // now and then it crashes half-way
		if step == modelSteps*2/3 {
			m.quiet = true
			m.calm()
		}
	}
	m.converged()
}

// events are what happens to the cluster on its own.
func (m *model) events() {
	if m.quiet {
		return
	}
	r := m.r
	for _, n := range m.nodes {
		if r.IntN(200) == 0 { // goes NotReady for a while, on its own
			n.notReady = m.now.Add(time.Duration(1+r.IntN(6)) * 5 * time.Minute)
		}
	}
	switch r.IntN(100) {
	case 0, 1: // a new commit
		p := m.newTarget(len(m.pools))
		if r.IntN(3) == 0 && len(m.pools) > 1 { // or a revert
			p = m.pools[len(m.pools)-2]
		}
		m.pools = append(m.pools, p)
		m.newAttempt()
	case 2: // the target fails to boot on some nodes
		for _, n := range m.nodes {
			if r.IntN(4) == 0 {
				n.failOn[m.pool().Hash] = true
			}
		}
	case 3: // a node joins
		m.joined++
		m.addNode(fmt.Sprintf("join-%02d", m.joined), true)
	case 4: // someone resumes a halted pool
		m.resume = true
	}
}

// newAttempt starts a new attempt at the target: a node may reboot for it
// once more.
func (m *model) newAttempt() { m.attempt++ }

// calm ends the trouble: no more failures, someone lifts every halt.
func (m *model) calm() {
	for _, n := range m.nodes {
		n.failOn = map[string]bool{}
		n.notReady = time.Time{}
	}
	m.resume = true
}

// agents move each node's agent one step, as the real one does: apply,
// reboot (NotReady), come back at the target, or fall back to the old OS.
func (m *model) agents() {
	for _, n := range m.nodes {
		n.Ready = !m.now.Before(n.notReady) && n.step != "reboot"
		if n.pullingOS != "" && !m.now.Before(n.pulling) {
			n.OSPulled, n.pullingOS = n.pullingOS, ""
		}
		if n.PrestageOS != "" && n.PrestageOS != n.OSPulled && n.pullingOS == "" && n.step == "" {
			n.pullingOS, n.pulling = n.PrestageOS, m.now.Add(5*time.Minute)
		}
		switch n.step {
		case "":
			want := Target{n.DesiredConfig, n.DesiredOS}
			if want.Hash == "" {
				n.State = schema.StateIdle // told nothing: stands down
				continue
			}
			if n.State == schema.StateDegraded && n.applying == want {
				continue // refused until told otherwise
			}
			if want.Hash == n.CurrentConfig && want.OSCommit == n.OSBooted {
				if n.State != schema.StateIdle {
					n.State = schema.StateIdle
				}
				if n.Converging {
					n.Converging = false // the agent removes the taint at target
				}
				continue
			}
			n.step, n.applying, n.State = "apply", want, schema.StateWorking
			n.until = m.now.Add(time.Duration(1+m.r.IntN(3)) * 5 * time.Minute)
		case "apply":
			if m.now.Before(n.until) {
				continue
			}
			if n.applying.OSCommit == n.OSBooted {
				n.CurrentConfig, n.State, n.step = n.applying.Hash, schema.StateIdle, ""
				continue
			}
			key := fmt.Sprintf("%s#%d", n.applying.Hash, n.attempt)
			n.rebooted[key]++
			m.tracef(n.Name, "reboots for %s", short(n.applying.Hash))
			if n.rebooted[key] > 1 {
				m.fatalf("node %s rebooted twice for %s", n.Name, short(n.applying.Hash))
			}
			n.step, n.State, n.Ready = "reboot", schema.StateRebooting, false
			n.until = m.now.Add(time.Duration(1+m.r.IntN(4)) * 5 * time.Minute) // some reboot slowly
		case "reboot":
			if m.now.Before(n.until) {
				continue
			}
			n.step = ""
			n.Ready = !m.now.Before(n.notReady)
			if n.failOn[n.applying.Hash] {
				// A/B: the old deployment booted. Like the real agent, it
				// reports the new config (its files were written) on the
				// old OS, Degraded.
				n.CurrentConfig, n.State, n.Message = n.applying.Hash, schema.StateDegraded, "boot fell back"
				m.tracef(n.Name, "falls back from %s", short(n.applying.Hash))
				continue
			}
			n.OSBooted, n.CurrentConfig, n.State = n.applying.OSCommit, n.applying.Hash, schema.StateIdle
		}
	}
}

// controller plans and carries out the plan, as sync/controller does; with
// crash, it stops after a random number of actions (a restart keeps nothing
// but what is on the nodes and in the rollout state).
func (m *model) controller(crash bool) {
	p := m.pool()
	in := Input{Pools: []Pool{p}, Now: m.now, Earlier: m.earlier, Rollouts: map[string]Rollout{}}
	prev := m.rollout
	prev.Done = m.done(p)
	in.Rollouts["p"] = prev
	for _, n := range m.nodes {
		in.Nodes = append(in.Nodes, n.Node)
	}
	pp := Compute(in).Pools[0]
	budget := pp.MaxUnavailable

	halted := prev.Hash == p.Hash && prev.Halted != ""
	actions := pp.Actions
	if crash {
		actions = actions[:m.r.IntN(len(actions)+1)]
	}
	started := 0
	for _, a := range actions {
		n := m.node(a.Node)
		m.tracef(a.Node, "%s %s %s (halted %q, rolling back %v, crash %v)", a.Kind, short(a.Target.Hash), a.Reason, prev.Halted, prev.RollingBack, crash)
		switch a.Kind {
		case ActStart:
			involved := n.DesiredConfig == a.Target.Hash && n.DesiredOS == a.Target.OSCommit || n.Cordoned || n.State.Busy()
			if !involved && !n.Converging {
				started++
				if halted {
					m.fatalf("halted pool (%s) starts %s", prev.Halted, n.Name)
				}
			}
			if a.Cordon || a.Drain {
				if !n.Unschedulable {
					n.Unschedulable, n.Cordoned = true, true
				}
			}
			if n.DesiredConfig != a.Target.Hash || n.DesiredOS != a.Target.OSCommit {
				n.DesiredConfig, n.DesiredOS, n.Dispatched = a.Target.Hash, a.Target.OSCommit, m.now
				n.AtTarget, n.FailedTarget = time.Time{}, "" // a new attempt
				n.attempt = m.attempt
			}
		case ActSoak:
			n.AtTarget = m.now
		case ActFinish:
			if n.Cordoned {
				n.Unschedulable, n.Cordoned = false, false
			}
		case ActFail:
			n.Failures++
			n.FailedTarget = a.Target.Hash
		case ActQuarantine:
			n.Quarantined = a.Reason
			n.Unschedulable = true
		case ActPrestage:
			n.PrestageOS = a.Target.OSCommit
		case ActReset:
			n.DesiredConfig, n.DesiredOS, n.FailedTarget = "", "", ""
		}
	}
	if started > 0 {
		// Budget: the nodes the pool now misses (unavailable, or told a
		// target and not done) fit in maxUnavailable.
		if out := m.committed(p); out > budget {
			m.fatalf("started %d nodes: %d of the pool out, maxUnavailable %d", started, out, budget)
		}
	}
	if crash {
		return // the rollout state is written after the actions: lost
	}
	resume := m.resume
	m.resume = false
	m.rollout = Next(prev, pp, resume)
	if resume {
		m.newAttempt() // from here on, forgiven nodes are tried again
		m.tracef(os.Getenv("HERD_MODEL_TRACE"), "resume: forgiven %v", m.rollout.Forgiven)
	}
}

// committed counts the pool's nodes out of work: unavailable, or told a
// target they have not reached; quarantined and joining nodes aside.
func (m *model) committed(p Pool) int {
	out := 0
	for _, n := range m.nodes {
		if n.Quarantined != "" || n.Converging {
			continue
		}
		atDesired := n.CurrentConfig == n.DesiredConfig && n.OSBooted == n.DesiredOS
		if unavailableReason(&n.Node) != "" || !atDesired && n.DesiredConfig != "" && n.State != schema.StateDegraded {
			out++
		}
	}
	return out
}

// done counts nodes at the target that were dispatched to it, as the
// controller's doneSince does.
func (m *model) done(p Pool) int {
	d := 0
	for _, n := range m.nodes {
		if n.CurrentConfig == p.Hash && n.OSBooted == p.Spec.OS.Commit && n.DesiredConfig == p.Hash && !n.Dispatched.IsZero() {
			d++
		}
	}
	return d
}

func (m *model) node(name string) *mnode {
	for _, n := range m.nodes {
		if n.Name == name {
			return n
		}
	}
	m.fatalf("no node %s", name)
	return nil
}

// converged runs on with no events until every healthy node is at the
// target, or fails.
func (m *model) converged() {
	p := m.pool()
	for i := range 2000 {
		m.now = m.now.Add(5 * time.Minute)
		m.agents()
		m.controller(false)
		if i%50 == 49 {
			m.resume = true // someone sees a stuck pool and acts: herd resume
		}
		if m.atTarget(p) {
			return
		}
	}
	var behind []string
	for _, n := range m.nodes {
		if n.Quarantined == "" && (n.CurrentConfig != p.Hash || n.OSBooted != p.Spec.OS.Commit) {
			behind = append(behind, fmt.Sprintf("%s(%s desired=%s cur=%s cordon=%v fail=%s)", n.Name, n.State, short(n.DesiredConfig), short(n.CurrentConfig), n.Unschedulable, short(n.FailedTarget)))
		}
	}
	m.fatalf("healthy nodes did not converge on %s: %v; rollout %+v", short(p.Hash), behind, m.rollout)
}

func (m *model) atTarget(p Pool) bool {
	for _, n := range m.nodes {
		if n.Quarantined != "" {
			continue
		}
		if n.CurrentConfig != p.Hash || n.OSBooted != p.Spec.OS.Commit || n.Unschedulable || n.State != schema.StateIdle {
			return false
		}
	}
	return true
}
