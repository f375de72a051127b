package planner

import (
	"cmp"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"herd.dev/herd/schema"
)

// TestAssignMatchesEverySelector checks assign's index against trying
// every pool's selector on every node, with random selectors over a few
// label keys (pools indexed by different keys, and by the same) and
// nodes with fewer and more labels than the index has keys.
func TestAssignMatchesEverySelector(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	r := rand.New(rand.NewPCG(seed, 11))
	keys := []string{"a", "b", "c", "herd.dev/pool", "zone"}
	values := []string{"x", "y"}
	randomLabels := func(max int) map[string]string {
		m := map[string]string{}
		for range r.IntN(max + 1) {
			m[keys[r.IntN(len(keys))]] = values[r.IntN(len(values))]
		}
		return m
	}
	for round := range 300 {
		var pools []Pool
		for i := range 1 + r.IntN(6) {
			pools = append(pools, Pool{Name: fmt.Sprintf("p%d", i), Spec: schema.NodePool{Selector: schema.Selector{MatchLabels: randomLabels(3)}}})
		}
		var nodes []Node
		for i := range r.IntN(30) {
			nodes = append(nodes, Node{Name: fmt.Sprintf("n%02d", i), Labels: randomLabels(5)})
		}
		members, unmanaged, conflicts := assign(pools, nodes)

		wantMembers := make([][]string, len(pools))
		wantUnmanaged := []string{}
		var wantConflicts []Conflict
		for _, n := range nodes {
			var in []string
			var at int
			for pi, p := range pools {
				if len(p.Spec.Selector.MatchLabels) > 0 && p.Spec.Selector.Matches(n.Labels) {
					in, at = append(in, p.Name), pi
				}
			}
			switch len(in) {
			case 0:
				wantUnmanaged = append(wantUnmanaged, n.Name)
			case 1:
				wantMembers[at] = append(wantMembers[at], n.Name)
			default:
				slices.Sort(in)
				wantConflicts = append(wantConflicts, Conflict{Node: n.Name, Pools: in})
			}
		}
		for pi := range pools {
			var got []string
			for _, n := range members[pi] {
				got = append(got, n.Name)
			}
			if !slices.Equal(got, wantMembers[pi]) {
				t.Fatalf("round %d: pool %s %v: members %v, want %v", round, pools[pi].Name, pools[pi].Spec.Selector.MatchLabels, got, wantMembers[pi])
			}
		}
		if !slices.Equal(unmanaged, wantUnmanaged) {
			t.Fatalf("round %d: unmanaged %v, want %v", round, unmanaged, wantUnmanaged)
		}
		if !slices.EqualFunc(conflicts, wantConflicts, func(a, b Conflict) bool { return a.Node == b.Node && slices.Equal(a.Pools, b.Pools) }) {
			t.Fatalf("round %d: conflicts %v, want %v", round, conflicts, wantConflicts)
		}
	}
}

// TestByStartOrder checks byStart's order against sorting with the key
// computed in the comparison, over nodes with repairs started, problems
// since random times, and neither.
func TestByStartOrder(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rnd := rand.New(rand.NewPCG(seed, 12))
	now := time.Date(2026, 11, 2, 10, 0, 0, 0, time.UTC)
	r := &repairer{now: now}
	at := func() time.Time { return now.Add(-time.Duration(rnd.IntN(5)) * time.Minute) }
	for round := range 200 {
		var ns []*Node
		for i := range rnd.IntN(40) {
			n := &Node{Name: fmt.Sprintf("n%02d", rnd.IntN(100)+i*100)}
			switch rnd.IntN(3) {
			case 0:
				n.Remediation = &schema.RemediationState{Started: at()}
			case 1:
				for _, p := range schema.Problems[:1+rnd.IntN(len(schema.Problems))] {
					typ := string(p)
					if p == schema.ProblemNotReady {
						typ = "Ready"
					}
					status := ConditionTrue
					if (p == schema.ProblemNotReady) == (rnd.IntN(2) == 0) {
						status = "False"
					}
					n.Conditions = append(n.Conditions, Condition{Type: typ, Status: status, Since: at(), Heartbeat: now})
				}
			}
			ns = append(ns, n)
		}
		key := func(n *Node) time.Time {
			if st := r.stateOf(n); st != nil {
				return st.Started
			}
			var t time.Time
			for _, p := range schema.Problems {
				if on, known, _, since := problemOn(n, p, r.now); on && known && (t.IsZero() || since.Before(t)) {
					t = since
				}
			}
			return t
		}
		want := slices.Clone(ns)
		slices.SortStableFunc(want, func(a, b *Node) int {
			return cmp.Or(key(a).Compare(key(b)), strings.Compare(a.Name, b.Name))
		})
		if got := byStart(r, ns); !slices.Equal(got, want) {
			t.Fatalf("round %d: byStart's order differs", round)
		}
	}
}
