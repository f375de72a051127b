package planner

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"herd.dev/herd/schema"
)

// The cluster model's side of repairs: faults that make nodes sick, the
// conditions their agents publish (or stop publishing), and the agents
// carrying out the rungs asked for. Scenario commands:
//
//	fault NODE KIND [cure=ACTION] [fail=ACTION]
//	                                a fault: kubelet, pleg, runtime, sandboxes, notready,
//	                                memory; cured by ACTION (or a reboot); the agent
//	                                fails to carry fail's ACTION out
//	cure NODE                       the fault goes away by itself
//	agent NODE up|down              the agent publishes its conditions, or stops (they go stale)
//	tick DURATION [rounds=N]        N rounds of DURATION: agents, then a reconcile
//	repairs                         the plan's repairs
//	history NODE                    the node's repairs so far
//
// and push settings (any of them turns the default remediation on):
// remediation=on|off, dryRun=true, maxUnhealthy=, maxPerHour=,
// quarantineAfter=, quarantineWindow=, deleteNode=true, and
// ladder.PROBLEM=DURATION:ACTION/TIMEOUT,ACTION/TIMEOUT,...

// repairModel is the cluster model's repair state.
type repairModel struct {
	faults    map[string]*fault    // by node
	agentDown map[string]bool      // agents that publish nothing
	readyAt   map[string]time.Time // when each node's Ready last changed
	wasReady  map[string]bool      // Ready as last seen
	heartbeat map[string]time.Time // the agent's last publish
	since     map[string]time.Time // when each Herd condition last changed status, by node/type
	status    map[string]string    // each Herd condition's status, by node/type
	done      map[string]int       // rungs carried out, by node/id: never more than once
	rebooting map[string]time.Time // repair reboots in progress: until
	replaced  map[string]bool      // nodes marked for replacement
	log       []Action             // repair actions carried out, for the model's checks
}

// fault is what ails a node.
type fault struct {
	kind  string
	since time.Time
	cure  schema.RemediationAction // the gentlest repair that cures it
	fail  schema.RemediationAction // a repair the agent fails to carry out
}

// faultConditions are the conditions each fault sets True, and whether it
// makes the node NotReady.
var faultConditions = map[string]struct {
	cond     schema.NodeConditionType
	reason   schema.HealthReason
	notReady bool
	cure     schema.RemediationAction
}{
	"kubelet":   {schema.ConditionKubeletUnhealthy, schema.ReasonKubeletHealthzFailed, true, schema.RepairRestartKubelet},
	"pleg":      {schema.ConditionPLEGUnhealthy, schema.ReasonPLEGNotHealthy, true, schema.RepairRestartContainerd},
	"runtime":   {schema.ConditionRuntimeUnhealthy, schema.ReasonRuntimeUnreachable, true, schema.RepairRestartContainerd},
	"sandboxes": {schema.ConditionLeftoverSandboxes, schema.ReasonLeftoverSandboxes, false, schema.RepairCleanSandboxes},
	"notready":  {"", "", true, schema.RepairRestartKubelet},
	"memory":    {schema.ConditionMemoryPressure, schema.ReasonMemoryStalled, false, schema.RepairReboot},
}

func (c *cluster) repairs() *repairModel {
	if c.rm == nil {
		c.rm = &repairModel{faults: map[string]*fault{}, agentDown: map[string]bool{}, readyAt: map[string]time.Time{},
			wasReady: map[string]bool{}, heartbeat: map[string]time.Time{}, since: map[string]time.Time{}, status: map[string]string{},
			done: map[string]int{}, rebooting: map[string]time.Time{}, replaced: map[string]bool{}}
	}
	return c.rm
}

// cures reports whether repair a cures f: its own cure, a reboot (unless
// it needs replacing) or a replacement.
func (f *fault) curedBy(a schema.RemediationAction) bool {
	switch {
	case a == f.cure:
		return true
	case a == schema.RepairReboot:
		return f.cure != schema.RepairReplace
	}
	return false
}

