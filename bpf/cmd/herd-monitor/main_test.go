package main

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"herd.dev/herd/bpf/monitor"
)

// TestServe runs herd-monitor with two programs and reads what it serves:
// /metrics with the programs' status, and /top as a report.
func TestServe(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, flags{metricsAddr: addr, cgroupMode: "v2", programs: "execs,runqlat", top: 5})
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("herd-monitor: %v", err)
		}
	}()
	metrics := get(t, "http://"+addr+"/metrics", done)
	for _, want := range []string{
		`herd_monitor_program_loaded{program="execs",reason=""} 1`,
		`herd_monitor_program_loaded{program="runqlat",reason=""} 1`,
		`herd_monitor_info{cgroup_mode="v2",tcp_attribution="socket-cgroup"} 1`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	var r monitor.Report
	if err := json.Unmarshal([]byte(get(t, "http://"+addr+"/top", done)), &r); err != nil {
		t.Fatal(err)
	}
	if len(r.Programs) != 2 || r.CgroupMode != "v2" {
		t.Errorf("/top: programs %+v, cgroup mode %q", r.Programs, r.CgroupMode)
	}
}

// get polls url until herd-monitor serves it, or fails when it exits.
func get(t *testing.T, url string, done chan error) string {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(url)
		if err == nil {
			defer resp.Body.Close()
			b, err := io.ReadAll(resp.Body)
			if err != nil || resp.StatusCode != http.StatusOK {
				t.Fatalf("GET %s: %s %v", url, resp.Status, err)
			}
			return string(b)
		}
		select {
		case err := <-done:
			done <- err // for the deferred wait
			t.Fatalf("herd-monitor exited: %v", err)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET %s: %v", url, err)
		}
	}
}
