package schema

import (
	"fmt"
	"slices"
	"strings"
)

// KernelArg is one parameter of a kernel command line, as the kernel reads
// it: Param is the name with the kernel's quote stripping applied, Value
// what follows the first "=" (HasValue tells "quiet" from "quiet=").
type KernelArg struct {
	Param    string
	Value    string
	HasValue bool
}

// ParseCmdline splits a kernel command line exactly as the kernel does
// (next_arg and parse_args in the kernel's lib/cmdline.c and
// kernel/params.c): blanks separate parameters except inside double quotes;
// a leading quote and its closing quote are dropped from the parameter, a
// quote opening the value and its closing quote from the value; "--" ends
// the kernel's parameters and everything after it (initArgs) is handed to
// init as its arguments.
func ParseCmdline(cmdline string) (args []KernelArg, initArgs string, hasInit bool) {
	rest := skipBlanks(cmdline)
	for rest != "" {
		var a KernelArg
		a, rest = nextArg(rest)
		if !a.HasValue && a.Param == "--" {
			return args, rest, true
		}
		args = append(args, a)
	}
	return args, "", false
}

// nextArg is the kernel's next_arg: it returns the first parameter of s
// and what follows it, leading blanks skipped.
func nextArg(s string) (KernelArg, string) {
	quoted, inQuote := false, false
	if s[0] == '"' {
		s = s[1:]
		inQuote, quoted = true, true
	}
	equals := 0 // as in the kernel, 0 is "none": a leading "=" does not count
	i := 0
	for ; i < len(s); i++ {
		if isBlank(s[i]) && !inQuote {
			break
		}
		if equals == 0 && s[i] == '=' {
			equals = i
		}
		if s[i] == '"' {
			inQuote = !inQuote
		}
	}
	rest := ""
	if i < len(s) {
		rest = skipBlanks(s[i+1:])
	}
	// The kernel cuts the word by writing NULs into it; the same cuts here.
	end := i
	valStart := equals + 1
	if equals != 0 && valStart < i && s[valStart] == '"' {
		valStart++ // don't include quotes in the value
		if s[i-1] == '"' {
			end = i - 1
		}
	}
	if quoted && i > 0 && s[i-1] == '"' {
		end = i - 1
	}
	if equals == 0 {
		return KernelArg{Param: s[:end]}, rest
	}
	value := ""
	if valStart < end {
		value = s[valStart:end]
	}
	return KernelArg{Param: s[:equals], Value: value, HasValue: true}, rest
}

func isBlank(c byte) bool {
	// The kernel's isspace: space, \t, \n, \v, \f, \r.
	return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r'
}

func skipBlanks(s string) string {
	for s != "" && isBlank(s[0]) {
		s = s[1:]
	}
	return s
}

// kernelParamName normalizes a parameter name as the kernel and systemd
// compare them: "-" and "_" are the same character.
func kernelParamName(p string) string { return strings.ReplaceAll(p, "-", "_") }

// safeKernelParams are the kernel parameters a pool may set, by family. None
// of them names a program, a shell, an init, the root file system or a
// security module: they tune the kernel (CPUs, memory, IOMMU, speculative
// execution mitigations, cgroups, consoles, logging).
var safeKernelParams = map[string][]string{
	"console and logging":               {"console", "earlycon", "quiet", "loglevel", "ignore_loglevel", "printk.time", "printk.devkmsg", "log_buf_len", "panic", "panic_on_warn", "oops", "nmi_watchdog", "nowatchdog", "nosoftlockup", "softlockup_panic", "hung_task_panic", "crashkernel", "net.ifnames", "biosdevname"},
	"CPU isolation and power":           {"isolcpus", "nohz", "nohz_full", "rcu_nocbs", "rcu_nocb_poll", "irqaffinity", "skew_tick", "nosmt", "maxcpus", "nr_cpus", "idle", "intel_idle.max_cstate", "processor.max_cstate", "intel_pstate", "amd_pstate", "cpufreq.default_governor", "tsc", "clocksource"},
	"memory":                            {"transparent_hugepage", "hugepages", "hugepagesz", "default_hugepagesz", "hugetlb_cma", "numa_balancing", "numa", "init_on_alloc", "init_on_free", "page_alloc.shuffle"},
	"IOMMU and PCI":                     {"intel_iommu", "amd_iommu", "iommu", "iommu.passthrough", "iommu.strict", "pci", "pcie_aspm", "pcie_ports"},
	"speculative execution mitigations": {"mitigations", "nospectre_v1", "nospectre_v2", "spectre_v2", "spectre_v2_user", "spec_store_bypass_disable", "l1tf", "mds", "tsx", "tsx_async_abort", "mmio_stale_data", "retbleed", "srbds", "pti", "nopti", "gather_data_sampling", "spec_rstack_overflow"},
	"cgroups and accounting":            {"cgroup_enable", "cgroup_disable", "cgroup_no_v1", "psi", "delayacct", "audit", "audit_backlog_limit", "systemd.unified_cgroup_hierarchy", "systemd.legacy_systemd_cgroup_controller"},
	"storage and network":               {"nvme_core.io_timeout", "nvme_core.multipath", "ipv6.disable", "random.trust_cpu", "random.trust_bootloader"},
}

