package hostbus_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"herd.dev/herd/node/sim/hostbus"
	"herd.dev/herd/node/systemd"
)

// The agent's own D-Bus clients (node/systemd) restart units, read their
// invocation IDs and reboot through the bus; each reaches the machine of
// the calling process, a failed restart fails the job, and a process the
// bus does not track is refused.
func TestRestartAndReboot(t *testing.T) {
	b, err := hostbus.Start(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	addr, _ := strings.CutPrefix(b.Env(), "DBUS_SYSTEM_BUS_ADDRESS=")
	t.Setenv("DBUS_SYSTEM_BUS_ADDRESS", addr)

	var reboots atomic.Int32
	var mu sync.Mutex
	starts := map[string]int{}
	b.Track(os.Getpid(), hostbus.Machine{
		Reboot: func() { reboots.Add(1) },
		Restart: func(_ context.Context, unit string) error {
			if unit == "broken.service" {
				return errors.New("broken")
			}
			mu.Lock()
			defer mu.Unlock()
			starts[unit]++
			return nil
		},
		InvocationID: func(_ context.Context, unit string) (string, error) {
			mu.Lock()
			defer mu.Unlock()
			return fmt.Sprintf("%s-%d", unit, starts[unit]), nil
		},
	})
	units := &systemd.Units{}
	defer units.Close()
	for _, unit := range hostbus.Units {
		before, err := units.InvocationID(t.Context(), unit)
		if err != nil {
			t.Fatalf("invocation of %s: %v", unit, err)
		}
		if err := units.Restart(t.Context(), unit); err != nil {
			t.Errorf("restart %s: %v", unit, err)
		}
		after, err := units.InvocationID(t.Context(), unit)
		if err != nil || after == before || starts[unit] != 1 {
			t.Errorf("%s: invocation %q, then %q (%v); %d restarts reached the machine, want 1", unit, before, after, err, starts[unit])
		}
	}
	if err := units.Restart(t.Context(), "broken.service"); err == nil {
		t.Error("a restart that failed on the machine succeeded")
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
