package metrics_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"

	"herd.dev/herd/node/metrics"
	"herd.dev/herd/schema"
)

// What the agent counts reads back the same from Snapshot and from the
// text it serves on /metrics, and the probes answer as the agent is.
func TestServeAndReadBack(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := metrics.New(reg)
	if err != nil {
		t.Fatal(err)
	}
	// Another collector of the node registers with the same registry.
	other := prometheus.NewCounter(prometheus.CounterOpts{Name: "herd_bpf_events_total", Help: "x"})
	reg.MustRegister(other)
	other.Add(3)

	m.Pulled(false)
	m.Pulled(true)
	m.Deployed(metrics.DeployPulled)
	m.Deployed(metrics.DeployOnDisk)
	m.Deployed(metrics.DeployUnstage)
	m.Restarted("kubelet.service")
	m.Restarted("kubelet.service")
	m.Rebooted()
	m.FilesWritten(4)
	m.SysctlsWritten(2)
	m.Error(metrics.ErrorRefused)
	m.Error(metrics.ErrorApply)
	m.Applied(time.Unix(1700000000, 0), 90*time.Second)
	m.Untainted()
	m.State(schema.StateWorking)
	m.State(schema.StateIdle)
	want := metrics.Counters{Pulls: 2, Prestaged: 1, FastPaths: 1, Deploys: 3, Reboots: 1,
		Restarts: map[string]int{"kubelet.service": 2}, Files: 4, Sysctls: 2, Refusals: 1, Applied: 1, Untainted: 1}
	if d := cmp.Diff(want, m.Snapshot()); d != "" {
		t.Errorf("Snapshot (-want +got):\n%s", d)
	}

	var ready atomic.Bool
	srv, err := metrics.Listen("127.0.0.1:0", reg, func() error {
		if !ready.Load() {
			return errors.New("the agent has not reported on its Node yet")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	srv.Handle("GET /top", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("top\n")) }))
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	get := func(path string) (int, string) {
		t.Helper()
		resp, err := http.Get("http://" + srv.Addr() + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}

	code, body := get("/metrics")
	if code != http.StatusOK {
		t.Fatalf("/metrics: %d", code)
	}
	got, err := metrics.Parse(strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("/metrics read back (-want +got):\n%s", d)
	}
	for _, line := range []string{
		`herd_agent_state{state="Idle"} 1`,
		`herd_agent_state{state="Working"} 0`,
		`herd_agent_last_apply_timestamp_seconds 1.7e+09`,
		`herd_agent_apply_duration_seconds_count 1`,
		`herd_agent_apply_duration_seconds_bucket{le="120"} 1`,
		`herd_agent_errors_total{kind="prestage"} 0`,
		`herd_bpf_events_total 3`,
	} {
		if !strings.Contains(body, line+"\n") {
			t.Errorf("/metrics lacks %q", line)
		}
	}
	for _, l := range strings.Split(body, "\n") {
		if l != "" && !strings.HasPrefix(l, "#") && !strings.HasPrefix(l, metrics.Prefix) && !strings.HasPrefix(l, "herd_bpf_") {
			t.Errorf("a metric without the prefix %s: %s", metrics.Prefix, l)
		}
	}

	if code, body := get("/top"); code != http.StatusOK || body != "top\n" {
		t.Errorf("/top, another of the node's handlers: %d %q", code, body)
	}
	if code, body := get("/healthz"); code != http.StatusOK {
		t.Errorf("/healthz: %d %s", code, body)
	}
	if code, body := get("/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "has not reported") {
		t.Errorf("/readyz before the first report: %d %s", code, body)
	}
	ready.Store(true)
	if code, body := get("/readyz"); code != http.StatusOK {
		t.Errorf("/readyz: %d %s", code, body)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Serve: %v", err)
	}
}

// Two agents' metrics cannot share a registry: the second is refused.
func TestRegisterTwice(t *testing.T) {
	reg := prometheus.NewRegistry()
	if _, err := metrics.New(reg); err != nil {
		t.Fatal(err)
	}
	if _, err := metrics.New(reg); err == nil {
		t.Error("a second registration succeeded")
	}
}

func TestCountersAdd(t *testing.T) {
	a := metrics.Counters{Pulls: 1, Restarts: map[string]int{"k": 1}}
	b := metrics.Counters{Pulls: 2, Reboots: 1, Restarts: map[string]int{"k": 2, "c": 1}}
	want := metrics.Counters{Pulls: 3, Reboots: 1, Restarts: map[string]int{"k": 3, "c": 1}}
	if d := cmp.Diff(want, a.Add(b)); d != "" {
		t.Errorf("Add (-want +got):\n%s", d)
	}
	if a.Restarts["k"] != 1 {
		t.Errorf("Add changed its receiver: %v", a.Restarts)
	}
}
