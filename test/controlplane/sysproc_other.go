//go:build !linux

package controlplane

import "os/exec"

// setSysProcAttr does nothing here: only Linux has Pdeathsig, so children
// outlive a parent that dies without calling Stop.
func setSysProcAttr(cmd *exec.Cmd) {}
