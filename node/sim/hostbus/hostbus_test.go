package hostbus_test

import (
	"os"
	"strings"
	"sync/atomic"
	"testing"

	"herd.dev/herd/node/sim/hostbus"
	"herd.dev/herd/node/systemd"
)

// The agent's own D-Bus clients (node/systemd) restart units and reboot
// through the bus; a reboot reaches the machine of the calling process,
// and a process the bus does not track is refused.
func TestRestartAndReboot(t *testing.T) {
	b, err := hostbus.Start(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	addr, _ := strings.CutPrefix(b.Env(), "DBUS_SYSTEM_BUS_ADDRESS=")
	t.Setenv("DBUS_SYSTEM_BUS_ADDRESS", addr)

	var reboots atomic.Int32
	b.Track(os.Getpid(), func() { reboots.Add(1) })
	units := &systemd.Units{}
	defer units.Close()
	for _, unit := range []string{"kubelet.service", "containerd.service"} {
		if err := units.Restart(t.Context(), unit); err != nil {
			t.Errorf("restart %s: %v", unit, err)
		}
	}
	if err := (systemd.Logind{}).Reboot(t.Context()); err != nil {
		t.Fatal(err)
	}
	if got := reboots.Load(); got != 1 {
		t.Errorf("%d reboots reached the machine, want 1", got)
	}

	b.Untrack(os.Getpid())
	if err := (systemd.Logind{}).Reboot(t.Context()); err == nil || !strings.Contains(err.Error(), "no simulated machine's agent") {
		t.Errorf("a reboot from an untracked process: %v", err)
	}
	if got := reboots.Load(); got != 1 {
		t.Errorf("%d reboots reached the machine, want still 1", got)
	}
}
