package monitor

import (
	"math"

	"github.com/prometheus/client_golang/prometheus"
)

var workloadLabels = []string{"namespace", "pod", "container", "cgroup"}

var (
	runQueueDesc = prometheus.NewDesc("herd_monitor_runqueue_latency_seconds",
		"Time tasks waited in a CPU run queue before running (from becoming runnable: woken, forked or preempted), per container.",
		workloadLabels, nil)
	oomKillsDesc = prometheus.NewDesc("herd_monitor_oom_kills_total",
		"Processes killed by the OOM killer, per victim's container.", workloadLabels, nil)
	retransDesc = prometheus.NewDesc("herd_monitor_tcp_retransmits_total",
		"TCP segments retransmitted, per container that created the socket (all labels empty: the node, on cgroup v1 nodes).",
		workloadLabels, nil)
	execsDesc = prometheus.NewDesc("herd_monitor_execs_total",
		"Programs executed (successful execve), per container.", workloadLabels, nil)
	blockIODesc = prometheus.NewDesc("herd_monitor_block_io_latency_seconds",
		"Time from issuing a block I/O request to the device driver to its completion, per disk.",
		[]string{"device"}, nil)
	loadedDesc = prometheus.NewDesc("herd_monitor_program_loaded",
		"1 when the eBPF program runs; 0 when this kernel cannot run it, with the reason.",
		[]string{"program", "reason"}, nil)
	droppedDesc = prometheus.NewDesc("herd_monitor_events_dropped_total",
		"Events a program saw but could not record (a full map or ring buffer).",
		[]string{"program"}, nil)
	infoDesc = prometheus.NewDesc("herd_monitor_info",
		"How the monitor attributes events: the cgroup hierarchy and what TCP retransmits are charged to.",
		[]string{"cgroup_mode", "tcp_attribution"}, nil)
	errorsDesc = prometheus.NewDesc("herd_monitor_read_errors_total",
		"Failed reads of the eBPF maps at scrape time.", nil, nil)
)

// Collector returns a prometheus.Collector of the monitor's metrics; each
// scrape reads the maps once (a batched read per map) and names cgroups
// from a cache.
func (m *Monitor) Collector() prometheus.Collector { return (*collector)(m) }

type collector Monitor

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{runQueueDesc, oomKillsDesc, retransDesc, execsDesc, blockIODesc, loadedDesc, droppedDesc, infoDesc, errorsDesc, runsDesc, runTimeDesc} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	m := (*Monitor)(c)
	ch <- prometheus.MustNewConstMetric(infoDesc, prometheus.GaugeValue, 1, m.hierarchy.Mode.String(), m.TCPAttribution())
	for _, s := range m.Status() {
		v := 0.0
		if s.Loaded {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(loadedDesc, prometheus.GaugeValue, v, string(s.Program), s.Reason)
		if s.Loaded {
			ch <- prometheus.MustNewConstMetric(droppedDesc, prometheus.CounterValue, float64(s.Dropped), string(s.Program))
		}
	}
	m.collectStats(ch)
	snap, err := m.read()
	readErrors := 0.0
	if err != nil {
		m.opts.Logger.Warn("read eBPF maps", "error", err)
		readErrors = 1
	}
	m.mu.Lock()
	m.readErrors += readErrors
	readErrors = m.readErrors
	m.mu.Unlock()
	ch <- prometheus.MustNewConstMetric(errorsDesc, prometheus.CounterValue, readErrors)
	if err != nil {
		return
	}
	for labels, h := range byLabels(m.names, snap.runQueue, addHist) {
		ch <- constHistogram(runQueueDesc, h, labels.values()...)
	}
	for _, counter := range []struct {
		desc   *prometheus.Desc
		counts map[uint64]uint64
	}{{oomKillsDesc, snap.oomKills}, {retransDesc, snap.retrans}, {execsDesc, snap.execs}} {
		for labels, n := range byLabels(m.names, counter.counts, func(a, b uint64) uint64 { return a + b }) {
			ch <- prometheus.MustNewConstMetric(counter.desc, prometheus.CounterValue, float64(n), labels.values()...)
		}
	}
	for dev, h := range snap.blockIO {
		ch <- constHistogram(blockIODesc, h, m.disks.name(dev))
	}
}

// byLabels sums the values of cgroups that share labels (a container's
// cgroups across restarts, a pod's sandbox and its own cgroup), leaving
// out cgroups that are gone.
func byLabels[V any](n *namer, byID map[uint64]V, add func(a, b V) V) map[Labels]V {
	out := make(map[Labels]V, len(byID))
	for id, v := range byID {
		l, ok := n.name(id)
		if !ok {
			continue
		}
		if prev, seen := out[l]; seen {
			v = add(prev, v)
		}
		out[l] = v
	}
	return out
}

func addHist(a, b hist) hist {
	for i := range a.Slots {
		a.Slots[i] += b.Slots[i]
	}
	a.SumNs += b.SumNs
	return a
}

// bucketBound is the upper bound, in seconds, of slot k: 2^k µs. The last
// slot has none (+Inf).
func bucketBound(k int) float64 { return math.Ldexp(1e-6, k) }

func constHistogram(desc *prometheus.Desc, h hist, labels ...string) prometheus.Metric {
	buckets := make(map[float64]uint64, histSlots-1)
	var count uint64
	for k, n := range h.Slots {
		count += n
		if k < histSlots-1 {
			buckets[bucketBound(k)] = count
		}
	}
	return prometheus.MustNewConstHistogram(desc, count, float64(h.SumNs)/1e9, buckets, labels...)
}

// Unavailable is the collector of a node where New failed: every program
// reported not loaded, with err as the reason, so that a monitor that
// could not start is a metric and not an absence.
func Unavailable(err error) prometheus.Collector { return unavailable{errorReason(err)} }

type unavailable struct{ reason string }

func (u unavailable) Describe(ch chan<- *prometheus.Desc) { ch <- loadedDesc }

func (u unavailable) Collect(ch chan<- prometheus.Metric) {
	for _, p := range AllPrograms {
		ch <- prometheus.MustNewConstMetric(loadedDesc, prometheus.GaugeValue, 0, string(p), u.reason)
	}
}