// safeKernelParamPrefixes are families named by a prefix: herd.* is Herd's
// own informational namespace, which the kernel ignores (an unknown
// parameter with a dot names a module parameter) and init never sees.
var safeKernelParamPrefixes = []string{"herd."}

// kernelParamFamily maps each safe parameter to its family.
var kernelParamFamily = func() map[string]string {
	m := map[string]string{}
	for fam, params := range safeKernelParams {
		for _, p := range params {
			m[p] = fam
		}
	}
	return m
}()

// dangerousKernelParams say why well-known parameters are refused; any
// other parameter outside the allowlist is refused too, with a generic
// reason.
var dangerousKernelParams = map[string]string{
	"init":               "it names the program the kernel starts as PID 1",
	"rdinit":             "it names the program the kernel starts from the initramfs",
	"root":               "it is the OS's own: the deployment keeps it",
	"rootflags":          "it is the OS's own: the deployment keeps it",
	"rootfstype":         "it is the OS's own: the deployment keeps it",
	"ostree":             "it is managed by OSTree: it names the deployment to boot",
	"selinux":            "it turns a security module off",
	"enforcing":          "it turns a security module off",
	"apparmor":           "it turns a security module off",
	"security":           "it picks the security modules",
	"lsm":                "it picks the security modules",
	"lockdown":           "it weakens kernel lockdown",
	"module.sig_enforce": "it weakens module signature checks",
	"single":             "init reads it as a request for a rescue shell",
	"emergency":          "init reads it as a request for an emergency shell",
	"rescue":             "init reads it as a request for a rescue shell",
}

// KernelArgError says why a pool's kernel argument is refused.
type KernelArgError struct {
	Arg    string
	Reason string
}

func (e *KernelArgError) Error() string {
	return fmt.Sprintf("kernel argument %q is not allowed: %s", e.Arg, e.Reason)
}

// CheckKernelArg checks one kernel argument of a pool: it must be exactly
// one kernel parameter, written plainly (double quotes only around a whole
// value, no backslashes or control characters, so the kernel, the boot
// loader, OSTree and systemd all split it the same way), whose name is in
// the allowlist of safe parameter families.
func CheckKernelArg(arg string) error {
	refuse := func(format string, a ...any) error {
		return &KernelArgError{Arg: arg, Reason: fmt.Sprintf(format, a...)}
	}
	if arg == "" {
		return refuse("it is empty")
	}
	for _, c := range []byte(arg) {
		if c < 0x20 || c == 0x7f || c == '\\' {
			return refuse("it holds a control character or a backslash")
		}
	}
	args, initArgs, hasInit := ParseCmdline(arg)
	if hasInit {
		_ = initArgs
		return refuse(`"--" ends the kernel's parameters: everything after it goes to init as its arguments`)
	}
	if len(args) != 1 {
		return refuse("the kernel reads it as %d parameters: one entry is one parameter, quote blanks inside a value", len(args))
	}
	a := args[0]
	if err := checkQuotes(arg, a); err != "" {
		return refuse("%s", err)
	}
	if why, ok := dangerousKernelParams[kernelParamName(a.Param)]; ok {
		return refuse("%s", why)
	}
	if !SafeKernelParam(a.Param) {
		return refuse("%s is not in the allowlist of safe kernel parameters (console and logging, CPU isolation, memory, IOMMU, mitigations, cgroups; docs/schema.md lists them)", a.Param)
	}
	return nil
}

// checkQuotes allows a double quote only as param="value", around the
// whole value, with none inside it.
func checkQuotes(raw string, a KernelArg) string {
	if !strings.Contains(raw, `"`) {
		if strings.ContainsAny(raw, " \t") {
			return "a blank outside quotes splits it"
		}
		return ""
	}
	want := a.Param + `="` + a.Value + `"`
	if a.HasValue && raw == want && !strings.Contains(a.Value, `"`) && !strings.Contains(a.Param, `"`) {
		return ""
	}
	return `double quotes may only enclose a whole value (param="value")`
}

// SafeKernelParam reports whether a pool may set the kernel parameter
// param (a name as ParseCmdline returns it).
func SafeKernelParam(param string) bool {
	p := kernelParamName(param)
	if _, ok := kernelParamFamily[p]; ok {
		return true
	}
	for _, prefix := range safeKernelParamPrefixes {
		if rest, ok := strings.CutPrefix(p, prefix); ok && rest != "" {
			return true
		}
	}
	return false
}

// PoolKernelArg reports whether a kernel argument found on a deployment is
// one a pool sets (a safe parameter), as opposed to one the OS owns (root=,
// rw, rootflags=, ...), which a deploy keeps.
func PoolKernelArg(arg string) bool {
	args, _, hasInit := ParseCmdline(arg)
	return !hasInit && len(args) == 1 && SafeKernelParam(args[0].Param)
}

// SafeKernelParamFamilies lists the allowlist by family, for documentation
// and messages.
func SafeKernelParamFamilies() map[string][]string {
	out := map[string][]string{}
	for fam, params := range safeKernelParams {
		out[fam] = slices.Sorted(slices.Values(params))
	}
	return out
}
