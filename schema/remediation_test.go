package schema

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

func TestRemediationRequestAndReport(t *testing.T) {
	req := RemediationRequest{Action: RepairRestartKubelet, ID: "1793520300"}
	if got := req.String(); got != "restart-kubelet@1793520300" {
		t.Fatalf("request %q", got)
	}
	back, err := ParseRemediationRequest(req.String())
	if err != nil || back != req {
		t.Fatalf("parse back: %+v, %v", back, err)
	}
	for _, bad := range []string{"", "restart-kubelet", "rm -rf /@1", "reboot@", "reboot@a b", "reboot@" + strings.Repeat("9", 41)} {
		if _, err := ParseRemediationRequest(bad); err == nil {
			t.Errorf("request %q parsed", bad)
		}
	}
	rep := RemediationReport{Request: req, Result: ResultFailed, Message: "restart kubelet.service: job failed\nsee the journal"}
	back2, err := ParseRemediationReport(rep.String())
	if err != nil || back2.Request != req || back2.Result != ResultFailed || back2.Message != "restart kubelet.service: job failed see the journal" {
		t.Fatalf("report %q parsed back as %+v, %v", rep.String(), back2, err)
	}
	ok := RemediationReport{Request: req, Result: ResultSucceeded}
	if back3, err := ParseRemediationReport(ok.String()); err != nil || back3 != ok {
		t.Fatalf("report %q parsed back as %+v, %v", ok.String(), back3, err)
	}
	if _, err := ParseRemediationReport("reboot@1 Maybe"); err == nil {
		t.Error("a report with an unknown result parsed")
	}
	long := RemediationReport{Request: req, Result: ResultFailed, Message: strings.Repeat("x", 2000)}
	if n := len(long.String()); n > 600 {
		t.Errorf("a report is %d bytes", n)
	}
}

func TestAppendRecord(t *testing.T) {
	var h []RemediationRecord
	for i := range MaxRemediationRecords + 5 {
		h = AppendRecord(h, RemediationRecord{ID: fmt.Sprint(i), Time: time.Unix(int64(i), 0)})
	}
	if len(h) != MaxRemediationRecords || h[0].ID != "5" || h[len(h)-1].ID != fmt.Sprint(MaxRemediationRecords+4) {
		t.Fatalf("history kept %d records, %s..%s", len(h), h[0].ID, h[len(h)-1].ID)
	}
	if again := AppendRecord(h, RemediationRecord{ID: h[3].ID}); len(again) != len(h) || again[len(again)-1].ID != h[len(h)-1].ID {
		t.Error("a record of an ID already there was appended again")
	}
}

func TestParseRemediationState(t *testing.T) {
	st, err := ParseRemediationState(`{"problem":"HerdKubeletUnhealthy","reason":"KubeletHealthzFailed","rung":1,"action":"reboot","id":"17","started":"2026-11-02T08:00:00Z"}`)
	if err != nil || st.Action != RepairReboot || st.Rung != 1 || st.Request().String() != "reboot@17" {
		t.Fatalf("%+v, %v", st, err)
	}
	if st, err := ParseRemediationState(""); st != nil || err != nil {
		t.Fatalf("empty: %+v, %v", st, err)
	}
	for _, bad := range []string{"{", `{"action":"nuke","id":"1"}`, `{"action":"reboot","id":"x y"}`} {
		if _, err := ParseRemediationState(bad); err == nil {
			t.Errorf("%s parsed", bad)
		}
	}
}
