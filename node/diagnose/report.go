package diagnose

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"herd.dev/herd/bpf/monitor"
	"herd.dev/herd/node/health"
	"herd.dev/herd/os/ostree"
	"herd.dev/herd/schema"
)

// DefaultReportLimit caps a Report's JSON encoding: it travels in a
// NodeDiagnostic's status, and etcd takes objects up to 1.5 MiB.
const DefaultReportLimit = 256 << 10

// Report is what `herd diagnose NODE` shows: the node as its agent sees it.
type Report struct {
	Node        string           `json:"node"`
	CollectedAt time.Time        `json:"collectedAt"`
	Disk        []health.FSUsage `json:"disk,omitempty"`
	Memory      *health.PSI      `json:"memory,omitempty"`
	Load        *LoadAvg         `json:"load,omitempty"`
	Network     []Interface      `json:"network,omitempty"`
	Conntrack   *Conntrack       `json:"conntrack,omitempty"`
	Health      []health.Result  `json:"health,omitempty"` // the checks: kubelet, runtime, ...
	OS          []Deployment     `json:"os,omitempty"`     // OSTree deployments, in boot order
	// Monitor is the eBPF node monitor's report: the containers with the
	// worst run-queue latency, the latest OOM kills, retransmit and exec
	// rates, the slowest disks (bpf/monitor).
	Monitor *monitor.Report `json:"monitor,omitempty"`
	// Remediations are the node's recent repairs, newest first, from the
	// controller's record on the Node (RemediationsOf): herd diagnose adds
	// them to the agent's report.
	Remediations []Remediation `json:"remediations,omitempty"`
	Evidence     *Evidence     `json:"evidence,omitempty"` // the last bundle captured
	Errors       []string      `json:"errors,omitempty"`   // what could not be read
}

// Remediation is one repair of the node.
type Remediation struct {
	Time    time.Time `json:"time"`
	Action  string    `json:"action"`
	Reason  string    `json:"reason"`
	Outcome string    `json:"outcome,omitempty"`
}

// LoadAvg is /proc/loadavg.
type LoadAvg struct {
	Load1   float64 `json:"load1"`
	Load5   float64 `json:"load5"`
	Load15  float64 `json:"load15"`
	Running int     `json:"running"` // runnable tasks
	Total   int     `json:"total"`   // tasks
}

// Deployment is one OSTree deployment as the report shows it.
type Deployment struct {
	Checksum string `json:"checksum"`
	Version  string `json:"version,omitempty"`
	Booted   bool   `json:"booted,omitempty"`
	Staged   bool   `json:"staged,omitempty"`
	Rollback bool   `json:"rollback,omitempty"`
	Pinned   bool   `json:"pinned,omitempty"`
}

func deploymentsOf(st ostree.Status) []Deployment {
	out := make([]Deployment, 0, len(st.Deployments))
	for _, d := range st.Deployments {
		out = append(out, Deployment{Checksum: d.Checksum, Version: d.Version, Booted: d.Booted, Staged: d.Staged, Rollback: d.Rollback, Pinned: d.Pinned})
	}
	return out
}

// Interface is one network interface's error and drop counters.
type Interface struct {
	Name      string `json:"name"`
	RxErrors  uint64 `json:"rxErrors"`
	TxErrors  uint64 `json:"txErrors"`
	RxDropped uint64 `json:"rxDropped"`
	TxDropped uint64 `json:"txDropped"`
}

// Conntrack is the connection tracking table's use.
type Conntrack struct {
	Count uint64 `json:"count"`
	Max   uint64 `json:"max"`
}

// Collector gathers a Report. Paths are read under Root ("/" when empty),
// so an agent in a pod with the host's root at /host reads the host's.
type Collector struct {
	Node         string
	Root         string
	DiskPaths    []string        // under Root; health.DefaultDiskPaths when empty
	Checks       []health.Check  // run once for the report
	Sysroot      *ostree.Sysroot // nil: no OSTree deployments
	EvidencePath string          // the last evidence bundle; none when empty
	Limit        int             // DefaultReportLimit when <= 0
	Monitor      MonitorTop      // the eBPF node monitor; nil: none
}

// MonitorTop is what the report reads of the eBPF node monitor
// (*monitor.Monitor): its worst offenders.
type MonitorTop interface {
	Top(n int) (monitor.Report, error)
}

// MonitorEntries is how many entries of each monitor list a report keeps.
const MonitorEntries = 5

func (c *Collector) path(p string) string {
	if c.Root == "" {
		return p
	}
	return filepath.Join(c.Root, p)
}

