package remedy

import (
	"errors"
	"testing"

	"herd.dev/herd/schema"
)

// drive runs Step as the executor does, with do answering each action,
// until it waits; it returns the journal and the actions taken.
func drive(t *testing.T, j Journal, in Input, do func(Action) Result) (Journal, []ActionKind) {
	t.Helper()
	var kinds []ActionKind
	for range 20 {
		var act Action
		j, act = Step(j, in)
		if act.Kind == Wait {
			return j, kinds
		}
		kinds = append(kinds, act.Kind)
		r := do(act)
		if act.Kind == Report && r.Err == nil {
			in.Reported = act.Report
		}
		in.Result = &r
	}
	t.Fatalf("no wait after 20 steps: %v", kinds)
	return j, nil
}

func ok(a Action) Result { return Result{Of: a.Kind, Marker: "run-1"} }

func TestStepRungs(t *testing.T) {
	for _, tt := range []struct {
		request string
		want    []ActionKind
		report  string
	}{
		{"restart-kubelet@1", []ActionKind{ReadMarker, Restart, Report}, "restart-kubelet@1 Succeeded: restarted"},
		{"restart-containerd@2", []ActionKind{ReadMarker, Restart, Report}, "restart-containerd@2 Succeeded: restarted"},
		{"clean-sandboxes@3", []ActionKind{Clean, Report}, "clean-sandboxes@3 Succeeded: removed 0 pod sandbox(es)"},
		{"replace@4", []ActionKind{Capture, Report}, "replace@4 Succeeded: evidence captured"},
		{"reboot@5", []ActionKind{Capture, Reboot}, ""}, // then the agent goes down with the node
		{"", nil, ""},
		{"format-disk@6", nil, ""},
	} {
		t.Run(tt.request, func(t *testing.T) {
			var units []string
			j, got := drive(t, Journal{}, Input{Request: tt.request, BootID: "boot-1"}, func(a Action) Result {
				if a.Unit != "" {
					units = append(units, a.Unit)
				}
				return ok(a)
			})
			if !equal(got, tt.want) {
				t.Fatalf("actions %v, want %v", got, tt.want)
			}
			if tt.report != "" && j.report() != tt.report {
				t.Errorf("report %q, want %q", j.report(), tt.report)
			}
			if tt.request == "restart-containerd@2" && (len(units) != 2 || units[1] != ContainerdUnit) {
				t.Errorf("units %v", units)
			}
		})
	}
}

func equal(a, b []ActionKind) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// A rung done and reported is not done again, however often the Node
// changes; a new request is a new rung.
func TestStepOnce(t *testing.T) {
	in := Input{Request: "restart-kubelet@1", BootID: "b"}
	j, _ := drive(t, Journal{}, in, ok)
	in.Reported = j.report()
	if _, got := drive(t, j, in, ok); len(got) != 0 {
		t.Fatalf("the same request again: %v", got)
	}
	in.Request = "restart-kubelet@2"
	if _, got := drive(t, j, in, ok); !equal(got, []ActionKind{ReadMarker, Restart, Report}) {
		t.Fatalf("a new request: %v", got)
	}
}

// After a crash between the marker and the restart's result: a unit whose
// invocation changed restarted (not again); one that did not is
// restarted now.
func TestStepResumeRestart(t *testing.T) {
	j := Journal{Request: "restart-kubelet@1", Phase: PhaseActing, Marker: "run-1"}
	in := Input{Request: "restart-kubelet@1", BootID: "b"}
	_, got := drive(t, j, in, func(a Action) Result { return Result{Of: a.Kind, Marker: "run-2"} })
	if !equal(got, []ActionKind{ReadMarker, Report}) {
		t.Errorf("restarted before the crash: %v, want no restart", got)
	}
	_, got = drive(t, j, in, func(a Action) Result { return Result{Of: a.Kind, Marker: "run-1"} })
	if !equal(got, []ActionKind{ReadMarker, Restart, Report}) {
		t.Errorf("not restarted before the crash: %v, want one restart", got)
	}
}

// A reboot asked for in one boot is done in the next; asked for and not
// done (the same boot), it is asked for again: the same reboot.
func TestStepResumeReboot(t *testing.T) {
	j := Journal{Request: "reboot@1", Phase: PhaseRebooted, Marker: "boot-1"}
	in := Input{Request: "reboot@1", BootID: "boot-2"}
	j2, got := drive(t, Resume(j, "boot-2"), in, ok)
	if !equal(got, []ActionKind{Report}) || j2.Result != schema.ResultSucceeded {
		t.Errorf("after the reboot: %v, %+v", got, j2)
	}
	in.BootID = "boot-1"
	if _, got := drive(t, Resume(j, "boot-1"), in, ok); !equal(got, []ActionKind{Reboot}) {
		t.Errorf("the same boot: %v, want the reboot asked again", got)
	}
	if _, got := drive(t, j, in, ok); len(got) != 0 {
		t.Errorf("asked for, not restarted: %v, want a wait for the shutdown", got)
	}
}

// A rung that fails is reported Failed, with why; the controller moves on.
func TestStepFailure(t *testing.T) {
	j, got := drive(t, Journal{}, Input{Request: "restart-containerd@9", BootID: "b"}, func(a Action) Result {
		r := ok(a)
		if a.Kind == Restart {
			r.Err = errors.New(`systemd job result "failed"`)
		}
		return r
	})
	if !equal(got, []ActionKind{ReadMarker, Restart, Report}) || j.report() != `restart-containerd@9 Failed: systemd job result "failed"` {
		t.Fatalf("%v %q", got, j.report())
	}
}
