package planner

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"time"

	"herd.dev/herd/schema"
)

// cluster models one pool's nodes, their agents and the controller around
// the planner. Its controller step is sync/controller's: observe, one
// Compute call, carry the actions out as sync/cluster does, keep
// PoolPlan.Next. The scenario tests (testdata/*.txt) script it; the model
// test drives it at random.
type cluster struct {
	now     time.Time
	nodes   []*mnode
	targets []Pool // the pool's targets over time; the last is current
	names   map[string]string
	earlier map[string]*schema.Rendered
	state   Rollout // what the HerdPool status keeps
	resume  string  // the herd.dev/resume annotation
	freeze  bool
	attempt int // resumes and new targets start a new attempt

	// drainTime is how long a drain takes; agent how long an apply or a
	// reboot takes. Random when r is set (the model test).
	drainTime, applyTime, rebootTime time.Duration
	r                                *rand.Rand

	log []string // what happened, for scenario output

	rm         *repairModel // faults, conditions and repairs (repair_test.go)
	repairKept RepairState  // what the HerdPool status keeps of repairs
}

// mnode is a node: what the planner sees, and what its agent does.
type mnode struct {
	Node
	step       string    // the agent's step: "", "apply", "reboot"
	until      time.Time // when the step ends
	applying   Target    // what the agent is applying
	failOn     map[string]bool
	drainUntil time.Time // when the drain started now ends
	notReady   time.Time // NotReady on its own until then
	pullingOS  string
	pulled     time.Time
	dispatchAt int  // the attempt its target was dispatched in
	stuck      bool // its agent hangs in its apply
	barePod    bool // runs a pod without a controller: the drain policy refuses its drain
}

func newCluster(start time.Time) *cluster {
	return &cluster{now: start, names: map[string]string{}, earlier: map[string]*schema.Rendered{}}
}

// name returns a hash's or commit's short name in scenario output.
func (c *cluster) name(h string) string {
	if h == "" {
		return "-"
	}
	if n, ok := c.names[h]; ok {
		return n
	}
	return schema.Short(h)
}

func (c *cluster) pool() Pool { return c.targets[len(c.targets)-1] }

// push makes p the pool's target, as a commit to the fleet repo does.
func (c *cluster) push(p Pool) {
	c.targets = append(c.targets, p)
	c.earlier[p.Hash] = p.Rendered
	c.attempt++
}

// addNode adds a node at the current target, Ready and Idle, or joining.
func (c *cluster) addNode(name, zone string, joining bool) *mnode {
	p := c.pool()
	n := &mnode{Node: Node{Name: name, Labels: map[string]string{"herd.dev/pool": "p"}, Ready: true, State: schema.StateIdle}, failOn: map[string]bool{}}
	if zone != "" {
		n.Labels[schema.LabelZone] = zone
	}
	if joining {
		n.Converging = true
	} else {
		n.DesiredConfig, n.DesiredOS = p.Hash, p.Spec.OS.Commit
		n.CurrentConfig, n.OSBooted = p.Hash, p.Spec.OS.Commit
	}
	c.nodes = append(c.nodes, n)
	return n
}

func (c *cluster) node(name string) *mnode {
	for _, n := range c.nodes {
		if n.Name == name {
			return n
		}
	}
	return nil
}

// input is the planner's input as the controller observes it.
func (c *cluster) input() Input {
	in := Input{Pools: []Pool{c.pool()}, Now: c.now, Earlier: c.earlier, Freeze: c.freeze,
		Rollouts: map[string]Rollout{"p": c.state}, Resume: map[string]string{"p": c.resume},
		Repairs: map[string]RepairState{"p": c.repairKept}}
	for _, n := range c.nodes {
		in.Nodes = append(in.Nodes, n.Node)
	}
	return in
}

// plan is the controller's decision now.
func (c *cluster) plan() PoolPlan { return Compute(c.input()).Pools[0] }

