package health

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"

	"herd.dev/herd/schema"
)

// Kubelet defaults: its healthz endpoint (healthzBindAddress and
// healthzPort of the kubelet config) and how long it may take to answer
// (node-problem-detector's health checker uses 10 s).
const (
	DefaultKubeletHealthzURL     = "http://127.0.0.1:10248/healthz"
	DefaultKubeletHealthzTimeout = 5 * time.Second
	// DefaultLeaseDuration is kubelet's node lease duration, used when a
	// Lease does not say.
	DefaultLeaseDuration = 40 * time.Second
)

// LeaseGetter returns the node's Lease in kube-node-lease.
type LeaseGetter func(ctx context.Context) (*coordinationv1.Lease, error)

// LeaseReader reads a Lease (kube.Client).
type LeaseReader interface {
	Lease(ctx context.Context, namespace, name string) (*coordinationv1.Lease, error)
}

// NodeLease reads the Lease of node with client.
func NodeLease(client LeaseReader, node string) LeaseGetter {
	return func(ctx context.Context) (*coordinationv1.Lease, error) {
		return client.Lease(ctx, "kube-node-lease", node)
	}
}

// Kubelet checks that kubelet answers /healthz within Timeout and that it
// renews its node Lease: a Lease is expired when its renewTime is older
// than its leaseDurationSeconds.
type Kubelet struct {
	HealthzURL string        // DefaultKubeletHealthzURL when empty
	Timeout    time.Duration // DefaultKubeletHealthzTimeout when zero
	Client     *http.Client  // http.DefaultClient's transport when nil
	Lease      LeaseGetter   // nil: the Lease is not checked
}

// Type is HerdKubeletUnhealthy.
func (k *Kubelet) Type() schema.NodeConditionType { return schema.ConditionKubeletUnhealthy }

// Check asks /healthz, then reads the Lease.
func (k *Kubelet) Check(ctx context.Context, now time.Time) Result {
	t := k.Type()
	if reason, msg := k.healthz(ctx); reason != "" {
		return problem(t, reason, now, msg)
	}
	if k.Lease == nil {
		return ok(t, schema.ReasonKubeletHealthy, now, "kubelet /healthz answers ok")
	}
	lease, err := k.Lease(ctx)
	if err != nil {
		return unknown(t, schema.ReasonKubeletLeaseUnknown, now, fmt.Sprintf("kubelet /healthz answers ok; its Lease cannot be read: %v", err))
	}
	return leaseResult(lease, now)
}

// leaseResult judges a Lease that was read at now.
func leaseResult(lease *coordinationv1.Lease, now time.Time) Result {
	t := schema.ConditionKubeletUnhealthy
	if lease.Spec.RenewTime == nil {
		return problem(t, schema.ReasonKubeletLeaseExpired, now, "kubelet /healthz answers ok, but its Lease was never renewed")
	}
	d := DefaultLeaseDuration
	if s := lease.Spec.LeaseDurationSeconds; s != nil && *s > 0 {
		d = time.Duration(*s) * time.Second
	}
	age := now.Sub(lease.Spec.RenewTime.Time)
	if age > d {
		return problem(t, schema.ReasonKubeletLeaseExpired, now,
			fmt.Sprintf("kubelet /healthz answers ok, but its Lease was last renewed %s ago (lease duration %s)", age.Round(time.Second), d))
	}
	return ok(t, schema.ReasonKubeletHealthy, now, "kubelet /healthz answers ok and its Lease is renewed")
}

// healthz returns a reason and message when /healthz does not answer ok.
func (k *Kubelet) healthz(ctx context.Context) (schema.HealthReason, string) {
	url := k.HealthzURL
	if url == "" {
		url = DefaultKubeletHealthzURL
	}
	timeout := k.Timeout
	if timeout <= 0 {
		timeout = DefaultKubeletHealthzTimeout
	}
	client := k.Client
	if client == nil {
		client = http.DefaultClient
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return schema.ReasonKubeletHealthzFailed, fmt.Sprintf("kubelet /healthz: %v", err)
	}
	resp, err := client.Do(req)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) || ctx.Err() != nil {
			return schema.ReasonKubeletHealthzTimeout, fmt.Sprintf("kubelet %s did not answer within %s", url, timeout)
		}
		return schema.ReasonKubeletHealthzFailed, fmt.Sprintf("kubelet %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 512))
	if err != nil && ctx.Err() != nil {
		return schema.ReasonKubeletHealthzTimeout, fmt.Sprintf("kubelet %s did not answer within %s", url, timeout)
	}
	if resp.StatusCode != http.StatusOK || strings.TrimSpace(string(body)) != "ok" {
		return schema.ReasonKubeletHealthzFailed, fmt.Sprintf("kubelet %s answered %s: %q", url, resp.Status, strings.TrimSpace(string(body)))
	}
	return "", ""
}
