package schema

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestParseCmdline(t *testing.T) {
	for _, tc := range []struct {
		cmdline  string
		want     []KernelArg
		initArgs string
	}{
		{`quiet`, []KernelArg{{Param: "quiet"}}, ""},
		{`  console=ttyS0,115200  quiet `, []KernelArg{{Param: "console", Value: "ttyS0,115200", HasValue: true}, {Param: "quiet"}}, ""},
		// A quoted parameter: the kernel strips both quotes, so this is init=.
		{`"init=/bin/sh"`, []KernelArg{{Param: "init", Value: "/bin/sh", HasValue: true}}, ""},
		{`dyndbg="file x.c +p" ro`, []KernelArg{{Param: "dyndbg", Value: "file x.c +p", HasValue: true}, {Param: "ro"}}, ""},
		{`a=`, []KernelArg{{Param: "a", HasValue: true}}, ""},
		{`a="`, []KernelArg{{Param: "a", HasValue: true}}, ""},
		// Quotes in the middle keep blanks inside one parameter.
		{`console=x"y init=/bin/sh"`, []KernelArg{{Param: "console", Value: `x"y init=/bin/sh"`, HasValue: true}}, ""},
		// A leading "=" does not count as the separator.
		{`=a=b`, []KernelArg{{Param: "=a", Value: "b", HasValue: true}}, ""},
		{`quiet -- single x=1`, []KernelArg{{Param: "quiet"}}, "single x=1"},
	} {
		got, initArgs, _ := ParseCmdline(tc.cmdline)
		if diff := cmp.Diff(tc.want, got); diff != "" || initArgs != tc.initArgs {
			t.Errorf("ParseCmdline(%q): init args %q, want %q; (-want +got):\n%s", tc.cmdline, initArgs, tc.initArgs, diff)
		}
	}
}

func TestCheckKernelArg(t *testing.T) {
	for _, ok := range []string{
		"quiet", "console=ttyS0,115200n8", "systemd.unified_cgroup_hierarchy=1", "systemd.unified-cgroup-hierarchy=1",
		"mitigations=off", "hugepages=64", "isolcpus=2-3", `herd.note="a b"`, "herd.test=1", "intel_iommu=on",
	} {
		if err := CheckKernelArg(ok); err != nil {
			t.Errorf("CheckKernelArg(%q) = %v, want nil", ok, err)
		}
	}
	for arg, want := range map[string]string{
		"init=/bin/sh":                "PID 1",
		`"init=/bin/sh"`:              "double quotes",
		"rd.systemd.debug_shell":      "not in the allowlist",
		"rd.systemd.debug-shell=1":    "not in the allowlist",
		"systemd.debug_shell":         "not in the allowlist",
		"systemd.run=/usr/bin/curl":   "not in the allowlist",
		"systemd.unit=rescue.target":  "not in the allowlist",
		"rd.break":                    "not in the allowlist",
		"--":                          `"--"`,
		"emergency":                   "emergency shell",
		"root=/dev/sda1":              "OS's own",
		"ostree=/ostree/boot.1/x/y/0": "OSTree",
		`quiet"`:                      "double quotes",
		`console="a" init=/bin/sh`:    "2 parameters",
		`console=a\"b`:                "backslash",
		"console=a\tb":                "control character",
		"":                            "empty",
		`herd.x="a systemd.run=/x"y`:  "double quotes",
		"selinux=0":                   "security module",
		"FOO=bar":                     "not in the allowlist",
	} {
		err := CheckKernelArg(arg)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("CheckKernelArg(%q) = %v, want an error with %q", arg, err, want)
		}
	}
}

func TestPoolKernelArg(t *testing.T) {
	for arg, want := range map[string]bool{
		"root=UUID=1234": false, "rw": false, "rootflags=subvol=root": false, "console=ttyS0": true, "herd.x=1": true, "quiet": true,
	} {
		if got := PoolKernelArg(arg); got != want {
			t.Errorf("PoolKernelArg(%q) = %v, want %v", arg, got, want)
		}
	}
}