// controller runs one reconcile: decide, keep the rollout state, act. With
// keep, it crashes after the actions keep selects: nodes are acted on side
// by side, so any subset of the nodes, and of each node's actions, which
// run in order, those before the first it does not keep.
func (c *cluster) controller(keep func(Action) bool) PoolPlan {
	pp := c.plan()
	// The rollout and repair state is kept before the actions are carried
	// out, as raft persists before it sends: what they rest on is never
	// lost, and a rung is counted before it starts.
	c.state, c.repairKept = pp.Next, pp.NextRepairs
	for _, e := range pp.Events {
		if e.Kind == EventResumed {
			c.attempt++ // forgiven nodes are tried again: a new attempt
		}
	}
	stopped := map[string]bool{}
	for _, a := range pp.Actions {
		if stopped[a.Node] || keep != nil && !keep(a) {
			stopped[a.Node] = true
			continue
		}
		c.act(a)
	}
	return pp
}

// act carries one action out as sync/controller and sync/cluster do: each
// looks at the node first and does only what is missing.
func (c *cluster) act(a Action) {
	n := c.node(a.Node)
	if a.Repair != nil {
		c.actRepair(n, a)
		return
	}
	switch a.Kind {
	case ActStart:
		if a.Drain {
			c.cordon(n)
			if n.barePod {
				// The drain policy keeps the pod: nothing is evicted.
				if !n.DrainBlocked {
					n.DrainBlocked = true
					c.logf("%s drain refused", a.Node)
				}
				return
			}
			n.DrainBlocked = false
			if n.DrainStarted.IsZero() {
				n.DrainStarted = c.now
				n.drainUntil = c.now.Add(c.duration(c.drainTime, 3))
				c.logf("%s drain %s", a.Node, c.name(a.Target.Hash))
			}
			if c.now.Before(n.drainUntil) {
				return // still draining
			}
		}
		if a.Cordon {
			c.cordon(n)
		}
		c.dispatch(n, a.Target)
	case ActJoin, ActRetarget:
		c.dispatch(n, a.Target)
	case ActSoak:
		n.AtTarget = c.now
	case ActFinish:
		if n.Cordoned {
			n.Unschedulable = false
		}
		n.Cordoned, n.DrainStarted, n.DrainBlocked = false, time.Time{}, false
		c.logf("%s uncordon", a.Node)
	case ActFail:
		n.Failures++
		n.FailedTarget = a.Target.Hash
		c.logf("%s failed %s: %s", a.Node, c.name(a.Target.Hash), a.Why.Message())
	case ActQuarantine:
		c.cordon(n)
		n.Quarantined = a.Why.Message()
		c.logf("%s quarantined: %s", a.Node, a.Why.Message())
	case ActPrestage:
		n.PrestageOS = a.Target.OSCommit
	case ActReset:
		n.DesiredConfig, n.DesiredOS, n.FailedTarget, n.AtTarget = "", "", "", time.Time{}
		uncordon := ""
		if n.Cordoned {
			n.Unschedulable, uncordon = false, ", uncordon"
		}
		n.Cordoned, n.DrainStarted, n.DrainBlocked = false, time.Time{}, false
		c.logf("%s reset%s", a.Node, uncordon)
	}
}

func (c *cluster) cordon(n *mnode) {
	if !n.Unschedulable {
		n.Unschedulable, n.Cordoned = true, true
		c.logf("%s cordon", n.Name)
	}
}

func (c *cluster) dispatch(n *mnode, t Target) {
	if n.DesiredConfig == t.Hash && n.DesiredOS == t.OSCommit {
		return
	}
	n.DesiredConfig, n.DesiredOS, n.Dispatched = t.Hash, t.OSCommit, c.now
	n.AtTarget, n.FailedTarget = time.Time{}, "" // a new attempt
	n.DrainBlocked = false
	n.dispatchAt = c.attempt
	c.logf("%s dispatch %s", n.Name, c.name(t.Hash))
}

// duration is d, or in the model test a random multiple of 5 minutes up to
// max.
func (c *cluster) duration(d time.Duration, max int) time.Duration {
	if c.r != nil {
		return time.Duration(c.r.IntN(max+1)) * 5 * time.Minute
	}
	return d
}

