package schema

import (
	"strings"
	"testing"
	"time"
)

func TestWindows(t *testing.T) {
	// Weeknights 22:00-04:00 in Berlin (UTC+1 in winter).
	w, err := Window{Days: []string{"Mon", "Tue", "Wed", "Thu", "Fri"}, Start: "22:00", End: "04:00", TimeZone: "Europe/Berlin"}.Compile()
	if err != nil {
		t.Fatal(err)
	}
	at := func(s string) time.Time {
		tt, err := time.Parse(time.RFC3339, s)
		if err != nil {
			t.Fatal(err)
		}
		return tt
	}
	for when, want := range map[string]bool{
		"2026-11-23T20:59:00Z": false, // Mon 21:59 Berlin
		"2026-11-23T21:00:00Z": true,  // Mon 22:00
		"2026-11-24T02:59:00Z": true,  // Tue 03:59, the night from Monday
		"2026-11-24T03:00:00Z": false, // Tue 04:00
		"2026-11-28T21:30:00Z": false, // Sat 22:30: Saturday is not a window day
		"2026-11-28T01:00:00Z": true,  // Sat 02:00, the night from Friday
		"2026-11-29T23:30:00Z": false, // Mon 00:30 Berlin: the night from Sunday, not a window day
	} {
		if got := w.Open(at(when)); got != want {
			t.Errorf("open at %s = %v, want %v", when, got, want)
		}
	}
	if got, want := (Windows{w}).NextOpen(at("2026-11-28T12:00:00Z")), at("2026-11-30T21:00:00Z"); !got.Equal(want) {
		t.Errorf("next open after Saturday noon: %s, want Monday 22:00 Berlin (%s)", got, want)
	}
	if !(Windows{}).Open(at("2026-11-28T12:00:00Z")) {
		t.Error("no windows means always open")
	}
}

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

func TestCELCheck(t *testing.T) {
	c, err := CompileCEL(`conditions.Ready.status == "True" && conditions.MemoryPressure.status != "True" && labels["herd.dev/pool"] == "general"`)
	if err != nil {
		t.Fatal(err)
	}
	ok, err := c.Eval(map[string]map[string]string{"Ready": {"status": "True"}, "MemoryPressure": {"status": "False"}}, map[string]string{"herd.dev/pool": "general"})
	if !ok || err != nil {
		t.Errorf("healthy node: %v, %v", ok, err)
	}
	ok, _ = c.Eval(map[string]map[string]string{"Ready": {"status": "True"}, "MemoryPressure": {"status": "True"}}, map[string]string{"herd.dev/pool": "general"})
	if ok {
		t.Error("memory pressure passes the check")
	}
	if ok, err := c.Eval(map[string]map[string]string{"Ready": {"status": "True"}}, nil); ok || err == nil {
		t.Errorf("a missing condition: %v, %v; want a failed check with an error", ok, err)
	}
}
