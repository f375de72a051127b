// Package metrics is the node agent's Prometheus metrics (herd_agent_*)
// and the HTTP endpoint that serves them with the probes /healthz, /readyz.
package metrics

import (
	"fmt"
	"io"
	"maps"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"herd.dev/herd/schema"
)

// Prefix starts the name of every metric of the agent.
const Prefix = "herd_agent_"

// ErrorKind is what failed, in herd_agent_errors_total{kind}.
type ErrorKind string

// Error kinds.
const (
	ErrorApply    ErrorKind = "apply"    // an apply failed and is retried with backoff
	ErrorRefused  ErrorKind = "refused"  // a desired state was refused: the node is Degraded until it changes
	ErrorPrestage ErrorKind = "prestage" // a pre-stage pull failed (the apply pulls later)
	ErrorUntaint  ErrorKind = "untaint"  // removing the converging taint failed, retried
	ErrorReport   ErrorKind = "report"   // patching the Node's annotations failed, retried
)

// DeployHow is how a deployed commit got on disk, in
// herd_agent_deploys_total{how}.
type DeployHow string

// Deploy kinds.
const (
	DeployPulled    DeployHow = "pulled"    // pulled for the change
	DeployPrestaged DeployHow = "prestaged" // pulled ahead by a pre-stage
	DeployOnDisk    DeployHow = "on-disk"   // already on disk: the rollback fast path, or new kernel arguments
	DeployUnstage   DeployHow = "unstage"   // the booted commit made the default again, undoing an earlier target
)

// Agent is the agent's metrics. One Agent may outlive agents: the
// simulator hands the same one to each agent it restarts for a node. Safe
// for concurrent use.
type Agent struct {
	state        *prometheus.GaugeVec
	lastApply    prometheus.Gauge
	applySeconds prometheus.Histogram
	applies      prometheus.Counter
	reboots      prometheus.Counter
	errors       *prometheus.CounterVec
	pulls        *prometheus.CounterVec
	deltaPulls   prometheus.Counter
	deploys      *prometheus.CounterVec
	restarts     *prometheus.CounterVec
	files        prometheus.Counter
	sysctls      prometheus.Counter
	untainted    prometheus.Counter

	own *prometheus.Registry // the collectors above, for Snapshot
}

// New returns the agent's metrics, registered with reg unless it is nil.
// Other collectors of the node (such as the eBPF monitor's) register with
// the same reg.
func New(reg prometheus.Registerer) (*Agent, error) {
	a := &Agent{
		state: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: Prefix + "state",
			Help: "The state the agent reports in herd.dev/state: 1 for the current one."}, []string{"state"}),
		lastApply: prometheus.NewGauge(prometheus.GaugeOpts{Name: Prefix + "last_apply_timestamp_seconds",
			Help: "When the agent last reached a new desired state (Unix time)."}),
		applySeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Name: Prefix + "apply_duration_seconds",
			Help:    "Time from taking a desired state on to reaching it, its reboot included.",
			Buckets: []float64{0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800}}),
		applies: prometheus.NewCounter(prometheus.CounterOpts{Name: Prefix + "applies_total",
			Help: "Desired states reached."}),
		reboots: prometheus.NewCounter(prometheus.CounterOpts{Name: Prefix + "reboots_total",
			Help: "Reboots requested."}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{Name: Prefix + "errors_total",
			Help: "Failures, by kind: apply (retried), refused (Degraded until the desired state changes), prestage, untaint, report."}, []string{"kind"}),
		pulls: prometheus.NewCounterVec(prometheus.CounterOpts{Name: Prefix + "pulls_total",
			Help: "OSTree pulls, for an apply or ahead of one (prestage)."}, []string{"reason"}),
		deltaPulls: prometheus.NewCounter(prometheus.CounterOpts{Name: Prefix + "delta_pulls_total",
			Help: "OSTree pulls that fetched a static delta."}),
		deploys: prometheus.NewCounterVec(prometheus.CounterOpts{Name: Prefix + "deploys_total",
			Help: "OSTree deploys, by how the commit got on disk: pulled, prestaged, on-disk (rollback fast path), unstage."}, []string{"how"}),
		restarts: prometheus.NewCounterVec(prometheus.CounterOpts{Name: Prefix + "restarts_total",
			Help: "Systemd units restarted to take changed files on."}, []string{"unit"}),
		files: prometheus.NewCounter(prometheus.CounterOpts{Name: Prefix + "files_written_total",
			Help: "Rendered files written or removed."}),
		sysctls: prometheus.NewCounter(prometheus.CounterOpts{Name: Prefix + "sysctls_written_total",
			Help: "Sysctl values written."}),
		untainted: prometheus.NewCounter(prometheus.CounterOpts{Name: Prefix + "taints_removed_total",
			Help: "herd.dev/converging taints removed at the target."}),
	}
	for _, s := range []schema.NodeState{schema.StateIdle, schema.StateWorking, schema.StateRebooting, schema.StateDegraded} {
		a.state.WithLabelValues(string(s))
	}
	for _, k := range []ErrorKind{ErrorApply, ErrorRefused, ErrorPrestage, ErrorUntaint, ErrorReport} {
		a.errors.WithLabelValues(string(k))
	}
	a.pulls.WithLabelValues("apply")
	a.pulls.WithLabelValues("prestage")
	a.own = prometheus.NewRegistry()
	for _, c := range []prometheus.Collector{a.state, a.lastApply, a.applySeconds, a.applies, a.reboots, a.errors,
		a.pulls, a.deltaPulls, a.deploys, a.restarts, a.files, a.sysctls, a.untainted} {
		a.own.MustRegister(c)
		if reg != nil {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("register agent metrics: %w", err)
			}
		}
	}
	return a, nil
}

