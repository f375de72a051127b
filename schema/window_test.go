package schema

import (
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
