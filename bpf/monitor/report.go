package monitor

import (
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"text/tabwriter"
	"time"
)

// Report is the monitor's aggregated reads: the worst offenders over the
// last Interval or two. It is what `herd diagnose` shows of a node, and
// serialises to JSON.
type Report struct {
	Time time.Time `json:"time"`
	// WindowSeconds is the span the latencies and rates cover.
	WindowSeconds  float64         `json:"windowSeconds"`
	CgroupMode     string          `json:"cgroupMode"`
	TCPAttribution string          `json:"tcpAttribution"`
	Programs       []ProgramStatus `json:"programs"`
	// RunQueue: the containers whose tasks waited longest for a CPU, by p99.
	RunQueue []Latency `json:"runQueue"`
	// OOMKills: the latest OOM kills, newest first.
	OOMKills []OOMKill `json:"oomKills"`
	// TCPRetransmits and Execs: the highest rates.
	TCPRetransmits []Rate `json:"tcpRetransmits"`
	Execs          []Rate `json:"execs"`
	// BlockIO: disks by p99 latency.
	BlockIO []Latency `json:"blockIO"`
}

// Latency summarises a histogram over the window. Percentiles are the
// upper bounds of log2 buckets, so read them as "at most".
type Latency struct {
	Labels
	Device      string  `json:"device,omitempty"`
	Count       uint64  `json:"count"`
	MeanSeconds float64 `json:"meanSeconds"`
	P50Seconds  float64 `json:"p50Seconds"`
	P99Seconds  float64 `json:"p99Seconds"`
}

// Rate is a counter's increase over the window.
type Rate struct {
	Labels
	Count     uint64  `json:"count"`
	PerSecond float64 `json:"perSecond"`
}

// Top reads the maps and reports at most n entries per list, measured
// since the baseline taken every Interval (since New, at first).
func (m *Monitor) Top(n int) (Report, error) {
	now, err := m.read()
	if err != nil {
		return Report{}, err
	}
	m.mu.Lock()
	base := m.baseline
	m.mu.Unlock()
	window := now.at.Sub(base.at).Seconds()
	r := Report{
		Time: now.at, WindowSeconds: window,
		CgroupMode: m.hierarchy.Mode.String(), TCPAttribution: m.TCPAttribution(),
		Programs: m.Status(),
	}
	r.RunQueue = topLatencies(byLabels(m.names, deltaHists(now.runQueue, base.runQueue), addHist), n)
	r.TCPRetransmits = topRates(byLabels(m.names, deltaCounts(now.retrans, base.retrans), sum), window, n)
	r.Execs = topRates(byLabels(m.names, deltaCounts(now.execs, base.execs), sum), window, n)
	var disks []Latency
	for dev, h := range deltaHists(now.blockIO, base.blockIO) {
		l := summarize(h)
		l.Device = m.disks.name(dev)
		disks = append(disks, l)
	}
	r.BlockIO = worst(disks, n)
	if m.oom != nil {
		r.OOMKills = m.oom.latest(n)
	}
	return r, nil
}

func sum(a, b uint64) uint64 { return a + b }

func deltaCounts(now, base map[uint64]uint64) map[uint64]uint64 {
	out := make(map[uint64]uint64, len(now))
	for k, v := range now {
		if b := base[k]; v > b {
			out[k] = v - b
		}
	}
	return out
}

// deltaHists subtracts base from now; an entry smaller than its base was
// evicted and counted again from zero, so it is taken whole.
func deltaHists[K comparable](now, base map[K]hist) map[K]hist {
	out := make(map[K]hist, len(now))
	for k, h := range now {
		b, ok := base[k]
		if ok && h.SumNs >= b.SumNs {
			for i := range h.Slots {
				h.Slots[i] -= min(b.Slots[i], h.Slots[i])
			}
			h.SumNs -= b.SumNs
		}
		if count(h) > 0 {
			out[k] = h
		}
	}
	return out
}

func count(h hist) uint64 {
	var n uint64
	for _, s := range h.Slots {
		n += s
	}
	return n
}

// quantile is the upper bound of the bucket holding quantile q of h; for
// the last bucket, its lower bound.
func quantile(h hist, q float64) float64 {
	total := count(h)
	var cum uint64
	for k, n := range h.Slots {
		cum += n
		if float64(cum) >= q*float64(total) && cum > 0 {
			if k == histSlots-1 {
				return bucketBound(k - 1)
			}
			return bucketBound(k)
		}
	}
	return 0
}