// State sets the state gauge.
func (a *Agent) State(s schema.NodeState) {
	a.state.Reset()
	for _, o := range []schema.NodeState{schema.StateIdle, schema.StateWorking, schema.StateRebooting, schema.StateDegraded} {
		v := 0.0
		if o == s {
			v = 1
		}
		a.state.WithLabelValues(string(o)).Set(v)
	}
}

// Applied counts a desired state reached at t, took after the agent took
// it on (0: unknown).
func (a *Agent) Applied(t time.Time, took time.Duration) {
	a.applies.Inc()
	a.lastApply.Set(float64(t.UnixNano()) / 1e9)
	if took > 0 {
		a.applySeconds.Observe(took.Seconds())
	}
}

// Error counts a failure.
func (a *Agent) Error(k ErrorKind) { a.errors.WithLabelValues(string(k)).Inc() }

// Pulled counts a pull, ahead of an apply when prestage.
func (a *Agent) Pulled(prestage bool) {
	r := "apply"
	if prestage {
		r = "prestage"
	}
	a.pulls.WithLabelValues(r).Inc()
}

// DeltaPulled counts a pull that fetched a static delta; a nil Agent
// counts nothing.
func (a *Agent) DeltaPulled() {
	if a != nil {
		a.deltaPulls.Inc()
	}
}

// Deployed counts a deploy.
func (a *Agent) Deployed(how DeployHow) { a.deploys.WithLabelValues(string(how)).Inc() }

// Restarted counts a restart of unit.
func (a *Agent) Restarted(unit string) { a.restarts.WithLabelValues(unit).Inc() }

// Rebooted counts a reboot requested.
func (a *Agent) Rebooted() { a.reboots.Inc() }

// FilesWritten counts n files written or removed.
func (a *Agent) FilesWritten(n int) { a.files.Add(float64(n)) }

// SysctlsWritten counts n sysctl values written.
func (a *Agent) SysctlsWritten(n int) { a.sysctls.Add(float64(n)) }

// Untainted counts a converging taint removed.
func (a *Agent) Untainted() { a.untainted.Inc() }

// Counters is what an agent did, read back from its metrics.
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

// Add returns the sum of c and o.
func (c Counters) Add(o Counters) Counters {
	s := Counters{Pulls: c.Pulls + o.Pulls, DeltaPulls: c.DeltaPulls + o.DeltaPulls, Prestaged: c.Prestaged + o.Prestaged, FastPaths: c.FastPaths + o.FastPaths,
		Deploys: c.Deploys + o.Deploys, Reboots: c.Reboots + o.Reboots, Files: c.Files + o.Files,
		Sysctls: c.Sysctls + o.Sysctls, Refusals: c.Refusals + o.Refusals, Applied: c.Applied + o.Applied,
		Untainted: c.Untainted + o.Untainted, Restarts: maps.Clone(c.Restarts)}
	if s.Restarts == nil {
		s.Restarts = map[string]int{}
	}
	for u, n := range o.Restarts {
		s.Restarts[u] += n
	}
	return s
}

// Snapshot returns the counters now.
func (a *Agent) Snapshot() Counters {
	fams, _ := a.own.Gather() // fails only for inconsistent collectors, which these are not
	return countersOf(fams)
}

// Parse reads counters from an agent's /metrics in the Prometheus text
// format.
func Parse(r io.Reader) (Counters, error) {
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(r)
	if err != nil {
		return Counters{}, fmt.Errorf("parse agent metrics: %w", err)
	}
	list := make([]*dto.MetricFamily, 0, len(fams))
	for _, f := range fams {
		list = append(list, f)
	}
	return countersOf(list), nil
}

func countersOf(fams []*dto.MetricFamily) Counters {
	c := Counters{Restarts: map[string]int{}}
	for _, f := range fams {
		for _, m := range f.GetMetric() {
			v := int(m.GetCounter().GetValue())
			label := func(name string) string {
				for _, l := range m.GetLabel() {
					if l.GetName() == name {
						return l.GetValue()
					}
				}
				return ""
			}
			switch f.GetName() {
			case Prefix + "pulls_total":
				c.Pulls += v
				if label("reason") == "prestage" {
					c.Prestaged += v
				}
			case Prefix + "delta_pulls_total":
				c.DeltaPulls += v
			case Prefix + "deploys_total":
				c.Deploys += v
				if label("how") == string(DeployOnDisk) {
					c.FastPaths += v
				}
			case Prefix + "reboots_total":
				c.Reboots += v
			case Prefix + "restarts_total":
				if v > 0 {
					c.Restarts[label("unit")] += v
				}
			case Prefix + "files_written_total":
				c.Files += v
			case Prefix + "sysctls_written_total":
				c.Sysctls += v
			case Prefix + "errors_total":
				if label("kind") == string(ErrorRefused) {
					c.Refusals += v
				}
			case Prefix + "applies_total":
				c.Applied += v
			case Prefix + "taints_removed_total":
				c.Untainted += v
			}
		}
	}
	return c
}
