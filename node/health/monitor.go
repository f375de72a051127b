package health

import (
	"context"
	"log/slog"
	"time"

	corev1 "k8s.io/api/core/v1"

	"herd.dev/herd/schema"
)

// Monitor checks the node every Interval and publishes what it sees as
// the Node's conditions (Publisher: at once on a change, else with the
// heartbeat).
type Monitor struct {
	Checks    []Check
	Publisher *Publisher
	// Node returns the agent's Node as last seen (its conditions decide
	// whether to publish); nil when it is not known.
	Node func() *corev1.Node
	// Interval between rounds: schema.DefaultCheckInterval when zero.
	Interval time.Duration
	// Timeout of a round: DefaultRoundTimeout when zero.
	Timeout time.Duration
	Log     *slog.Logger
}

// Run checks and publishes, a round at once and then every Interval, until
// ctx ends.
func (m *Monitor) Run(ctx context.Context) error {
	every := m.Interval
	if every <= 0 {
		every = schema.DefaultCheckInterval
	}
	log := m.Log
	if log == nil {
		log = slog.Default()
	}
	t := time.NewTicker(every)
	defer t.Stop()
	var last []corev1.NodeCondition // as published, while the Node lags
	for {
		now := time.Now()
		results := Round(ctx, m.Checks, now, m.Timeout)
		existing := last
		if n := m.Node(); n != nil && newer(n.Status.Conditions, last) {
			existing = n.Status.Conditions
		}
		n, err := m.Publisher.Publish(ctx, existing, results, now)
		switch {
		case err != nil && ctx.Err() == nil:
			log.Warn("health conditions not published", "node", m.Publisher.NodeName, "err", err)
		case n != nil:
			last = n.Status.Conditions
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// newer reports whether conds carry Herd heartbeats at least as recent as
// published's: the watch has caught up with the last publish.
func newer(conds, published []corev1.NodeCondition) bool {
	for _, p := range published {
		if c := findCondition(conds, p.Type); c == nil || c.LastHeartbeatTime.Before(&p.LastHeartbeatTime) {
			return false
		}
	}
	return true
}
