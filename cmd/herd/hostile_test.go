package main

import (
	"strings"
	"testing"

	"herd.dev/herd/config"
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

// Commit signature verification is on by default, in the installed
// Deployment and in the controller; turning it off takes a flag.
func TestVerificationOnByDefault(t *testing.T) {
	_, out, _ := herd(t, "", "install", "--print", "--repo", "https://git.example.com/fleet.git", "--cluster", "c")
	if strings.Count(out, config.VerifyArg) != 1 || strings.Contains(out, "--insecure-skip-verify") {
		t.Errorf("herd install --print: want %s once and no --insecure-skip-verify", config.VerifyArg)
	}
	_, out, _ = herd(t, "", "install", "--print", "--repo", "https://git.example.com/fleet.git", "--cluster", "c", "--insecure-skip-verify")
	if strings.Contains(out, config.VerifyArg) || strings.Count(out, "- --insecure-skip-verify") != 1 {
		t.Errorf("herd install --print --insecure-skip-verify: the controller still verifies")
	}
	code, _, errOut := herd(t, "", "controller", "--repo", "file:///nowhere", "--cluster", "c")
	if code != exitUsage || !strings.Contains(errOut, "commit signature verification is on") {
		t.Errorf("controller without keys: exit %d, %q", code, errOut)
	}
	// An empty --verify-dir (the ConfigMap not created yet) starts the
	// controller, which rejects new commits until a key is there.
	dir := t.TempDir()
	v, err := verification(dir, nil, "", false)
	if err != nil || v == nil || v.Dir != dir {
		t.Errorf("an empty --verify-dir: %+v, %v; want verification from %s", v, err, dir)
	}
	if _, err := verification(dir, nil, "", true); err != nil {
		t.Errorf("--insecure-skip-verify with an empty --verify-dir: %v", err)
	}
}
