package planinput

import (
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"

	"herd.dev/herd/schema"
	"herd.dev/herd/test/fleettest"
)

// TestNodeFormsSameInput builds a fleet's input over and over with and
// without kept planner forms while nodes change (a new version with new
// content), join, leave, lose their version or only come in another
// order, and requires the same input every time.
func TestNodeFormsSameInput(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	r := rand.New(rand.NewPCG(seed, 7))
	work := filepath.Join(t.TempDir(), "fleet")
	fleettest.NewRepo(t, work)
	res := fleettest.Load(t, work)
	now := time.Date(2026, 11, 2, 10, 0, 0, 0, time.UTC)
	pools := res.PoolNames()
	version, unversioned := 0, false
	newNode := func(name string) *corev1.Node {
		pool := pools[r.IntN(len(pools))]
		a := fleettest.AtTarget(res, pool)
		if r.IntN(3) == 0 {
			a[schema.AnnotationState] = string(schema.StateWorking)
			a[schema.AnnotationDispatched] = now.Add(-time.Duration(r.IntN(600)) * time.Second).Format(time.RFC3339)
		}
		n := fleettest.Node{Name: name, Pool: pool, Zone: fmt.Sprintf("zone-%c", 'a'+r.IntN(3)), NotReady: r.IntN(8) == 0, Annotations: a}.KubeNode()
		version++
		n.ResourceVersion = strconv.Itoa(version)
		if unversioned && r.IntN(10) == 0 {
			n.ResourceVersion = "" // read from a file
		}
		return &n
	}
	var nodes []*corev1.Node
	for i := range 50 {
		nodes = append(nodes, newNode(fmt.Sprintf("node-%03d", i)))
	}
	forms, next := NewNodeForms(), 50
	for round := range 30 {
		unhealthy := map[string]string{}
		for _, n := range nodes {
			if r.IntN(10) == 0 {
				unhealthy[n.Name] = "a check fails"
			}
		}
		src := Sources{Fleet: res, Revision: "head", Nodes: nodes, Unhealthy: unhealthy, Now: now}
		want, err := Build(src)
		if err != nil {
			t.Fatal(err)
		}
		src.Forms = forms
		got, err := Build(src)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Fatalf("round %d: the input with kept forms differs (-read +kept):\n%s", round, diff)
		}
		if len(forms.forms) > len(nodes) {
			t.Fatalf("round %d: %d forms kept for %d nodes", round, len(forms.forms), len(nodes))
		}
		// Change some nodes; every other round on average, remove some
		// and add some too; shuffle the order.
		var churn bool
		churn, unversioned = r.IntN(2) == 0, r.IntN(4) == 0
		var changed []*corev1.Node
		for _, n := range nodes {
			switch r.IntN(10) {
			case 0:
				if churn {
					continue // gone
				}
				changed = append(changed, n)
			case 1, 2:
				changed = append(changed, newNode(n.Name))
			default:
				changed = append(changed, n)
			}
		}
		for range r.IntN(4) {
			if churn {
				changed = append(changed, newNode(fmt.Sprintf("node-%03d", next)))
				next++
			}
		}
		r.Shuffle(len(changed), func(i, j int) { changed[i], changed[j] = changed[j], changed[i] })
		nodes = changed
	}
}