// repairAgents runs the repair side of every agent for one round: repair
// reboots end, the rungs asked for are carried out once, and the
// conditions are published. It runs after the rollout's agents.
func (c *cluster) repairAgents() {
	rm := c.repairs()
	for _, n := range c.nodes {
		if until, ok := rm.rebooting[n.Name]; ok && !c.now.Before(until) {
			delete(rm.rebooting, n.Name)
			c.logf("%s back from its repair reboot", n.Name)
		}
		c.carryOut(n)
		if _, ok := rm.rebooting[n.Name]; ok {
			n.Ready = false
		}
		if f := rm.faults[n.Name]; f != nil && faultConditions[f.kind].notReady {
			n.Ready = false
		}
		c.publish(n)
	}
}

// carryOut does what the node's request asks, once, as the real agent
// does: after a crash of the controller the request is the same, and the
// journal says it is done.
func (c *cluster) carryOut(n *mnode) {
	rm := c.repairs()
	st := n.Remediation
	if st == nil || st.Requested.IsZero() || rm.agentDown[n.Name] {
		return
	}
	req := st.Request()
	key := n.Name + "/" + req.ID
	if rm.done[key] > 0 {
		return
	}
	rm.done[key]++
	f := rm.faults[n.Name]
	switch {
	case f != nil && f.fail == req.Action:
		c.logf("%s %s failed", n.Name, req.Action)
		n.Remediated = &schema.RemediationReport{Request: req, Result: schema.ResultFailed, Message: "the unit would not restart"}
		return
	case req.Action == schema.RepairReboot:
		rm.rebooting[n.Name] = c.now.Add(c.duration(c.rebootTime, 2))
		if f != nil && f.curedBy(req.Action) {
			delete(rm.faults, n.Name)
		}
		c.logf("%s repair reboot", n.Name)
	case req.Action == schema.RepairReplace:
		c.logf("%s evidence captured", n.Name)
	default:
		c.logf("%s %s", n.Name, req.Action)
		if f != nil && f.curedBy(req.Action) {
			delete(rm.faults, n.Name)
		}
	}
	n.Remediated = &schema.RemediationReport{Request: req, Result: schema.ResultSucceeded}
}

// publish sets the node's conditions as its agent and kubelet would.
func (c *cluster) publish(n *mnode) {
	rm := c.repairs()
	if was, seen := rm.wasReady[n.Name]; !seen || was != n.Ready {
		rm.wasReady[n.Name], rm.readyAt[n.Name] = n.Ready, c.now
	}
	ready := Condition{Type: "Ready", Status: ConditionTrue, Since: rm.readyAt[n.Name], Heartbeat: c.now}
	if !n.Ready {
		ready.Status, ready.Reason = ConditionFalse, "KubeletNotReady"
	}
	conds := []Condition{ready}
	_, rebooting := rm.rebooting[n.Name]
	down := rm.agentDown[n.Name] || rebooting // an agent rebooting publishes nothing
	if !down {
		rm.heartbeat[n.Name] = c.now
	}
	hb := rm.heartbeat[n.Name]
	f := rm.faults[n.Name]
	for _, t := range schema.NodeConditionTypes {
		status, why := ConditionFalse, schema.HealthReason("OK")
		if f != nil && faultConditions[f.kind].cond == t {
			status, why = ConditionTrue, faultConditions[f.kind].reason
		}
		k := n.Name + "/" + string(t)
		if !down && rm.status[k] != status {
			rm.status[k], rm.since[k] = status, c.now
		}
		if rm.status[k] == "" {
			continue // never published
		}
		conds = append(conds, Condition{Type: string(t), Status: rm.status[k], Reason: why, Since: rm.since[k], Heartbeat: hb})
	}
	n.Conditions = conds
}