func summarize(h hist) Latency {
	c := count(h)
	return Latency{Count: c, MeanSeconds: float64(h.SumNs) / 1e9 / float64(c),
		P50Seconds: quantile(h, 0.5), P99Seconds: quantile(h, 0.99)}
}

func topLatencies(hs map[Labels]hist, n int) []Latency {
	out := make([]Latency, 0, len(hs))
	for l, h := range hs {
		s := summarize(h)
		s.Labels = l
		out = append(out, s)
	}
	return worst(out, n)
}

// worst sorts by p99, then mean, and keeps n.
func worst(ls []Latency, n int) []Latency {
	slices.SortFunc(ls, func(a, b Latency) int {
		return cmp.Or(cmp.Compare(b.P99Seconds, a.P99Seconds), cmp.Compare(b.MeanSeconds, a.MeanSeconds),
			cmp.Compare(a.String(), b.String()), cmp.Compare(a.Device, b.Device))
	})
	return ls[:min(n, len(ls))]
}

func topRates(counts map[Labels]uint64, window float64, n int) []Rate {
	out := make([]Rate, 0, len(counts))
	for l, c := range counts {
		r := Rate{Labels: l, Count: c}
		if window > 0 {
			r.PerSecond = float64(c) / window
		}
		out = append(out, r)
	}
	slices.SortFunc(out, func(a, b Rate) int {
		return cmp.Or(cmp.Compare(b.Count, a.Count), cmp.Compare(a.String(), b.String()))
	})
	return out[:min(n, len(out))]
}

// Handler serves Top as JSON: GET ?n=10 (default 10).
func (m *Monitor) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		n := 10
		if s := req.URL.Query().Get("n"); s != "" {
			v, err := strconv.Atoi(s)
			if err != nil || v < 1 {
				http.Error(w, fmt.Sprintf("n=%q: want a positive integer", s), http.StatusBadRequest)
				return
			}
			n = v
		}
		r, err := m.Top(n)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(r)
	})
}

// WriteText prints the report as tables, as `herd top node` shows it.
func (r Report) WriteText(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "node monitor at %s over %.0fs (cgroups: %s, TCP by %s)\n", r.Time.Format(time.RFC3339), r.WindowSeconds, r.CgroupMode, r.TCPAttribution)
	for _, p := range r.Programs {
		if !p.Loaded {
			fmt.Fprintf(tw, "program %s not loaded: %s\n", p.Program, p.Reason)
		} else if p.Dropped > 0 {
			fmt.Fprintf(tw, "program %s dropped %d events\n", p.Program, p.Dropped)
		}
	}
	fmt.Fprintf(tw, "\nRUN QUEUE\tP50\tP99\tMEAN\tSWITCH-INS\n")
	for _, l := range r.RunQueue {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\n", l.Labels, seconds(l.P50Seconds), seconds(l.P99Seconds), seconds(l.MeanSeconds), l.Count)
	}
	fmt.Fprintf(tw, "\nOOM KILLS\tPID\tCOMMAND\tTIME\n")
	for _, k := range r.OOMKills {
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\n", k.Victim, k.PID, k.Command, k.Time.Format(time.RFC3339))
	}
	fmt.Fprintf(tw, "\nTCP RETRANSMITS\tPER SECOND\tCOUNT\n")
	for _, rt := range r.TCPRetransmits {
		fmt.Fprintf(tw, "%s\t%.2f\t%d\n", rt.Labels, rt.PerSecond, rt.Count)
	}
	fmt.Fprintf(tw, "\nEXECS\tPER SECOND\tCOUNT\n")
	for _, rt := range r.Execs {
		fmt.Fprintf(tw, "%s\t%.2f\t%d\n", rt.Labels, rt.PerSecond, rt.Count)
	}
	fmt.Fprintf(tw, "\nBLOCK I/O\tP50\tP99\tMEAN\tREQUESTS\n")
	for _, l := range r.BlockIO {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\n", l.Device, seconds(l.P50Seconds), seconds(l.P99Seconds), seconds(l.MeanSeconds), l.Count)
	}
	return tw.Flush()
}

func seconds(s float64) string {
	return time.Duration(s * float64(time.Second)).String()
}
