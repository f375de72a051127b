// Package hostbus is a private D-Bus system bus on which systemd and
// logind are played, for herd-agent processes of simulated nodes.
//
// Agents speak real D-Bus to it, as on a node (DBUS_SYSTEM_BUS_ADDRESS
// points them at it): unit restarts, units' invocation IDs and reboot
// requests are handed to the simulated machine whose agent made them, known
// by the caller's process ID. Nothing reaches the host's own systemd or
// logind.
package hostbus

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"

	sddbus "github.com/coreos/go-systemd/v22/dbus"
	"github.com/godbus/dbus/v5"
)

// Units are the systemd units whose invocation IDs the bus tells
// (org.freedesktop.systemd1.Unit's InvocationID): those repairs restart.
var Units = []string{"kubelet.service", "containerd.service"}

// Machine is the simulated machine of a tracked agent process: what its
// calls reach.
type Machine struct {
	// Reboot is called when the agent asks logind for a reboot.
	Reboot func()
	// Restart restarts one of its units; nil: restarts succeed and do
	// nothing.
	Restart func(ctx context.Context, unit string) error
	// InvocationID tells one run of a unit from the next; nil: units
	// have none (empty).
	InvocationID func(ctx context.Context, unit string) (string, error)
}

// Bus is the bus and its stand-ins. Safe for concurrent use.
type Bus struct {
	addr   string
	daemon *exec.Cmd
	conn   *dbus.Conn

	jobs atomic.Uint32

	mu   sync.Mutex
	pids map[uint32]Machine // each tracked process's machine
}

// Start starts dbus-daemon on a socket in dir and serves the stand-ins.
func Start(dir string) (_ *Bus, err error) {
	if _, err := exec.LookPath("dbus-daemon"); err != nil {
		return nil, fmt.Errorf("host bus: herd-agent processes need dbus-daemon (apt-get install -y dbus-daemon): %w", err)
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
		return nil, fmt.Errorf("host bus: %w", err)
	}
	b := &Bus{pids: map[uint32]Machine{}}
	b.daemon = exec.Command("dbus-daemon", "--config-file="+conf, "--nofork", "--nopidfile", "--print-address")
	b.daemon.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := b.daemon.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("host bus: %w", err)
	}
	if err := b.daemon.Start(); err != nil {
		return nil, fmt.Errorf("host bus: %w", err)
	}
	defer func() {
		if err != nil {
			b.Close()
		}
	}()
	addr, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		return nil, fmt.Errorf("host bus: dbus-daemon printed no address: %w", err)
	}
	b.addr = strings.TrimSpace(addr)
	if b.conn, err = dbus.Connect(b.addr); err != nil {
		return nil, fmt.Errorf("host bus: %w", err)
	}
	for _, s := range []struct {
		name, path, iface string
		obj               any
	}{
		{"org.freedesktop.systemd1", "/org/freedesktop/systemd1", "org.freedesktop.systemd1.Manager", systemdStandIn{b}},
		{"org.freedesktop.login1", "/org/freedesktop/login1", "org.freedesktop.login1.Manager", logindStandIn{b}},
	} {
		if err := b.conn.Export(s.obj, dbus.ObjectPath(s.path), s.iface); err != nil {
			return nil, fmt.Errorf("host bus: %w", err)
		}
		reply, err := b.conn.RequestName(s.name, dbus.NameFlagDoNotQueue)
		if err != nil || reply != dbus.RequestNameReplyPrimaryOwner {
			return nil, fmt.Errorf("host bus: own %s: %v (reply %v)", s.name, err, reply)
		}
	}
	for _, u := range Units {
		path := dbus.ObjectPath("/org/freedesktop/systemd1/unit/" + sddbus.PathBusEscape(u))
		if err := b.conn.Export(unitStandIn{b: b, unit: u}, path, "org.freedesktop.DBus.Properties"); err != nil {
			return nil, fmt.Errorf("host bus: %w", err)
		}
	}
	return b, nil
}

// Env is the environment variable that points an agent at the bus.
func (b *Bus) Env() string { return "DBUS_SYSTEM_BUS_ADDRESS=" + b.addr }

// Track accepts calls from process pid, an agent of machine m. Calls from
// processes not tracked fail.
func (b *Bus) Track(pid int, m Machine) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.pids[uint32(pid)] = m
}

// Untrack forgets process pid.
func (b *Bus) Untrack(pid int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.pids, uint32(pid))
}

// caller returns the machine whose agent sent a call.
func (b *Bus) caller(sender dbus.Sender) (Machine, *dbus.Error) {
	var pid uint32
	err := b.conn.BusObject().Call("org.freedesktop.DBus.GetConnectionUnixProcessID", 0, string(sender)).Store(&pid)
	if err != nil {
		return Machine{}, dbus.MakeFailedError(err)
	}
	b.mu.Lock()
	m, ok := b.pids[pid]
	b.mu.Unlock()
	if !ok {
		return Machine{}, dbus.MakeFailedError(fmt.Errorf("process %d is no simulated machine's agent", pid))
	}
	return m, nil
}

// Close stops the bus.
func (b *Bus) Close() {
	if b.conn != nil {
		b.conn.Close()
	}
	if b.daemon != nil && b.daemon.Process != nil {
		_ = b.daemon.Process.Kill()
		_ = b.daemon.Wait()
	}
}

// systemdStandIn plays org.freedesktop.systemd1.Manager: RestartUnit
// restarts the unit on the caller's machine, and the job's JobRemoved
// signal says done (or failed), as systemd's does.
type systemdStandIn struct{ b *Bus }

func (s systemdStandIn) RestartUnit(sender dbus.Sender, name, _ string) (dbus.ObjectPath, *dbus.Error) {
	m, err := s.b.caller(sender)
	if err != nil {
		return "", err
	}
	id := s.b.jobs.Add(1)
	job := dbus.ObjectPath(fmt.Sprintf("/org/freedesktop/systemd1/job/%d", id))
	go func() {
		result := "done"
		if m.Restart != nil {
			if err := m.Restart(context.Background(), name); err != nil {
				result = "failed"
			}
		}
		_ = s.b.conn.Emit("/org/freedesktop/systemd1", "org.freedesktop.systemd1.Manager.JobRemoved", id, job, name, result)
	}()
	return job, nil
}

// unitStandIn plays a unit's org.freedesktop.DBus.Properties: Get of
// org.freedesktop.systemd1.Unit's InvocationID, from the caller's machine.
type unitStandIn struct {
	b    *Bus
	unit string
}

func (u unitStandIn) Get(sender dbus.Sender, iface, prop string) (dbus.Variant, *dbus.Error) {
	m, derr := u.b.caller(sender)
	if derr != nil {
		return dbus.Variant{}, derr
	}
	if iface != "org.freedesktop.systemd1.Unit" || prop != "InvocationID" {
		return dbus.Variant{}, dbus.MakeFailedError(fmt.Errorf("no property %s.%s of %s here", iface, prop, u.unit))
	}
	id := ""
	if m.InvocationID != nil {
		var err error
		if id, err = m.InvocationID(context.Background(), u.unit); err != nil {
			return dbus.Variant{}, dbus.MakeFailedError(err)
		}
	}
	return dbus.MakeVariant([]byte(id)), nil
}

// logindStandIn plays org.freedesktop.login1.Manager: Reboot hands the
// reboot to the calling agent's machine.
type logindStandIn struct{ b *Bus }

func (l logindStandIn) Reboot(sender dbus.Sender, _ bool) *dbus.Error {
	m, err := l.b.caller(sender)
	if err != nil {
		return err
	}
	m.Reboot()
	return nil
}