// actRepair carries a repair action out as sync/controller does.
func (c *cluster) actRepair(n *mnode, a Action) {
	rm := c.repairs()
	rs := a.Repair
	if rs.DryRun {
		c.logf("%s dry run: %s", n.Name, describeRepair(a))
		return
	}
	switch a.Kind {
	case ActRemediate:
		st := *rs.State
		if n.Remediation == nil || n.Remediation.ID != st.ID {
			if rs.Ended != nil {
				n.Remediations = schema.AppendRecord(n.Remediations, *rs.Ended)
			}
			n.Remediation = &st
			c.logf("%s repair: %s", n.Name, describeRepair(a))
		}
		if a.Cordon {
			c.cordon(n)
		}
		if a.Drain {
			if n.barePod {
				// The drain policy keeps the pod: nothing is evicted.
				if !n.DrainBlocked {
					n.DrainBlocked = true
					c.logf("%s drain refused", n.Name)
				}
				return
			}
			n.DrainBlocked = false
			if n.DrainStarted.IsZero() {
				n.DrainStarted = c.now
				n.drainUntil = c.now.Add(c.duration(c.drainTime, 3))
				c.logf("%s drain for %s", n.Name, st.Action)
			}
			if c.now.Before(n.drainUntil) {
				return
			}
		}
		if n.Remediation.Requested.IsZero() {
			n.Remediation.Requested = c.now
		}
	case ActReplace:
		st := *rs.State
		n.Remediation = &st
		rm.replaced[n.Name] = true
		c.logf("%s marked for replacement", n.Name)
	case ActRemediated:
		n.Remediations = schema.AppendRecord(n.Remediations, *rs.Ended)
		if rs.Quarantine {
			c.cordon(n)
			n.Quarantined = a.Why.Message()
			c.logf("%s quarantined: %s", n.Name, a.Why.Message())
		} else if rs.State.Cordoned && n.Cordoned {
			n.Unschedulable, n.Cordoned = false, false
			c.logf("%s uncordon", n.Name)
		}
		if !rs.Quarantine {
			n.DrainStarted = time.Time{}
		}
		n.DrainBlocked = false // the rung's drain ends with it
		n.Remediation = nil
		c.logf("%s repair over: %s", n.Name, a.Why.Message())
	}
	rm.log = append(rm.log, a)
}

// describeRepair says what a repair action does, for scenario output.
func describeRepair(a Action) string {
	rs := a.Repair
	switch {
	case a.Kind == ActQuarantine:
		return "quarantine (" + a.Why.Message() + ")"
	case rs == nil || rs.State == nil:
		return string(a.Kind)
	case a.Kind == ActRemediate:
		return fmt.Sprintf("%s %s, rung %d (%s)", rs.State.Problem, rs.State.Action, rs.State.Rung+1, a.Why.Message())
	case a.Kind == ActReplace:
		return "replace"
	}
	return "over (" + a.Why.Message() + ")"
}

// repairSetting applies a push setting of remediation to spec.
func repairSetting(spec *schema.NodePool, k, v string) (bool, error) {
	if spec.Remediation != nil { // the previous target's: copy it
		r := *spec.Remediation
		r.Problems = maps.Clone(r.Problems)
		spec.Remediation = &r
	}
	known := k == "remediation" || strings.HasPrefix(k, "ladder.") || slices.Contains([]string{"dryRun", "maxUnhealthy", "maxPerHour", "quarantineAfter", "quarantineWindow", "deleteNode"}, k)
	if !known {
		return false, nil
	}
	if spec.Remediation == nil {
		spec.Remediation = defaultRemediation() // any setting turns it on
	}
	r := spec.Remediation
	var err error
	switch {
	case k == "remediation":
		if v != "on" {
			spec.Remediation = nil
		}
	case k == "dryRun":
		r.DryRun = v == "true"
	case k == "maxUnhealthy":
		err = r.MaxUnhealthy.UnmarshalJSON([]byte(strconv.Quote(v)))
		if n, e := strconv.Atoi(v); e == nil {
			r.MaxUnhealthy, err = schema.IntOrPercent{Int: n}, nil
		}
	case k == "maxPerHour":
		r.MaxPerHour, err = strconv.Atoi(v)
	case k == "quarantineAfter":
		r.Quarantine.After, err = strconv.Atoi(v)
	case k == "quarantineWindow":
		r.Quarantine.Window = v
	case k == "deleteNode":
		r.Replace.DeleteNode = v == "true"
	case strings.HasPrefix(k, "ladder."):
		var l schema.Ladder
		l, err = parseLadder(v)
		r.Problems[schema.Problem(strings.TrimPrefix(k, "ladder."))] = l
	default:
		return false, nil
	}
	return true, err
}

