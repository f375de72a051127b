package systemd_test

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"

	"herd.dev/herd/node/systemd"
)

// These tests speak D-Bus to a real dbus-daemon, started on a private
// socket and named as the system bus; systemd's and logind's side is played
// by small fakes exporting the methods and signals the agent uses. (No
// systemd runs in the test container.)

// startBus starts a private dbus-daemon and points DBUS_SYSTEM_BUS_ADDRESS at it.
func startBus(t *testing.T) string {
	t.Helper()
	if _, err := exec.LookPath("dbus-daemon"); err != nil {
		t.Fatal("these tests need dbus-daemon; install with: apt-get install -y dbus-daemon")
	}
	dir := t.TempDir()
	conf := filepath.Join(dir, "bus.conf")
	err := os.WriteFile(conf, []byte(`<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
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
		t.Fatal(err)
	}
	cmd := exec.Command("dbus-daemon", "--config-file="+conf, "--nofork", "--nopidfile", "--print-address")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	addr, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("dbus-daemon printed no address: %v", err)
	}
	addr = strings.TrimSpace(addr)
	t.Setenv("DBUS_SYSTEM_BUS_ADDRESS", addr)
	return addr
}

// fakeSystemd exports org.freedesktop.systemd1.Manager.RestartUnit and
// signals JobRemoved with result for each job, as systemd does; and each
// unit's InvocationID property, new at every restart that succeeds.
type fakeSystemd struct {
	conn   *dbus.Conn
	result string

	mu       sync.Mutex
	restarts []string
	runs     map[string]byte // restarts that succeeded, by unit
}

func (f *fakeSystemd) RestartUnit(name, mode string) (dbus.ObjectPath, *dbus.Error) {
	f.mu.Lock()
	f.restarts = append(f.restarts, name+" "+mode)
	id := uint32(len(f.restarts))
	if f.result == "done" {
		if f.runs == nil {
			f.runs = map[string]byte{}
		}
		f.runs[name]++
	}
	f.mu.Unlock()
	job := dbus.ObjectPath(fmt.Sprintf("/org/freedesktop/systemd1/job/%d", id))
	go func() {
		_ = f.conn.Emit("/org/freedesktop/systemd1", "org.freedesktop.systemd1.Manager.JobRemoved", id, job, name, f.result)
	}()
	return job, nil
}

// unitProps serves org.freedesktop.DBus.Properties.Get of a unit's object.
type unitProps struct {
	f    *fakeSystemd
	unit string
}

func (p unitProps) Get(iface, prop string) (dbus.Variant, *dbus.Error) {
	if iface != "org.freedesktop.systemd1.Unit" || prop != "InvocationID" {
		return dbus.Variant{}, dbus.NewError("org.freedesktop.DBus.Error.UnknownProperty", []any{prop})
	}
	p.f.mu.Lock()
	defer p.f.mu.Unlock()
	id := make([]byte, 16)
	id[15] = p.f.runs[p.unit]
	if id[15] == 0 {
		id = []byte{} // never ran
	}
	return dbus.MakeVariant(id), nil
}

// fakeLogind exports org.freedesktop.login1.Manager.Reboot.
type fakeLogind struct {
	refuse  bool
	mu      sync.Mutex
	reboots []bool
}

func (f *fakeLogind) Reboot(interactive bool) *dbus.Error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.refuse {
		return dbus.NewError("org.freedesktop.login1.OperationInProgress", []any{"The operation inhibition has been requested for is already running"})
	}
	f.reboots = append(f.reboots, interactive)
	return nil
}

func serve(t *testing.T, addr, name string, path dbus.ObjectPath, iface string, obj any) *dbus.Conn {
	t.Helper()
	conn, err := dbus.Connect(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	if err := conn.Export(obj, path, iface); err != nil {
		t.Fatal(err)
	}
	reply, err := conn.RequestName(name, dbus.NameFlagDoNotQueue)
	if err != nil || reply != dbus.RequestNameReplyPrimaryOwner {
		t.Fatalf("request name %s: %v, %v", name, reply, err)
	}
	return conn
}

func TestRestart(t *testing.T) {
	addr := startBus(t)
	fake := &fakeSystemd{result: "done"}
	fake.conn = serve(t, addr, "org.freedesktop.systemd1", "/org/freedesktop/systemd1", "org.freedesktop.systemd1.Manager", fake)

	u := &systemd.Units{}
	defer u.Close()
	ctx := t.Context()
	for _, unit := range []string{"kubelet.service", "containerd.service"} {
		start := time.Now()
		if err := u.Restart(ctx, unit); err != nil {
			t.Fatalf("Restart(%s): %v", unit, err)
		}
		t.Logf("restart %s over D-Bus: %v", unit, time.Since(start))
	}
	fake.mu.Lock()
	got := strings.Join(fake.restarts, ", ")
	fake.mu.Unlock()
	if got != "kubelet.service replace, containerd.service replace" {
		t.Errorf("systemd saw %q", got)
	}

	fake.result = "failed"
	err := u.Restart(ctx, "kubelet.service")
	if err == nil || !strings.Contains(err.Error(), `"failed"`) {
		t.Errorf("Restart of a failing unit = %v, want the job result", err)
	}
}

// A restart changes the unit's invocation ID, which tells the agent that a
// restart it asked for happened; a failed one does not.
func TestInvocationID(t *testing.T) {
	addr := startBus(t)
	fake := &fakeSystemd{result: "done"}
	fake.conn = serve(t, addr, "org.freedesktop.systemd1", "/org/freedesktop/systemd1", "org.freedesktop.systemd1.Manager", fake)
	if err := fake.conn.Export(unitProps{fake, "kubelet.service"}, "/org/freedesktop/systemd1/unit/kubelet_2eservice", "org.freedesktop.DBus.Properties"); err != nil {
		t.Fatal(err)
	}
	u := &systemd.Units{}
	defer u.Close()
	ctx := t.Context()
	before, err := u.InvocationID(ctx, "kubelet.service")
	if err != nil || before != "" {
		t.Fatalf("InvocationID of a unit that never ran = %q, %v", before, err)
	}
	if err := u.Restart(ctx, "kubelet.service"); err != nil {
		t.Fatal(err)
	}
	first, err := u.InvocationID(ctx, "kubelet.service")
	if err != nil || first == before || len(first) != 32 {
		t.Fatalf("InvocationID after a restart = %q, %v (before %q)", first, err, before)
	}
	fake.result = "failed"
	_ = u.Restart(ctx, "kubelet.service")
	if again, err := u.InvocationID(ctx, "kubelet.service"); err != nil || again != first {
		t.Errorf("InvocationID after a failed restart = %q, %v; want %q", again, err, first)
	}
	if _, err := u.InvocationID(ctx, "containerd.service"); err == nil {
		t.Error("InvocationID of a unit systemd does not answer for: no error")
	}
}

func TestRestartWithoutSystemd(t *testing.T) {
	startBus(t) // a bus, but nobody owns org.freedesktop.systemd1
	u := &systemd.Units{}
	defer u.Close()
	err := u.Restart(t.Context(), "kubelet.service")
	if err == nil || !strings.Contains(err.Error(), "restart kubelet.service") {
		t.Errorf("Restart without systemd = %v", err)
	}
}

func TestReboot(t *testing.T) {
	addr := startBus(t)
	fake := &fakeLogind{}
	serve(t, addr, "org.freedesktop.login1", "/org/freedesktop/login1", "org.freedesktop.login1.Manager", fake)
	if err := (systemd.Logind{}).Reboot(t.Context()); err != nil {
		t.Fatal(err)
	}
	fake.mu.Lock()
	if len(fake.reboots) != 1 || fake.reboots[0] {
		t.Errorf("logind saw reboots %v, want one, not interactive", fake.reboots)
	}
	fake.refuse = true
	fake.mu.Unlock()
	err := (systemd.Logind{}).Reboot(t.Context())
	if err == nil || !strings.Contains(err.Error(), "OperationInProgress") {
		t.Errorf("refused Reboot = %v", err)
	}
	t.Setenv("DBUS_SYSTEM_BUS_ADDRESS", "unix:path="+filepath.Join(t.TempDir(), "none"))
	if err := (systemd.Logind{}).Reboot(t.Context()); err == nil {
		t.Errorf("Reboot without a bus = %v", err)
	}
}
