package apply

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// nsKind is the kind of namespace a sysctl lives in.
type nsKind int

const (
	nsNone nsKind = iota // global: one value for the whole kernel
	nsNet                // net.*
	nsIPC                // System V IPC and POSIX message queues
	nsUTS                // host and domain name
	nsUser               // user.*
)

func (k nsKind) file() string { return [...]string{"", "net", "ipc", "uts", "user"}[k] }

func (k nsKind) flag() int {
	return [...]int{0, unix.CLONE_NEWNET, unix.CLONE_NEWIPC, unix.CLONE_NEWUTS, unix.CLONE_NEWUSER}[k]
}

// ipcSysctls are the kernel.* sysctls of the IPC namespace.
var ipcSysctls = map[string]bool{
	"kernel.shmmax": true, "kernel.shmall": true, "kernel.shmmni": true, "kernel.shm_rmid_forced": true, "kernel.shm_next_id": true,
	"kernel.msgmax": true, "kernel.msgmnb": true, "kernel.msgmni": true, "kernel.msg_next_id": true,
	"kernel.sem": true, "kernel.sem_next_id": true,
}

// namespaceOf says which namespace holds the sysctl key.
func namespaceOf(key string) nsKind {
	switch {
	case strings.HasPrefix(key, "net."):
		return nsNet
	case ipcSysctls[key] || strings.HasPrefix(key, "fs.mqueue."):
		return nsIPC
	case key == "kernel.hostname" || key == "kernel.domainname":
		return nsUTS
	case strings.HasPrefix(key, "user."):
		return nsUser
	}
	return nsNone
}

// hostNamespaces is the directory of the host's namespaces: PID 1's, seen
// through the host's /proc under root. Tests point it elsewhere.
var hostNamespaces = func(root string) string { return filepath.Join(root, "proc", "1", "ns") }

// inHostNamespace runs fn in the host's namespace of kind (hostPath): at
// once when the agent shares it (hostNetwork, hostIPC), else on an OS
// thread that enters it with setns for the call. A root without
// proc/1/ns (not a host's root: tests, simulated nodes) has no host
// namespace to reach, and fn runs where the agent is.
func inHostNamespace(kind nsKind, hostPath string, fn func() error) error {
	if kind == nsNone {
		return fn()
	}
	host, err := nsID(hostPath)
	if errors.Is(err, os.ErrNotExist) {
		return fn()
	}
	if err != nil {
		return fmt.Errorf("sysctls: the host's %s namespace: %w", kind.file(), err)
	}
	self, err := nsID("/proc/thread-self/ns/" + kind.file())
	if err != nil {
		return fmt.Errorf("sysctls: the agent's %s namespace: %w", kind.file(), err)
	}
	if host == self {
		return fn()
	}
	if kind == nsUser {
		return errors.New("sysctls: user.* sysctls live in the user namespace, and the agent is not in the host's (a process with threads cannot enter another): run the agent in the host's user namespace")
	}
	return onThreadIn(kind, hostPath, fn)
}

// onThreadIn runs fn on a locked OS thread inside the namespace at path.
// The thread goes back to the agent's namespace afterwards; if it cannot,
// it stays locked and ends with its goroutine, so no other goroutine ever
// runs in the host's namespace by accident.
func onThreadIn(kind nsKind, path string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := unix.Open("/proc/thread-self/ns/"+kind.file(), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("sysctls: open the agent's %s namespace: %w", kind.file(), err)
			return
		}
		defer unix.Close(orig)
		target, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("sysctls: open the host's %s namespace: %w", kind.file(), err)
			return
		}
		defer unix.Close(target)
		if err := unix.Setns(target, kind.flag()); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("sysctls: enter the host's %s namespace %s: %w (run the agent with hostNetwork and hostIPC, as config/agent does)", kind.file(), path, err)
			return
		}
		ferr := fn()
		if err := unix.Setns(orig, kind.flag()); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("sysctls: return to the agent's %s namespace: %w", kind.file(), err))
			return // the thread stays locked and exits with this goroutine
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// nsID identifies a namespace by the device and inode of its nsfs file.
func nsID(path string) ([2]uint64, error) {
	st, err := os.Stat(path)
	if err != nil {
		return [2]uint64{}, err
	}
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return [2]uint64{}, fmt.Errorf("stat %s: no inode", path)
	}
	return [2]uint64{sys.Dev, sys.Ino}, nil
}
