package loader

import (
	"reflect"
	"strings"
	"testing"

	"herd.dev/herd/schema"
)

func TestRolloutPolicyChecks(t *testing.T) {
	files := exampleFiles(t)
	files["pools/batch.cue"] = []byte(strings.Replace(string(files["pools/batch.cue"]), `maxFailures:    2`, `maxFailures: 2
		windows: [{start: "22:00", end: "22:00"}, {start: "01:00", end: "05:00", timeZone: "Mars/Olympus"}]
		healthChecks: cel: "conditions.Ready.status"`, 1))
	_, err := Load(files)
	got := strings.Join(diagStrings(err), "\n")
	for _, want := range []string{
		"pools.batch.rollout.healthChecks.cel: the CEL expression is a string, not a bool",
		"pools.batch.rollout.windows.0: window 22:00-22:00 is empty",
		`pools.batch.rollout.windows.1: unknown time zone "Mars/Olympus"`,
	} {
		if !strings.Contains(got, want) {
			t.Errorf("diagnostics lack %q:\n%s", want, got)
		}
	}
}

func TestDrainPolicyChecks(t *testing.T) {
	files := exampleFiles(t)
	files["pools/batch.cue"] = []byte(strings.Replace(string(files["pools/batch.cue"]), `maxFailures:    2`, `maxFailures: 2
		drain: {
			timeout:     "0s"
			gracePeriod: "1500ms"
			podSelector: matchExpressions: [{key: "app", operator: "In"}, {key: "tier", operator: "Exists", values: ["web"]}]
		}`, 1))
	_, err := Load(files)
	got := strings.Join(diagStrings(err), "\n")
	for _, want := range []string{
		`pools.batch.rollout.drain.timeout: drain timeout "0s" must be a positive duration`,
		`pools.batch.rollout.drain.gracePeriod: gracePeriod "1500ms" must be whole seconds, 0s or more`,
		`pools.batch.rollout.drain.podSelector.matchExpressions.0: operator In needs values`,
		`pools.batch.rollout.drain.podSelector.matchExpressions.1: operator Exists takes no values`,
	} {
		if !strings.Contains(got, want) {
			t.Errorf("diagnostics lack %q:\n%s", want, got)
		}
	}

	// Defaults lose nothing; batch lets its scratch data go.
	res, err := Load(exampleFiles(t))
	if err != nil {
		t.Fatal(err)
	}
	for pool, want := range map[string]schema.Drain{
		"general": {Timeout: "10m", IgnoreDaemonSets: true},
		"batch":   {Timeout: "10m", IgnoreDaemonSets: true, DeleteEmptyDirData: true},
	} {
		if got := res.Fleet.Pools[pool].Rollout.Drain; !reflect.DeepEqual(got, want) {
			t.Errorf("%s's drain policy: %+v; want %+v", pool, got, want)
		}
	}
}
