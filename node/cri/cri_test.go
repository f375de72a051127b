package cri_test

import (
	"context"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"herd.dev/herd/node/cri"
	"herd.dev/herd/test/containerd"
)

// TestIntegrationSandboxes runs real host-network sandboxes in a real
// containerd, lists them with their pods, and removes one.
func TestIntegrationSandboxes(t *testing.T) {
	ctd := containerd.StartTest(t, containerd.Options{})
	ctx := t.Context()
	c, err := cri.New(ctd.Socket())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	before := time.Now().Add(-time.Second)
	pods := []containerd.Pod{
		{Name: "web-0", Namespace: "shop", UID: "uid-web-0"},
		{Name: "db-0", Namespace: "shop", UID: "uid-db-0"},
	}
	ids := map[string]string{}
	for _, p := range pods {
		id, err := ctd.RunSandbox(ctx, p)
		if err != nil {
			t.Fatal(err)
		}
		ids[p.UID] = id
	}
	got, err := c.Sandboxes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var want []cri.Sandbox
	for _, p := range pods {
		want = append(want, cri.Sandbox{ID: ids[p.UID], PodName: p.Name, PodNamespace: p.Namespace, PodUID: p.UID, State: cri.SandboxReady})
	}
	for i := range got {
		if got[i].CreatedAt.Before(before) || got[i].CreatedAt.After(time.Now()) {
			t.Errorf("sandbox %s created at %v, not during the test", got[i].ID, got[i].CreatedAt)
		}
		got[i].CreatedAt = time.Time{}
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Fatalf("sandboxes (-want +got):\n%s", d)
	}

	if err := c.RemoveSandbox(ctx, ids["uid-web-0"]); err != nil {
		t.Fatal(err)
	}
	// Removing it again is not an error: a cleanup that crashed half-way
	// is simply run again.
	if err := c.RemoveSandbox(ctx, ids["uid-web-0"]); err != nil {
		t.Fatalf("remove again: %v", err)
	}
	got, err = c.Sandboxes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].PodUID != "uid-db-0" {
		t.Fatalf("after removing web-0: %+v", got)
	}
	if err := c.RemoveSandbox(ctx, ids["uid-db-0"]); err != nil {
		t.Fatal(err)
	}
}

// TestIntegrationStatus reads the runtime's status from a real containerd:
// NetworkReady is false until a CNI config appears, then true; a stopped
// runtime is an error.
func TestIntegrationStatus(t *testing.T) {
	ctd := containerd.StartTest(t, containerd.Options{})
	ctx := t.Context()
	c, err := cri.New(ctd.Socket())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	st, err := c.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !st.RuntimeReady || st.NetworkReady || st.Reason == "" {
		t.Fatalf("without CNI: %+v, want runtime ready, network not ready with a reason", st)
	}
	if err := ctd.EnableCNI(); err != nil {
		t.Fatal(err)
	}
	st = pollStatus(t, c, func(st cri.Status) bool { return st.NetworkReady })
	if !st.RuntimeReady || st.Reason != "" {
		t.Fatalf("with CNI: %+v", st)
	}

	if err := ctd.Kill(); err != nil {
		t.Fatal(err)
	}
	sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if _, err := c.Status(sctx); err == nil {
		t.Fatal("status of a killed containerd: no error")
	}

	// Its supervisor starts it again (the repair restart-containerd): the
	// same client reconnects and finds it ready.
	if err := ctd.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if st := pollStatus(t, c, func(st cri.Status) bool { return st.RuntimeReady && st.NetworkReady }); st.Reason != "" {
		t.Fatalf("after the restart: %+v", st)
	}
}

func pollStatus(t *testing.T, c *cri.Client, ok func(cri.Status) bool) cri.Status {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		st, err := c.Status(t.Context())
		if err == nil && ok(st) {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("status never as wanted: last %+v, %v", st, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
