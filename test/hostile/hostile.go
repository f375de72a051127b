// Package hostile holds fleet commits written to take Herd down or to run a
// command on nodes; tests check that each is rejected within its budget.
package hostile

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"herd.dev/herd/schema/loader"
	"herd.dev/herd/test/fleettest"
)

// Case is one hostile change to the example fleet.
type Case struct {
	Name string
	// Edit changes the fleet rooted at dir (a copy of the example).
	Edit func(t testing.TB, dir string)
	// Limits the rejection may name (over budget), or none when it is an
	// invalid fleet; Message is a part of the message either way.
	Limits  []loader.Limit
	Message string
}

// File is the hostile pool file each case writes (but the symlink case).
const File = "pools/hostile.cue"

func write(src string) func(testing.TB, string) {
	return func(t testing.TB, dir string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, File), []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// pool is a pool of the example fleet with extra fields.
func pool(extra string) string {
	return `package fleet

pools: general: ` + extra + "\n"
}

// Cases are every hostile commit of issue #10 and a few more.
var Cases = []Case{
	{
		// Each level squares the list: 2^32 elements at the 6th.
		Name: "nested comprehension",
		Edit: write(`package fleet

_a0: [1, 1]
_a1: [for x in _a0 for y in _a0 {x}]
_a2: [for x in _a1 for y in _a1 {x}]
_a3: [for x in _a2 for y in _a2 {x}]
_a4: [for x in _a3 for y in _a3 {x}]
_a5: [for x in _a4 for y in _a4 {x}]
pools: general: rollout: resume: "\(len(_a5))"
`),
		Limits:  []loader.Limit{loader.LimitCPU, loader.LimitMemory, loader.LimitTime},
		Message: "budget",
	},
	{
		// Counting brackets only, this went through to overflow the stack.
		Name:    "long label chain",
		Edit:    write("package fleet\n\n_d: " + strings.Repeat("a: ", 200000) + "1\n"),
		Limits:  []loader.Limit{loader.LimitDepth},
		Message: "nested more than 100 levels deep",
	},
	{
		Name:    "deep brackets",
		Edit:    write("package fleet\n\n_d: " + strings.Repeat("[", 100000) + strings.Repeat("]", 100000) + "\n"),
		Limits:  []loader.Limit{loader.LimitDepth},
		Message: "nested more than 100 levels deep",
	},
	{
		// 2^31 bytes from a few lines: built long before any size check of
		// the result could see it.
		Name: "doubling strings",
		Edit: write(func() string {
			var b strings.Builder
			b.WriteString("package fleet\n\n_s0: \"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"\n")
			for i := 1; i <= 26; i++ {
				fmt.Fprintf(&b, "_s%d: _s%d + _s%d\n", i, i-1, i-1)
			}
			b.WriteString("pools: general: rollout: resume: _s26\n")
			return b.String()
		}()),
		Limits:  []loader.Limit{loader.LimitMemory, loader.LimitCPU, loader.LimitTime, loader.LimitString},
		Message: "budget",
	},
	{
		Name: "hundreds of package directories",
		Edit: func(t testing.TB, dir string) {
			for i := range 300 {
				d := filepath.Join(dir, "pools", fmt.Sprintf("p%03d", i))
				if err := os.MkdirAll(d, 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(d, "x.cue"), []byte("package fleet\n"), 0o644); err != nil {
					t.Fatal(err)
				}
			}
		},
		Limits:  []loader.Limit{loader.LimitInstances},
		Message: "spans 302 directories",
	},
	{
		Name:    "oversized file",
		Edit:    write("package fleet\n\n_x: \"" + strings.Repeat("a", 2<<20) + "\"\n"),
		Limits:  []loader.Limit{loader.LimitFileSize},
		Message: "the limit is 1048576",
	},
	{
		Name:    "a file of another package",
		Edit:    write("package other\n\npools: general: paused: true\n"),
		Message: "declares package other, not the fleet's package fleet",
	},
	{
		Name:    "a top-level typo",
		Edit:    write("package fleet\n\nmaintenence: freeze: true\n"),
		Message: "unknown top-level field maintenence",
	},
	{
		Name: "a symlinked pool file",
		Edit: func(t testing.TB, dir string) {
			if err := os.Symlink("general.cue", filepath.Join(dir, "pools", "alias.cue")); err != nil {
				t.Fatal(err)
			}
		},
		Message: "pools/alias.cue: is a symbolic link",
	},
	{
		Name: "an empty fleet",
		Edit: func(t testing.TB, dir string) {
			if err := os.RemoveAll(filepath.Join(dir, "pools")); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, "fleet.cue"), []byte("package fleet\n\npools: {}\n"), 0o644); err != nil {
				t.Fatal(err)
			}
		},
		Message: "the fleet declares no pools",
	},
	{
		Name:    "a quoted init= kernel argument",
		Edit:    write(pool(`kernelArgs: ["\"init=/bin/sh\""]`)),
		Message: `kernel argument "\"init=/bin/sh\"" is not allowed`,
	},
	{
		Name:    "a debug shell on the console",
		Edit:    write(pool(`kernelArgs: ["rd.systemd.debug_shell"]`)),
		Message: "rd.systemd.debug_shell is not in the allowlist of safe kernel parameters",
	},
	{
		Name:    "init arguments after --",
		Edit:    write(pool(`kernelArgs: ["--"]`)),
		Message: `"--" ends the kernel's parameters`,
	},
	{
		Name:    "a modprobe install line",
		Edit:    write(pool(`files: [{path: "/etc/modprobe.d/x.conf", content: "install dummy /bin/sh -c id\n"}]`)),
		Message: `"install" is not allowed: it runs a shell command`,
	},
	{
		Name:    "a udev rule that runs a program",
		Edit:    write(pool(`files: [{path: "/etc/udev/rules.d/99-x.rules", content: "RUN+=\"/bin/sh -c id\"\n"}]`)),
		Message: "outside the file allowlist",
	},
	{
		Name:    "a systemd unit",
		Edit:    write(pool(`files: [{path: "/etc/systemd/system/x.service", content: "[Service]\nExecStart=/bin/sh\n"}]`)),
		Message: "outside the file allowlist",
	},
	{
		Name:    "a binfmt_misc interpreter",
		Edit:    write(pool(`sysctl: "fs.binfmt_misc.register": ":x:E::x::/bin/sh:"`)),
		Message: "binfmt_misc registers interpreters",
	},
	{
		Name: "a health check whose cost explodes",
		Edit: write("package fleet\n\npools: batch: " + `rollout: healthChecks: cel: "` + func() string {
			expr := "true"
			for _, v := range []string{"a", "b", "c", "d", "e", "f", "g"} {
				expr = "[0,1,2,3,4,5,6,7,8,9].all(" + v + ", " + expr + ")"
			}
			return expr
		}() + "\"\n"),
		Message: "the CEL expression is too costly",
	},
}

// Fleet writes a copy of the example fleet with the case's edit into a
// temporary directory and returns it.
func Fleet(t testing.TB, c Case) string {
	t.Helper()
	dir := t.TempDir()
	fleettest.CopyExample(t, dir)
	c.Edit(t, dir)
	return dir
}
