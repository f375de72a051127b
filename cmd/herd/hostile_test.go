package main

import (
	"strings"
	"testing"

	"herd.dev/herd/test/hostile"
)

// `herd validate` rejects every hostile commit with exit status 1 and a
// message saying what is wrong (and which limit, when over budget), within
// the budget its flags set: never a crash or a hang.
func TestValidateHostile(t *testing.T) {
	for _, c := range hostile.Cases {
		t.Run(c.Name, func(t *testing.T) {
			dir := hostile.Fleet(t, c)
			code, out, errOut := herd(t, "", "validate", "--max-memory=256Mi", "--max-cpu=3s", "--timeout=30s", dir)
			if code != exitFailure {
				t.Fatalf("exit %d, want %d; stdout %q, stderr %q", code, exitFailure, out, errOut)
			}
			if !strings.Contains(errOut, c.Message) {
				t.Errorf("stderr %q does not say %q", errOut, c.Message)
			}
			if len(c.Limits) > 0 && !strings.Contains(errOut, "(budget ") {
				t.Errorf("stderr %q names no budget limit", errOut)
			}
		})
	}
}

// Budget flags take effect: a fleet deeper than --max-depth is refused.
func TestValidateBudgetFlags(t *testing.T) {
	dir := hostile.Fleet(t, hostile.Case{Edit: func(testing.TB, string) {}})
	if code, _, errOut := herd(t, "", "validate", "--max-depth=2", dir); code != exitFailure || !strings.Contains(errOut, "nested more than 2 levels deep") {
		t.Errorf("--max-depth=2: exit %d, stderr %q", code, errOut)
	}
	if code, _, errOut := herd(t, "", "validate", "--max-memory=lots", dir); code != exitUsage {
		t.Errorf("--max-memory=lots: exit %d, stderr %q", code, errOut)
	}
}