// agents move each node's agent one step, as the real one does: apply,
// reboot (NotReady), come back at the target, or fall back to the old OS
// (Degraded) when the target fails to boot on it. It returns the nodes
// that rebooted.
func (c *cluster) agents() (rebooted []*mnode) {
	for _, n := range c.nodes {
		n.Ready = !c.now.Before(n.notReady) && n.step != "reboot"
		if n.pullingOS != "" && !c.now.Before(n.pulled) {
			n.OSPulled, n.pullingOS = n.pullingOS, ""
		}
		if n.PrestageOS != "" && n.PrestageOS != n.OSPulled && n.pullingOS == "" && n.step == "" {
			n.pullingOS, n.pulled = n.PrestageOS, c.now.Add(5*time.Minute)
		}
		switch n.step {
		case "":
			want := Target{n.DesiredConfig, n.DesiredOS}
			switch {
			case want.Hash == "":
				n.State = schema.StateIdle // told nothing: stands down
			case n.State == schema.StateDegraded && n.applying == want:
				// refused until told otherwise
			case want.Hash == n.CurrentConfig && want.OSCommit == n.OSBooted:
				n.State = schema.StateIdle
				n.Converging = false // the agent removes the taint at its target
			default:
				n.step, n.applying, n.State = "apply", want, schema.StateWorking
				n.until = c.now.Add(c.duration(c.applyTime, 2) + 5*time.Minute)
			}
		case "apply":
			if c.now.Before(n.until) || n.stuck {
				continue
			}
			if n.applying.OSCommit == n.OSBooted {
				n.CurrentConfig, n.State, n.step = n.applying.Hash, schema.StateIdle, ""
				c.logf("%s applied %s", n.Name, c.name(n.applying.Hash))
				continue
			}
			n.step, n.State, n.Ready = "reboot", schema.StateRebooting, false
			n.until = c.now.Add(c.duration(c.rebootTime, 3) + 5*time.Minute)
			rebooted = append(rebooted, n)
			c.logf("%s reboot into %s", n.Name, c.name(n.applying.OSCommit))
		case "reboot":
			if c.now.Before(n.until) {
				continue
			}
			n.step = ""
			n.Ready = !c.now.Before(n.notReady)
			if n.failOn[n.applying.Hash] {
				// A/B: the old deployment booted. Like the real agent, it
				// reports the new config (its files were written) on the
				// old OS, Degraded.
				n.CurrentConfig, n.State, n.Message = n.applying.Hash, schema.StateDegraded, "boot fell back"
				c.logf("%s boot of %s fell back", n.Name, c.name(n.applying.OSCommit))
				continue
			}
			n.OSBooted, n.CurrentConfig, n.State = n.applying.OSCommit, n.applying.Hash, schema.StateIdle
			c.logf("%s booted %s", n.Name, c.name(n.applying.OSCommit))
		}
	}
	c.repairAgents()
	return rebooted
}

// quiet reports whether no agent is in a step.
func (c *cluster) quiet() bool {
	for _, n := range c.nodes {
		if n.step != "" {
			return false
		}
	}
	return true
}

func (c *cluster) logf(format string, args ...any) {
	c.log = append(c.log, fmt.Sprintf(format, args...))
}

// describeActions lists a plan's actions, one a line.
func (c *cluster) describeActions(pp PoolPlan) string {
	var b strings.Builder
	for _, a := range pp.Actions {
		fmt.Fprintf(&b, "%s %s", a.Kind, a.Node)
		if a.Target.Hash != "" {
			fmt.Fprintf(&b, " %s", c.name(a.Target.Hash))
		}
		if a.Kind == ActStart {
			fmt.Fprintf(&b, " %s", a.Disruption)
			for _, f := range []struct {
				on   bool
				name string
			}{{a.Cordon, "cordon"}, {a.Drain, "drain"}, {a.New, "new"}} {
				if f.on {
					b.WriteString(" " + f.name)
				}
			}
		}
		if rs := a.Repair; rs != nil && rs.State != nil {
			fmt.Fprintf(&b, " %s", rs.State.Action)
		}
		if a.Repair != nil && a.Repair.DryRun {
			b.WriteString(" dry-run")
		}
		if a.Why != nil {
			fmt.Fprintf(&b, " (%s)", a.Why.Message())
		}
		b.WriteString("\n")
	}
	return b.String()
}

