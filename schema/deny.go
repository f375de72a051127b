package schema

import "strings"

// Nothing in Git may make a node run a command. These are the settings that
// would: sysctls that name programs the kernel runs, and kernel arguments
// that start programs or shells at boot. herd validate refuses them in Git;
// the agent refuses them again in what it is asked to apply.

var deniedSysctls = map[string]string{
	"kernel.core_pattern": "it can name a program the kernel runs on every crash",
	"kernel.modprobe":     "it names the program the kernel runs to load modules",
	"kernel.hotplug":      "it names a program the kernel runs on device events",
	"kernel.poweroff_cmd": "it names a program the kernel runs to power off",
}

var deniedKernelArgs = map[string]bool{
	"init": true, "rdinit": true,
	"systemd.run": true, "systemd.run_success_action": true, "systemd.run_failure_action": true,
	"systemd.unit": true, "rd.systemd.unit": true, "systemd.wants": true, "rd.systemd.wants": true,
	"systemd.debug_shell": true, "rd.shell": true, "rd.break": true, "systemd.setenv": true,
	"ostree": true, // OSTree's own: it names the deployment to boot
}

// DeniedSysctl says why a sysctl key may not be set, if it may not.
func DeniedSysctl(key string) (string, bool) {
	why, ok := deniedSysctls[key]
	return why, ok
}

// DeniedKernelArg says why a kernel argument may not be set, if it may not.
func DeniedKernelArg(arg string) (string, bool) {
	key, _, _ := strings.Cut(arg, "=")
	if !deniedKernelArgs[key] {
		return "", false
	}
	if key == "ostree" {
		return "it is managed by OSTree", true
	}
	return "it can make the node run a program at boot", true
}