// Collect reads everything once at now. What cannot be read is named in
// Errors; the rest is reported.
func (c *Collector) Collect(ctx context.Context, now time.Time) *Report {
	r := &Report{Node: c.Node, CollectedAt: now.UTC()}
	fail := func(what string, err error) { r.Errors = append(r.Errors, fmt.Sprintf("%s: %v", what, err)) }

	paths := c.DiskPaths
	if len(paths) == 0 {
		paths = health.DefaultDiskPaths
	}
	for _, p := range paths {
		if u, err := health.Statfs(c.path(p)); err != nil {
			fail("disk", err)
		} else {
			u.Path = p
			r.Disk = append(r.Disk, u)
		}
	}
	if p, err := health.ReadPSI(c.path(health.DefaultPSIPath)); err != nil {
		fail("memory pressure", err)
	} else {
		r.Memory = &p
	}
	if l, err := readLoadAvg(c.path("/proc/loadavg")); err != nil {
		fail("load", err)
	} else {
		r.Load = l
	}
	if n, err := readInterfaces(c.path("/sys/class/net")); err != nil {
		fail("network", err)
	} else {
		r.Network = n
	}
	if ct, err := readConntrack(c.path("/proc/sys/net/netfilter")); err != nil {
		fail("conntrack", err)
	} else {
		r.Conntrack = ct
	}
	if c.Monitor != nil {
		if m, err := c.Monitor.Top(MonitorEntries); err != nil {
			fail("eBPF monitor", err)
		} else {
			r.Monitor = &m
		}
	}
	if len(c.Checks) > 0 {
		r.Health = health.Round(ctx, c.Checks, now, 0)
	}
	if c.Sysroot != nil {
		if st, err := c.Sysroot.Status(ctx); err != nil {
			fail("OSTree", err)
		} else {
			r.OS = deploymentsOf(st)
		}
	}
	if c.EvidencePath != "" {
		if e, err := LoadEvidence(c.EvidencePath); err != nil {
			fail("evidence", err)
		} else {
			r.Evidence = e
		}
	}
	r.fit(c.Limit)
	return r
}

// fit keeps the report within limit: the evidence bundle is cut first
// (it has its own truncation), then dropped.
func (r *Report) fit(limit int) {
	if limit <= 0 {
		limit = DefaultReportLimit
	}
	if size(r) <= limit || r.Evidence == nil {
		return
	}
	r.Evidence.fit(limit - (size(r) - r.Evidence.Size()))
	if size(r) > limit {
		r.Evidence = nil
		r.Errors = append(r.Errors, "evidence: left out, the report would exceed its size limit")
	}
}

// size is the length of v's JSON encoding.
func size(v any) int {
	b, _ := json.Marshal(v)
	return len(b)
}

func readLoadAvg(path string) (*LoadAvg, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return parseLoadAvg(string(b))
}

// parseLoadAvg parses "0.52 0.58 0.59 2/1234 5678".
func parseLoadAvg(s string) (*LoadAvg, error) {
	f := strings.Fields(s)
	if len(f) < 4 {
		return nil, fmt.Errorf("loadavg %q: too few fields", s)
	}
	var l LoadAvg
	var err error
	for i, dst := range []*float64{&l.Load1, &l.Load5, &l.Load15} {
		if *dst, err = strconv.ParseFloat(f[i], 64); err != nil {
			return nil, fmt.Errorf("loadavg %q: %w", s, err)
		}
	}
	run, total, ok := strings.Cut(f[3], "/")
	if !ok {
		return nil, fmt.Errorf("loadavg %q: no running/total", s)
	}
	if l.Running, err = strconv.Atoi(run); err == nil {
		l.Total, err = strconv.Atoi(total)
	}
	if err != nil {
		return nil, fmt.Errorf("loadavg %q: %w", s, err)
	}
	return &l, nil
}

// readInterfaces reads the counters of every interface in sysfs, by name.
func readInterfaces(dir string) ([]Interface, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var out []Interface
	for _, e := range entries {
		stats := filepath.Join(dir, e.Name(), "statistics")
		read := func(name string) uint64 {
			b, err := os.ReadFile(filepath.Join(stats, name))
			if err != nil {
				return 0
			}
			v, _ := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
			return v
		}
		if _, err := os.Stat(stats); err != nil {
			continue
		}
		out = append(out, Interface{
			Name:      e.Name(),
			RxErrors:  read("rx_errors"),
			TxErrors:  read("tx_errors"),
			RxDropped: read("rx_dropped"),
			TxDropped: read("tx_dropped"),
		})
	}
	slices.SortFunc(out, func(a, b Interface) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// readConntrack reads nf_conntrack_count and nf_conntrack_max; without the
// nf_conntrack module they do not exist.
func readConntrack(dir string) (*Conntrack, error) {
	read := func(name string) (uint64, error) {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			return 0, err
		}
		return strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	}
	count, err := read("nf_conntrack_count")
	if err != nil {
		return nil, err
	}
	max, err := read("nf_conntrack_max")
	if err != nil {
		return nil, err
	}
	return &Conntrack{Count: count, Max: max}, nil
}

// RemediationsOf reads a node's repairs from its annotations (the
// controller's record), newest first: the one in progress, then its
// history.
func RemediationsOf(annotations map[string]string) []Remediation {
	var out []Remediation
	if st, err := schema.ParseRemediationState(annotations[schema.AnnotationRemediation]); err == nil && st != nil {
		outcome := "in progress"
		if !st.Marked.IsZero() {
			outcome = "marked for replacement"
		}
		out = append(out, Remediation{Time: st.Started, Action: string(st.Action), Reason: remediationReason(st.Problem, st.Reason, st.Rung), Outcome: outcome})
	}
	h, _ := schema.ParseRemediationRecords(annotations[schema.AnnotationRemediations])
	for i := len(h) - 1; i >= 0; i-- {
		r := h[i]
		out = append(out, Remediation{Time: r.Time, Action: string(r.Action), Reason: remediationReason(r.Problem, r.Reason, r.Rung), Outcome: string(r.Outcome)})
	}
	return out
}

func remediationReason(p schema.Problem, why schema.HealthReason, rung int) string {
	s := fmt.Sprintf("%s, rung %d", p, rung+1)
	if why != "" {
		s = fmt.Sprintf("%s (%s), rung %d", p, why, rung+1)
	}
	return s
}
