package sourcestatus

import (
	"testing"
	"time"

	"github.com/fluxcd/pkg/apis/meta"
	"github.com/fluxcd/pkg/runtime/conditions"

	"herd.dev/herd/sync/herdsource"
	"herd.dev/herd/sync/source"
)

func TestRedact(t *testing.T) {
	for in, want := range map[string]string{
		"https://user:token@git.example.com/fleet.git": "https://git.example.com/fleet.git",
		"https://token@git.example.com/fleet.git":      "https://git.example.com/fleet.git",
		"ssh://git@git.example.com/fleet.git":          "ssh://git@git.example.com/fleet.git",
		"git://127.0.0.1:9418/fleet.git":               "git://127.0.0.1:9418/fleet.git",
	} {
		if got := Redact(in); got != want {
			t.Errorf("Redact(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestFill: each class of the source's reason gives its kstatus conditions;
// a reason this package does not name (the budget rejection, say) is a
// rejection.
func TestFill(t *testing.T) {
	cur := source.Revision{Commit: "0123456789abcdef", Subject: "s", Time: time.Unix(1e9, 0), Signer: "ops@example.com"}
	cases := []struct {
		st             source.Status
		ready          string
		reason         string
		stalled, recon bool
		verified       string
	}{
		{source.Status{}, "Unknown", meta.ProgressingReason, false, true, ""},
		{source.Status{Checks: 1, Reason: source.Succeeded}, "True", "Succeeded", false, false, "True"},
		{source.Status{Checks: 2, Reason: source.FetchFailed, LastSuccessTime: time.Unix(1e9, 0)}, "False", "FetchFailed", false, false, "True"},
		{source.Status{Checks: 2, Reason: source.ValidationFailed, LastRejected: &source.Rejection{Commit: "bad", Reason: source.ValidationFailed}}, "False", "ValidationFailed", true, false, "True"},
		{source.Status{Checks: 2, Reason: "BudgetExceeded", LastFetched: "bad", LastRejected: &source.Rejection{Commit: "bad", Reason: "BudgetExceeded"}}, "False", "BudgetExceeded", true, false, "True"},
		{source.Status{Checks: 2, Reason: source.VerificationFailed, LastFetched: "bad", LastRejected: &source.Rejection{Commit: "bad", Reason: source.VerificationFailed}}, "False", "VerificationFailed", true, false, "False"},
	}
	for _, c := range cases {
		obj := &herdsource.HerdSource{}
		fill(obj, c.st, cur, c.st.Checks > 0, true)
		r := conditions.Get(obj, meta.ReadyCondition)
		if r == nil || string(r.Status) != c.ready || r.Reason != c.reason {
			t.Errorf("%s: Ready %+v, want %s %s", c.st.Reason, r, c.ready, c.reason)
		}
		if conditions.IsTrue(obj, meta.StalledCondition) != c.stalled || conditions.IsTrue(obj, meta.ReconcilingCondition) != c.recon {
			t.Errorf("%s: conditions %+v", c.st.Reason, obj.Status.Conditions)
		}
		if v := conditions.Get(obj, herdsource.SourceVerifiedCondition); c.verified != "" && (v == nil || string(v.Status) != c.verified) {
			t.Errorf("%s: SourceVerified %+v, want %s", c.st.Reason, v, c.verified)
		}
	}
}
