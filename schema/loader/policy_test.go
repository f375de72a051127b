package loader

import (
	"strings"
	"testing"
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