// parseLadder reads "3m:restart-kubelet/2m,reboot/10m,replace".
func parseLadder(s string) (schema.Ladder, error) {
	d, rungs, ok := strings.Cut(s, ":")
	if !ok {
		return schema.Ladder{}, fmt.Errorf("ladder %q: want DURATION:ACTION/TIMEOUT,...", s)
	}
	l := schema.Ladder{Duration: d, Rungs: []schema.Rung{}}
	for r := range strings.SplitSeq(rungs, ",") {
		if r == "" {
			continue
		}
		a, t, _ := strings.Cut(r, "/")
		if !schema.RemediationAction(a).Valid() {
			return l, fmt.Errorf("ladder %q: unknown action %q", s, a)
		}
		l.Rungs = append(l.Rungs, schema.Rung{Action: schema.RemediationAction(a), Timeout: cmpOr(t, "5m")})
	}
	return l, nil
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// defaultRemediation is #Remediation with its defaults, as nodepool.cue
// declares them (schema/loader's tests evaluate the CUE).
func defaultRemediation() *schema.Remediation {
	ladder := func(d string, rungs ...string) schema.Ladder {
		l, err := parseLadder(d + ":" + strings.Join(rungs, ","))
		if err != nil {
			panic(err)
		}
		return l
	}
	return &schema.Remediation{
		MaxUnhealthy: schema.IntOrPercent{Percent: 40, IsPct: true},
		MaxPerHour:   10,
		Quarantine:   schema.RemediationQuarantine{After: 3, Window: "24h"},
		Problems: map[schema.Problem]schema.Ladder{
			schema.ProblemNotReady:                            ladder("5m", "restart-kubelet/3m", "reboot/15m", "replace"),
			schema.Problem(schema.ConditionKubeletUnhealthy):  ladder("3m", "restart-kubelet/3m", "reboot/15m", "replace"),
			schema.Problem(schema.ConditionPLEGUnhealthy):     ladder("3m", "restart-containerd/3m", "restart-kubelet/3m", "reboot/15m", "replace"),
			schema.Problem(schema.ConditionRuntimeUnhealthy):  ladder("3m", "restart-containerd/3m", "reboot/15m", "replace"),
			schema.Problem(schema.ConditionLeftoverSandboxes): ladder("5m", "clean-sandboxes/5m", "restart-containerd/5m"),
		},
	}
}

// runRepairStep runs the repair commands of a scenario.
func runRepairStep(c *cluster, s step, kv map[string]string, pos []string) (out string, handled bool, err error) {
	rm := c.repairs()
	switch s.cmd {
	case "fault":
		if len(pos) != 2 || c.node(pos[0]) == nil {
			return "", true, fmt.Errorf("want NODE KIND")
		}
		fc, ok := faultConditions[pos[1]]
		if !ok {
			return "", true, fmt.Errorf("unknown fault %q", pos[1])
		}
		cure := fc.cure
		if v := kv["cure"]; v != "" {
			cure = schema.RemediationAction(v)
		}
		rm.faults[pos[0]] = &fault{kind: pos[1], since: c.now, cure: cure, fail: schema.RemediationAction(kv["fail"])}
		c.refresh(c.node(pos[0]))
		return "", true, nil
	case "cure":
		delete(rm.faults, pos[0])
		c.refresh(c.node(pos[0]))
		return "", true, nil
	case "agent":
		rm.agentDown[pos[0]] = pos[1] == "down"
		return "", true, nil
	case "tick":
		d, err := time.ParseDuration(pos[0])
		if err != nil {
			return "", true, err
		}
		rounds := 1
		if r, err := strconv.Atoi(kv["rounds"]); err == nil {
			rounds = r
		}
		return c.tick(d, rounds), true, nil
	case "repairs":
		return describeRepairs(c.plan()), true, nil
	case "history":
		var b strings.Builder
		for _, r := range c.node(pos[0]).Remediations {
			fmt.Fprintf(&b, "%s %s rung %d %s: %s\n", r.Time.Format("15:04"), r.Problem, r.Rung+1, r.Action, r.Outcome)
		}
		if st := c.node(pos[0]).Remediation; st != nil {
			what := "in progress"
			if !st.Marked.IsZero() {
				what = "marked for replacement at " + st.Marked.Format("15:04")
			}
			fmt.Fprintf(&b, "%s %s rung %d %s: %s\n", st.Started.Format("15:04"), st.Problem, st.Rung+1, st.Action, what)
		}
		return b.String(), true, nil
	}
	return "", false, nil
}

// refresh publishes a node's conditions at once, as the agent does on a
// change.
func (c *cluster) refresh(n *mnode) {
	if f := c.repairs().faults[n.Name]; f != nil && faultConditions[f.kind].notReady {
		n.Ready = false
	} else if c.now.After(n.notReady) && n.step != "reboot" && c.repairs().rebooting[n.Name].IsZero() {
		n.Ready = true
	}
	c.publish(n)
}

// tick runs rounds of d: agents, then a reconcile, and prints what
// happened, as run does.
func (c *cluster) tick(d time.Duration, rounds int) string {
	var b strings.Builder
	for range rounds {
		c.now = c.now.Add(d)
		c.log = nil
		c.agents()
		pp := c.controller(nil)
		at := c.now.Format("15:04")
		for _, l := range c.log {
			fmt.Fprintf(&b, "%s %s\n", at, l)
		}
		for _, e := range pp.Events {
			fmt.Fprintf(&b, "%s event %s", at, e.Kind)
			if e.Why != nil {
				fmt.Fprintf(&b, ": %s", e.Why.Message())
			}
			b.WriteString("\n")
		}
	}
	return b.String()
}

// describeRepairs sums a plan's repairs up.
func describeRepairs(pp PoolPlan) string {
	var b strings.Builder
	r := pp.Repairs
	if r.DryRun {
		b.WriteString("dry run\n")
	}
	if r.Stopped != nil {
		fmt.Fprintf(&b, "stopped: %s\n", r.Stopped.Message())
	}
	for _, s := range r.Sick {
		fmt.Fprintf(&b, "sick: %s %s (%s) since %s", s.Node, s.Problem, s.Reason, s.Since.Format("15:04"))
		if s.Wait != nil {
			fmt.Fprintf(&b, ": %s", s.Wait.Message())
		}
		b.WriteString("\n")
	}
	for _, x := range r.Repairing {
		fmt.Fprintf(&b, "repairing: %s %s rung %d %s", x.Node, x.State.Problem, x.State.Rung+1, x.State.Action)
		if x.Wait != nil {
			fmt.Fprintf(&b, ": %s", x.Wait.Message())
		}
		b.WriteString("\n")
	}
	if !pp.Recheck.IsZero() {
		fmt.Fprintf(&b, "next look: %s\n", pp.Recheck.Format("15:04:05"))
	}
	return b.String()
}