// describePool sums a plan up: phase, batches, waiting nodes, events.
func (c *cluster) describePool(pp PoolPlan) string {
	var b strings.Builder
	fmt.Fprintf(&b, "phase %s", pp.Phase)
	if pp.Canary {
		b.WriteString(", canary")
	}
	for _, why := range []*Reason{pp.Halt, pp.Closed, pp.Blocked} {
		if why != nil {
			fmt.Fprintf(&b, "; %s", why.Message())
		}
	}
	b.WriteString("\n")
	for i, batch := range pp.Batches {
		fmt.Fprintf(&b, "batch %d: %s\n", i+1, strings.Join(batch, " "))
	}
	for _, ch := range pp.Changes {
		if ch.Batch == 0 {
			fmt.Fprintf(&b, "waiting: %s (%s)\n", ch.Node, ch.Wait.Message())
		}
	}
	if len(pp.Soaking) > 0 {
		fmt.Fprintf(&b, "soaking: %s\n", strings.Join(pp.Soaking, " "))
	}
	for _, e := range pp.Events {
		fmt.Fprintf(&b, "event %s", e.Kind)
		if len(e.Nodes) > 0 {
			fmt.Fprintf(&b, " %s", strings.Join(e.Nodes, " "))
		}
		if e.Why != nil {
			fmt.Fprintf(&b, ": %s", e.Why.Message())
		}
		b.WriteString("\n")
	}
	return b.String()
}

// describeChanges lists every out-of-date node's change.
func (c *cluster) describeChanges(pp PoolPlan) string {
	var b strings.Builder
	for _, ch := range pp.Changes {
		var fields []string
		for _, f := range ch.Fields {
			fields = append(fields, fmt.Sprintf("%s %s -> %s", f.Path, c.name(f.From), c.name(f.To)))
		}
		fmt.Fprintf(&b, "%s batch %d %s", ch.Node, ch.Batch, ch.Disruption)
		if ch.Rollback {
			b.WriteString(" rollback")
		}
		if len(fields) > 0 {
			fmt.Fprintf(&b, ": %s", strings.Join(fields, ", "))
		}
		if m := ch.Message(); m != "" {
			fmt.Fprintf(&b, " (%s)", m)
		}
		b.WriteString("\n")
	}
	return b.String()
}

// describeNodes shows each node's state as the cluster holds it.
func (c *cluster) describeNodes() string {
	var b strings.Builder
	for _, n := range c.nodes {
		var flags []string
		if !n.Ready {
			flags = append(flags, "NotReady")
		}
		if n.Unschedulable {
			flags = append(flags, "cordoned")
		}
		if n.Quarantined != "" {
			flags = append(flags, "quarantined")
		}
		if n.Converging {
			flags = append(flags, "converging")
		}
		if n.FailedTarget != "" {
			flags = append(flags, "failed="+c.name(n.FailedTarget))
		}
		if n.DrainBlocked {
			flags = append(flags, "drain-blocked")
		}
		fmt.Fprintf(&b, "%s %s desired=%s current=%s os=%s %s\n", n.Name, n.State, c.name(n.DesiredConfig), c.name(n.CurrentConfig), c.name(n.OSBooted), strings.Join(flags, " "))
	}
	return strings.ReplaceAll(b.String(), " \n", "\n")
}

// sortedNames lists the nodes by name.
func (c *cluster) sortedNames() []string {
	var out []string
	for _, n := range c.nodes {
		out = append(out, n.Name)
	}
	slices.Sort(out)
	return out
}
