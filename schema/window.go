package schema

import (
	"fmt"
	"time"
	_ "time/tzdata" // time zones without the host's zoneinfo: plans read no files
)

var dayIndex = map[string]time.Weekday{"Sun": time.Sunday, "Mon": time.Monday, "Tue": time.Tuesday, "Wed": time.Wednesday, "Thu": time.Thursday, "Fri": time.Friday, "Sat": time.Saturday}

// OpenWindow is a Window ready to answer "is it open at t?".
type OpenWindow struct {
	days       [7]bool
	start, end int // minutes after midnight
	loc        *time.Location
	text       string
}

// Compile checks a window and prepares it.
func (w Window) Compile() (OpenWindow, error) {
	var ow OpenWindow
	for _, d := range w.Days {
		i, ok := dayIndex[d]
		if !ok {
			return ow, fmt.Errorf("unknown day %q", d)
		}
		ow.days[i] = true
	}
	var err error
	if ow.start, err = clock(w.Start); err != nil {
		return ow, err
	}
	if ow.end, err = clock(w.End); err != nil {
		return ow, err
	}
	if ow.start == ow.end {
		return ow, fmt.Errorf("window %s-%s is empty: start and end are the same", w.Start, w.End)
	}
	tz := w.TimeZone
	if tz == "" {
		tz = "UTC"
	}
	if ow.loc, err = time.LoadLocation(tz); err != nil {
		return ow, fmt.Errorf("unknown time zone %q", tz)
	}
	ow.text = fmt.Sprintf("%v %s-%s %s", w.Days, w.Start, w.End, tz)
	return ow, nil
}

func clock(s string) (int, error) {
	t, err := time.Parse("15:04", s)
	if err != nil {
		return 0, fmt.Errorf("invalid time of day %q (want HH:MM)", s)
	}
	return t.Hour()*60 + t.Minute(), nil
}

// Open reports whether the window is open at t. A window whose end is
// before its start opens on its days and closes the next day.
func (w OpenWindow) Open(t time.Time) bool {
	t = t.In(w.loc)
	m := t.Hour()*60 + t.Minute()
	if w.start < w.end {
		return w.days[t.Weekday()] && m >= w.start && m < w.end
	}
	// Past midnight: open from start on an open day, or before end on the
	// day after one.
	return w.days[t.Weekday()] && m >= w.start || w.days[(t.Weekday()+6)%7] && m < w.end
}

// NextOpen returns the first time at or after t when the window is open,
// to the minute; zero if it never opens.
func (w OpenWindow) NextOpen(t time.Time) time.Time {
	t = t.Truncate(time.Minute)
	for i := 0; i <= 8*24*60; i += 1 {
		c := t.Add(time.Duration(i) * time.Minute)
		if w.Open(c) {
			return c
		}
	}
	return time.Time{}
}

func (w OpenWindow) String() string { return w.text }

// Windows is a set of windows: open when any is. No windows means always.
type Windows []OpenWindow

// Open reports whether any window is open at t (always, without windows).
func (ws Windows) Open(t time.Time) bool {
	if len(ws) == 0 {
		return true
	}
	for _, w := range ws {
		if w.Open(t) {
			return true
		}
	}
	return false
}

// NextOpen returns when the next window opens.
func (ws Windows) NextOpen(t time.Time) time.Time {
	var next time.Time
	for _, w := range ws {
		if n := w.NextOpen(t); !n.IsZero() && (next.IsZero() || n.Before(next)) {
			next = n
		}
	}
	return next
}

// PoolWindows returns a pool's windows: its own, else the fleet's.
func (f *Fleet) PoolWindows(pool string) (Windows, error) {
	ws := f.Pools[pool].Rollout.Windows
	if len(ws) == 0 && f.Maintenance != nil {
		ws = f.Maintenance.Windows
	}
	var out Windows
	for _, w := range ws {
		ow, err := w.Compile()
		if err != nil {
			return nil, err
		}
		out = append(out, ow)
	}
	return out, nil
}

// Frozen reports whether the fleet is frozen.
func (f *Fleet) Frozen() bool { return f.Maintenance != nil && f.Maintenance.Freeze }
