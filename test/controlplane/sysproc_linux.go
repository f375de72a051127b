package controlplane

import (
	"os/exec"
	"syscall"
)

// setSysProcAttr makes the child die with SIGKILL when the process that
// started it dies (even by SIGKILL), and puts it in its own process group so
// a terminal's Ctrl-C reaches only this process, which stops the children in
// order.
//
// Pdeathsig fires when the starting OS thread exits; Go only retires threads
// whose goroutine exits while locked to them, which this package never does.
func setSysProcAttr(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Pdeathsig: syscall.SIGKILL,
		Setpgid:   true,
	}
}
