package planner

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"herd.dev/herd/schema"
)

// The scenario tests read testdata/*.txt, in the manner of etcd-io/raft's
// datadriven tests: each file is a story of commands (pushes, nodes,
// failures, crashes, the clock) and, after each, the output expected.
//
//	command arg key=value ...
//	----
//	expected output, up to a blank line
//
// go test ./planner -run Scenarios -rewrite writes the output back.

var rewrite = flag.Bool("rewrite", false, "rewrite the expected output of testdata/*.txt")

func TestScenarios(t *testing.T) {
	files, err := filepath.Glob("testdata/*.txt")
	if err != nil || len(files) == 0 {
		t.Fatalf("no scenarios: %v", err)
	}
	for _, file := range files {
		t.Run(strings.TrimSuffix(filepath.Base(file), ".txt"), func(t *testing.T) { runScenario(t, file) })
	}
}

// step is one command of a scenario and its expected output.
type step struct {
	line     int
	cmd      string
	args     []string
	expected string
}

func parseScenario(t *testing.T, file string) (steps []step, comments map[int][]string) {
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(b), "\n")
	comments = map[int][]string{}
	for i := 0; i < len(lines); i++ {
		l := lines[i]
		if strings.TrimSpace(l) == "" || strings.HasPrefix(l, "#") {
			comments[len(steps)] = append(comments[len(steps)], l)
			continue
		}
		f := strings.Fields(l)
		s := step{line: i + 1, cmd: f[0], args: f[1:]}
		if i+1 >= len(lines) || lines[i+1] != "----" {
			t.Fatalf("%s:%d: %q is not followed by ----", file, i+1, l)
		}
		i += 2
		var out []string
		for ; i < len(lines) && lines[i] != ""; i++ {
			out = append(out, lines[i])
		}
		if len(out) > 0 {
			s.expected = strings.Join(out, "\n") + "\n"
		}
		steps = append(steps, s)
	}
	return steps, comments
}

