// Package systemd restarts services through systemd (and tells one run of
// a unit from the next) and reboots the node through logind, both over the
// system D-Bus; the agent's real side effects.
package systemd

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"

	sddbus "github.com/coreos/go-systemd/v22/dbus"
	"github.com/godbus/dbus/v5"
)

// Units restarts systemd units over D-Bus. It connects on first use, so an
// agent that never restarts anything never opens the bus. Safe for
// concurrent use; Close releases the connection.
type Units struct {
	mu   sync.Mutex
	conn *sddbus.Conn
}

func (u *Units) connect(ctx context.Context) (*sddbus.Conn, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.conn != nil && u.conn.Connected() {
		return u.conn, nil
	}
	if u.conn != nil {
		u.conn.Close()
		u.conn = nil
	}
	conn, err := sddbus.NewSystemConnectionContext(ctx)
	if err != nil {
		return nil, fmt.Errorf("connect to systemd over D-Bus: %w", err)
	}
	u.conn = conn
	return conn, nil
}

// Restart restarts unit (starting it if it is stopped) and waits until
// systemd reports the job done.
func (u *Units) Restart(ctx context.Context, unit string) error {
	conn, err := u.connect(ctx)
	if err != nil {
		return fmt.Errorf("restart %s: %w", unit, err)
	}
	done := make(chan string, 1) // buffered: go-systemd blocks until it is read
	if _, err := conn.RestartUnitContext(ctx, unit, "replace", done); err != nil {
		return fmt.Errorf("restart %s: %w", unit, err)
	}
	select {
	case res := <-done:
		if res != "done" {
			return fmt.Errorf("restart %s: systemd job result %q", unit, res)
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("restart %s: %w", unit, ctx.Err())
	}
}

// InvocationID returns the unit's invocation ID as hex: systemd gives
// every start of a unit a new one, so a changed ID says the unit was
// restarted (empty while it never ran).
func (u *Units) InvocationID(ctx context.Context, unit string) (string, error) {
	conn, err := u.connect(ctx)
	if err != nil {
		return "", fmt.Errorf("invocation of %s: %w", unit, err)
	}
	p, err := conn.GetUnitPropertyContext(ctx, unit, "InvocationID")
	if err != nil {
		return "", fmt.Errorf("invocation of %s: %w", unit, err)
	}
	b, ok := p.Value.Value().([]byte)
	if !ok {
		return "", fmt.Errorf("invocation of %s: InvocationID is %s, not bytes", unit, p.Value.Signature())
	}
	return hex.EncodeToString(b), nil
}

// Close closes the D-Bus connection, if one was opened.
func (u *Units) Close() {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.conn != nil {
		u.conn.Close()
		u.conn = nil
	}
}

// Logind reboots the node through systemd-logind, as `systemctl reboot`
// does: logind honours inhibitor locks, so the kubelet's graceful node
// shutdown gets to stop pods first.
type Logind struct{}

// Reboot asks logind to reboot now. It returns once the request is
// accepted; the agent is stopped by the shutdown that follows.
func (Logind) Reboot(ctx context.Context) error {
	conn, err := dbus.ConnectSystemBus(dbus.WithContext(ctx))
	if err != nil {
		return fmt.Errorf("reboot: connect to the system D-Bus: %w", err)
	}
	defer conn.Close()
	obj := conn.Object("org.freedesktop.login1", "/org/freedesktop/login1")
	call := obj.CallWithContext(ctx, "org.freedesktop.login1.Manager.Reboot", 0, false)
	if call.Err != nil {
		var de dbus.Error
		if errors.As(call.Err, &de) {
			return fmt.Errorf("reboot: logind refused: %s: %v", de.Name, de.Body)
		}
		return fmt.Errorf("reboot: logind: %w", call.Err)
	}
	return nil
}
