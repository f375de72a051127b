package schema

import (
	"errors"
	"strings"
)

// Nothing in Git may make a node run a command. These are the settings that
// would: sysctls that name programs the kernel runs or register
// interpreters, and kernel arguments outside the allowlist of safe
// parameter families (kernelargs.go). herd validate refuses them in Git;
// the agent refuses them again in what it is asked to apply.

var deniedSysctls = map[string]string{
	"kernel.core_pattern": "it can name a program the kernel runs on every crash",
	"kernel.modprobe":     "it names the program the kernel runs to load modules",
	"kernel.hotplug":      "it names a program the kernel runs on device events",
	"kernel.poweroff_cmd": "it names a program the kernel runs to power off",
}

// deniedSysctlPrefixes are families of sysctls refused as a whole.
var deniedSysctlPrefixes = map[string]string{
	"fs.binfmt_misc.": "binfmt_misc registers interpreters the kernel runs for matching files",
}

// DeniedSysctl says why a sysctl key may not be set, if it may not.
func DeniedSysctl(key string) (string, bool) {
	if why, ok := deniedSysctls[key]; ok {
		return why, true
	}
	for prefix, why := range deniedSysctlPrefixes {
		if strings.HasPrefix(key, prefix) {
			return why, true
		}
	}
	return "", false
}

// DeniedKernelArg says why a kernel argument may not be set, if it may not
// (see CheckKernelArg).
func DeniedKernelArg(arg string) (string, bool) {
	err := CheckKernelArg(arg)
	if err == nil {
		return "", false
	}
	var ke *KernelArgError
	if errors.As(err, &ke) {
		return ke.Reason, true
	}
	return err.Error(), true
}
