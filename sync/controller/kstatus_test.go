package controller

import (
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"

	"herd.dev/herd/planner"
	"herd.dev/herd/sync/cluster"
	"herd.dev/herd/sync/herdpool"
)

// TestKstatusPerPhase computes kstatus (as kubectl wait, Flux and Argo CD
// health checks do) for a HerdPool in every phase: held phases (paused,
// frozen, halted, blocked, drain blocked) end a wait with Failed, phases
// that move by themselves read InProgress, a finished pool Current.
func TestKstatusPerPhase(t *testing.T) {
	cases := []struct {
		name    string
		pp      planner.PoolPlan
		blocked bool // a drain past its timeout
		want    status.Status
	}{
		{"up to date", planner.PoolPlan{Phase: planner.PhaseUpToDate}, false, status.CurrentStatus},
		{"progressing", planner.PoolPlan{Phase: planner.PhaseProgressing}, false, status.InProgressStatus},
		{"paused", planner.PoolPlan{Phase: planner.PhasePaused}, false, status.FailedStatus},
		{"frozen", planner.PoolPlan{Phase: planner.PhaseWaiting, Closed: &planner.Reason{Code: planner.CodeFrozen}}, false, status.FailedStatus},
		{"outside window", planner.PoolPlan{Phase: planner.PhaseWaiting, Closed: &planner.Reason{Code: planner.CodeOutsideWindow}}, false, status.InProgressStatus},
		{"halted", planner.PoolPlan{Phase: planner.PhaseHalted}, false, status.FailedStatus},
		{"rolling back", planner.PoolPlan{Phase: planner.PhaseRollingBack}, false, status.InProgressStatus},
		{"blocked", planner.PoolPlan{Phase: planner.PhaseBlocked, Blocked: &planner.Reason{Code: planner.CodeNoRoom}}, false, status.FailedStatus},
		{"drain blocked", planner.PoolPlan{Phase: planner.PhaseProgressing}, true, status.FailedStatus},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			np := &herdpool.HerdPool{}
			np.Name, np.Generation = "general", 1
			np.Status.ObservedGeneration = 1
			np.Status.Message = c.name
			if c.blocked {
				np.Status.DrainBlocked = []herdpool.DrainBlockedNode{{Node: "n1", State: cluster.Refused}}
			}
			pp := c.pp
			markConditions(np, &pp, nil)
			u, err := runtime.DefaultUnstructuredConverter.ToUnstructured(np)
			if err != nil {
				t.Fatal(err)
			}
			res, err := status.Compute(&unstructured.Unstructured{Object: u})
			if err != nil {
				t.Fatal(err)
			}
			if res.Status != c.want {
				t.Fatalf("kstatus %s (%s), want %s; conditions %+v", res.Status, res.Message, c.want, np.Status.Conditions)
			}
		})
	}
}