func runScenario(t *testing.T, file string) {
	steps, comments := parseScenario(t, file)
	c := newCluster(time.Date(2026, 11, 2, 8, 0, 0, 0, time.UTC)) // a Monday
	c.applyTime, c.rebootTime = 5*time.Minute, 5*time.Minute
	var rewritten strings.Builder
	for i, s := range steps {
		for _, l := range comments[i] {
			rewritten.WriteString(l + "\n")
		}
		got := runStep(t, c, file, s)
		fmt.Fprintf(&rewritten, "%s\n----\n%s\n", strings.Join(append([]string{s.cmd}, s.args...), " "), got)
		if !*rewrite && got != s.expected {
			t.Errorf("%s:%d: %s %s (-want +got):\n%s", file, s.line, s.cmd, strings.Join(s.args, " "), cmp.Diff(s.expected, got))
		}
	}
	for _, l := range comments[len(steps)] {
		rewritten.WriteString(l + "\n")
	}
	if *rewrite {
		out := strings.TrimRight(rewritten.String(), "\n") + "\n"
		if err := os.WriteFile(file, []byte(out), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// runStep carries one command out and returns its output.
func runStep(t *testing.T, c *cluster, file string, s step) string {
	fail := func(format string, args ...any) string {
		t.Fatalf("%s:%d: %s: "+format, append([]any{file, s.line, s.cmd}, args...)...)
		return ""
	}
	kv := map[string]string{}
	var pos []string
	for _, a := range s.args {
		if k, v, ok := strings.Cut(a, "="); ok {
			kv[k] = v
		} else {
			pos = append(pos, a)
		}
	}
	c.log = nil
	switch s.cmd {
	case "push":
		if len(pos) != 1 {
			return fail("want a name")
		}
		p, err := scenarioPool(c, pos[0], kv)
		if err != nil {
			return fail("%v", err)
		}
		c.push(p)
		return ""
	case "nodes":
		n, _ := strconv.Atoi(pos[0])
		zones := strings.Split(kv["zones"], ",")
		for i := range n {
			c.addNode(fmt.Sprintf("n-%02d", len(c.nodes)), zones[i%len(zones)], false)
		}
		return ""
	case "join":
		c.addNode(pos[0], kv["zone"], true)
		return ""
	case "plan":
		pp := c.plan()
		return c.describePool(pp) + c.describeActions(pp)
	case "changes":
		return c.describeChanges(c.plan())
	case "state":
		return c.describeNodes()
	case "reconcile":
		pp := c.controller(nil)
		return c.describeActions(pp) + c.describePool(pp) + logText(c)
	case "crash":
		keep := map[string]bool{}
		for _, n := range strings.Split(kv["keep"], ",") {
			keep[n] = true
		}
		c.controller(func(a Action) bool { return keep[a.Node] })
		return logText(c)
	case "run":
		return runUntilQuiet(c, kv)
	case "fail-boot":
		for _, n := range pos {
			c.node(n).failOn[c.pool().Hash] = true
		}
		return ""
	case "heal":
		for _, n := range c.nodes {
			n.failOn = map[string]bool{}
		}
		return ""
	case "set":
		n := c.node(pos[0])
		for k, v := range kv {
			switch k {
			case "ready":
				n.notReady = time.Time{}
				if v == "false" {
					n.notReady = c.now.Add(1000 * time.Hour)
				}
			case "unhealthy":
				n.Unhealthy = strings.ReplaceAll(v, "_", " ")
			case "cordoned":
				n.Unschedulable = v == "true"
			case "agent":
				n.stuck = v == "stuck"
			case "pod":
				n.barePod = v == "bare"
			default:
				return fail("unknown key %s", k)
			}
		}
		n.Ready = !c.now.Before(n.notReady) && n.step != "reboot"
		return ""
	case "resume":
		c.resume = pos[0]
		return ""
	case "freeze":
		c.freeze = pos[0] == "on"
		return ""
	case "time":
		d, err := time.Parse("15:04", pos[0])
		if err != nil {
			return fail("%v", err)
		}
		c.now = time.Date(c.now.Year(), c.now.Month(), c.now.Day(), d.Hour(), d.Minute(), 0, 0, time.UTC)
		return ""
	case "drain-time":
		d, err := time.ParseDuration(pos[0])
		if err != nil {
			return fail("%v", err)
		}
		c.drainTime = d
		return ""
	}
	if out, ok, err := runRepairStep(c, s, kv, pos); ok {
		if err != nil {
			return fail("%v", err)
		}
		return out
	}
	return fail("unknown command")
}

// runUntilQuiet runs rounds of five minutes (agents, then a reconcile)
// until nothing happens and the pool is not progressing, or max rounds.
func runUntilQuiet(c *cluster, kv map[string]string) string {
	rounds := 50
	if m, err := strconv.Atoi(kv["max"]); err == nil {
		rounds = m
	}
	var b strings.Builder
	phase := Phase("")
	for range rounds {
		c.now = c.now.Add(5 * time.Minute)
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
		if pp.Phase != phase {
			fmt.Fprintf(&b, "%s phase %s\n", at, pp.Phase)
			phase = pp.Phase
		}
		if len(c.log) == 0 && len(pp.Events) == 0 && c.quiet() && pp.Phase != PhaseProgressing && pp.Phase != PhaseRollingBack {
			break
		}
	}
	return b.String()
}

func logText(c *cluster) string {
	var b strings.Builder
	for _, l := range c.log {
		b.WriteString(l + "\n")
	}
	return b.String()
}

// scenarioOS names the OS commits scenarios use.
var scenarioOS = map[string]string{"osA": osOld, "osB": osNew, "osC": "0c0ffee0e1d04f5a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a"}

// scenarioPool makes a target from the previous one's spec and the
// settings given.
func scenarioPool(c *cluster, name string, kv map[string]string) (Pool, error) {
	spec := schema.NodePool{
		Selector: schema.Selector{MatchLabels: map[string]string{"herd.dev/pool": "p"}},
		OS:       schema.OSTarget{Ref: "os/stable", Commit: osOld},
		Kubelet:  &schema.Kubelet{MaxPods: new(110)},
		Sysctl:   map[string]string{"vm.max_map_count": "262144"},
		Rollout:  schema.Rollout{MaxUnavailable: schema.IntOrPercent{Int: 1}, FailurePolicy: "halt", MaxFailures: 0, NodeTimeout: "1h"},
	}
	var windows []schema.Window
	if len(c.targets) > 0 {
		prev := c.pool()
		spec = prev.Spec
		mp := *spec.Kubelet.MaxPods
		spec.Kubelet = &schema.Kubelet{MaxPods: &mp}
		spec.Sysctl = map[string]string{"vm.max_map_count": prev.Spec.Sysctl["vm.max_map_count"]}
		windows = spec.Rollout.Windows
	}
	for k, v := range kv {
		var err error
		switch k {
		case "os":
			spec.OS.Commit = scenarioOS[v]
		case "maxPods":
			var n int
			n, err = strconv.Atoi(v)
			spec.Kubelet.MaxPods = &n
		case "sysctl":
			spec.Sysctl["vm.max_map_count"] = v
		case "maxUnavailable":
			err = spec.Rollout.MaxUnavailable.UnmarshalJSON([]byte(strconv.Quote(v)))
			if n, e := strconv.Atoi(v); e == nil {
				spec.Rollout.MaxUnavailable, err = schema.IntOrPercent{Int: n}, nil
			}
		case "canary":
			spec.Rollout.Canary, err = strconv.Atoi(v)
		case "soak":
			spec.Rollout.Soak = v
		case "nodeTimeout":
			spec.Rollout.NodeTimeout = v
		case "maxFailures":
			spec.Rollout.MaxFailures, err = strconv.Atoi(v)
		case "policy":
			spec.Rollout.FailurePolicy = v
		case "quarantine":
			var n int
			n, err = strconv.Atoi(v)
			spec.Rollout.Quarantine = &schema.Quarantine{After: n}
		case "prestage":
			spec.Rollout.Prestage, err = strconv.Atoi(v)
		case "paused":
			spec.Paused = v == "true"
		case "resume":
			spec.Rollout.Resume = v
		case "window":
			start, end, _ := strings.Cut(v, "-")
			windows = []schema.Window{{Days: []string{"Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"}, Start: start, End: end, TimeZone: "UTC"}}
		case "windows":
			windows = nil
		default:
			var ok bool
			if ok, err = repairSetting(&spec, k, v); !ok {
				return Pool{}, fmt.Errorf("unknown setting %s", k)
			}
		}
		if err != nil {
			return Pool{}, fmt.Errorf("%s=%s: %w", k, v, err)
		}
	}
	spec.Rollout.Windows = windows
	rd, err := schema.Render(schema.NodeConfig{
		OS:      schema.OSConfig{Ref: spec.OS.Ref, Commit: spec.OS.Commit},
		Kubelet: spec.Kubelet,
		Sysctl:  spec.Sysctl,
	})
	if err != nil {
		return Pool{}, err
	}
	p := Pool{Name: "p", Spec: spec, Rendered: rd, Hash: rd.Hash(), Revision: name}
	for _, w := range windows {
		ow, err := w.Compile()
		if err != nil {
			return Pool{}, err
		}
		p.Windows = append(p.Windows, ow)
	}
	if old, ok := c.names[p.Hash]; ok && old != name {
		name = old // a revert: the same render as before
	}
	c.names[p.Hash] = name
	for n, commit := range scenarioOS {
		c.names[commit] = n
	}
	return p, nil
}
