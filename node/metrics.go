package node

import (
	"maps"
	"sync"
)

// Metrics counts what an agent did. One Metrics may outlive agents: the
// simulator hands the same one to each agent it restarts for a node. Safe for
// concurrent use; the zero value is ready.
type Metrics struct {
	mu sync.Mutex
	c  Counters
}

// Counters is a snapshot of Metrics.
type Counters struct {
	Pulls      int            // ostree pulls run, pre-stage pulls included
	DeltaPulls int            // of those, pulls that fetched a static delta
	Prestaged  int            // of those, pulls of a commit ahead of its rollout (prestage-os)
	FastPaths  int            // deploys without a pull: the commit was on disk (rollback, or new kernel arguments), not pre-staged
	Deploys    int            // ostree deploys run
	Reboots    int            // reboots requested
	Restarts   map[string]int // by systemd unit
	Files      int            // files written or removed
	Sysctls    int            // sysctl values written
	Refusals   int            // desired states refused (Degraded)
	Applied    int            // desired states reached (Idle at a new target)
	Untainted  int            // herd.dev/converging taints removed at the target
}

func (m *Metrics) add(f func(c *Counters)) {
	if m == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	f(&m.c)
}

// Snapshot returns the counters now.
func (m *Metrics) Snapshot() Counters {
	m.mu.Lock()
	defer m.mu.Unlock()
	c := m.c
	c.Restarts = maps.Clone(m.c.Restarts)
	if c.Restarts == nil {
		c.Restarts = map[string]int{}
	}
	return c
}

func (m *Metrics) restarted(unit string) {
	m.add(func(c *Counters) {
		if c.Restarts == nil {
			c.Restarts = map[string]int{}
		}
		c.Restarts[unit]++
	})
}
