package sim

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/godbus/dbus/v5"
)

// bus is a private D-Bus system bus for herd-agent processes, with systemd
// and logind played by the simulator: restarts succeed, and a reboot
// request is handed to the node whose agent made it (known by the caller's
// process ID). The agents speak real D-Bus to it, as on a node.
type bus struct {
	addr   string
	daemon *exec.Cmd
	conn   *dbus.Conn

	jobs atomic.Uint32

	mu   sync.Mutex
	pids map[uint32]*simNode
}

// startBus starts dbus-daemon on a socket in dir and serves the stand-ins.
func startBus(dir string) (_ *bus, err error) {
	if _, err := exec.LookPath("dbus-daemon"); err != nil {
		return nil, fmt.Errorf("sim: herd-agent processes need dbus-daemon (apt-get install -y dbus-daemon): %w", err)
	}
	conf := filepath.Join(dir, "bus.conf")
	err = os.WriteFile(conf, []byte(`<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path=`+filepath.Join(dir, "bus")+`</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
`), 0o644)
	if err != nil {
		return nil, fmt.Errorf("sim: bus: %w", err)
	}
	b := &bus{pids: map[uint32]*simNode{}}
	b.daemon = exec.Command("dbus-daemon", "--config-file="+conf, "--nofork", "--nopidfile", "--print-address")
	b.daemon.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := b.daemon.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("sim: bus: %w", err)
	}
	if err := b.daemon.Start(); err != nil {
		return nil, fmt.Errorf("sim: bus: %w", err)
	}
	defer func() {
		if err != nil {
			b.close()
		}
	}()
	addr, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		return nil, fmt.Errorf("sim: dbus-daemon printed no address: %w", err)
	}
	b.addr = strings.TrimSpace(addr)
	if b.conn, err = dbus.Connect(b.addr); err != nil {
		return nil, fmt.Errorf("sim: bus: %w", err)
	}
	for _, s := range []struct {
		name, path, iface string
		obj               any
	}{
		{"org.freedesktop.systemd1", "/org/freedesktop/systemd1", "org.freedesktop.systemd1.Manager", systemdStandIn{b}},
		{"org.freedesktop.login1", "/org/freedesktop/login1", "org.freedesktop.login1.Manager", logindStandIn{b}},
	} {
		if err := b.conn.Export(s.obj, dbus.ObjectPath(s.path), s.iface); err != nil {
			return nil, fmt.Errorf("sim: bus: %w", err)
		}
		reply, err := b.conn.RequestName(s.name, dbus.NameFlagDoNotQueue)
		if err != nil || reply != dbus.RequestNameReplyPrimaryOwner {
			return nil, fmt.Errorf("sim: bus: own %s: %v (reply %v)", s.name, err, reply)
		}
	}
	return b, nil
}

// Env is the environment that points an agent at the bus.
func (b *bus) env() string { return "DBUS_SYSTEM_BUS_ADDRESS=" + b.addr }

// track makes calls from process pid count as node n's.
func (b *bus) track(pid int, n *simNode) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.pids[uint32(pid)] = n
}

func (b *bus) untrack(pid int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.pids, uint32(pid))
}

// caller returns the node whose agent sent a call.
func (b *bus) caller(sender dbus.Sender) (*simNode, *dbus.Error) {
	var pid uint32
	err := b.conn.BusObject().Call("org.freedesktop.DBus.GetConnectionUnixProcessID", 0, string(sender)).Store(&pid)
	if err != nil {
		return nil, dbus.MakeFailedError(err)
	}
	b.mu.Lock()
	n := b.pids[pid]
	b.mu.Unlock()
	if n == nil {
		return nil, dbus.MakeFailedError(fmt.Errorf("process %d is no simulated node's agent", pid))
	}
	return n, nil
}

func (b *bus) close() {
	if b.conn != nil {
		b.conn.Close()
	}
	if b.daemon != nil && b.daemon.Process != nil {
		_ = b.daemon.Process.Kill()
		_ = b.daemon.Wait()
	}
}

// systemdStandIn plays org.freedesktop.systemd1.Manager: RestartUnit
// succeeds, and the job's JobRemoved signal says done, as systemd's does.
type systemdStandIn struct{ b *bus }

func (s systemdStandIn) RestartUnit(sender dbus.Sender, name, _ string) (dbus.ObjectPath, *dbus.Error) {
	if _, err := s.b.caller(sender); err != nil {
		return "", err
	}
	id := s.b.jobs.Add(1)
	job := dbus.ObjectPath(fmt.Sprintf("/org/freedesktop/systemd1/job/%d", id))
	go func() {
		_ = s.b.conn.Emit("/org/freedesktop/systemd1", "org.freedesktop.systemd1.Manager.JobRemoved", id, job, name, "done")
	}()
	return job, nil
}

// logindStandIn plays org.freedesktop.login1.Manager: Reboot hands the
// reboot to the calling agent's node.
type logindStandIn struct{ b *bus }

func (l logindStandIn) Reboot(sender dbus.Sender, _ bool) *dbus.Error {
	n, err := l.b.caller(sender)
	if err != nil {
		return err
	}
	select {
	case n.reboot <- struct{}{}:
	default:
	}
	return nil
}
