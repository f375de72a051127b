package health

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"

	"herd.dev/herd/node/cri"
	"herd.dev/herd/schema"
)

// Sandbox check defaults: how old a sandbox of a pod not on the node must be
// to count as left over (kubelet's own garbage collection runs every minute
// and should have removed it long before), and how long a list of the pods
// bound to the node is trusted.
const (
	DefaultSandboxGrace = 10 * time.Minute
	DefaultPodsTTL      = time.Minute
)

// SandboxLister is the part of the CRI the sandbox check needs.
type SandboxLister interface {
	Sandboxes(ctx context.Context) ([]cri.Sandbox, error)
}

// PodUIDs returns the UIDs of the pods bound to the node in the API.
type PodUIDs func(ctx context.Context) (map[string]bool, error)

// PodList lists pods in all namespaces as opts select (kube.Client's
// ListPods).
type PodList func(ctx context.Context, opts metav1.ListOptions) (*corev1.PodList, error)

// PodsOnNode lists the pods bound to node (from the API server's cache:
// resourceVersion 0) with list and returns their UIDs.
func PodsOnNode(list PodList, node string) PodUIDs {
	return func(ctx context.Context) (map[string]bool, error) {
		pods, err := list(ctx, metav1.ListOptions{
			FieldSelector:   fields.OneTermEqualSelector("spec.nodeName", node).String(),
			ResourceVersion: "0",
		})
		if err != nil {
			return nil, fmt.Errorf("list pods on node %s: %w", node, err)
		}
		uids := make(map[string]bool, len(pods.Items))
		for _, p := range pods.Items {
			uids[string(p.UID)] = true
		}
		return uids, nil
	}
}

// Sandboxes finds pod sandboxes that belong to no pod bound to this node
// and are older than Grace. Sandboxes without a pod UID (not made by
// kubelet) are not judged. The pods are listed only when a sandbox is a
// candidate, and a list is reused for PodsTTL.
type Sandboxes struct {
	CRI     SandboxLister
	Pods    PodUIDs
	Grace   time.Duration // DefaultSandboxGrace when zero
	PodsTTL time.Duration // DefaultPodsTTL when zero

	mu       sync.Mutex
	bound    map[string]bool
	listedAt time.Time
}

// Type is HerdLeftoverSandboxes.
func (s *Sandboxes) Type() schema.NodeConditionType { return schema.ConditionLeftoverSandboxes }

// Check lists the leftovers.
func (s *Sandboxes) Check(ctx context.Context, now time.Time) Result {
	t := s.Type()
	left, err := s.Leftover(ctx, now)
	if err != nil {
		return unknown(t, schema.ReasonSandboxesUnknown, now, err.Error())
	}
	if len(left) == 0 {
		return ok(t, schema.ReasonNoLeftoverSandboxes, now, "every pod sandbox belongs to a pod on this node")
	}
	return problem(t, schema.ReasonLeftoverSandboxes, now, describeSandboxes(left, now))
}

// Leftover returns the leftover sandboxes at now, oldest first: what a
// cleanup removes.
func (s *Sandboxes) Leftover(ctx context.Context, now time.Time) ([]cri.Sandbox, error) {
	all, err := s.CRI.Sandboxes(ctx)
	if err != nil {
		return nil, err
	}
	grace := s.Grace
	if grace <= 0 {
		grace = DefaultSandboxGrace
	}
	candidates := LeftoverSandboxes(all, nil, now, grace)
	if len(candidates) == 0 {
		return nil, nil
	}
	bound, err := s.boundPods(ctx, candidates, now)
	if err != nil {
		return nil, err
	}
	return LeftoverSandboxes(candidates, bound, now, grace), nil
}

// boundPods returns the UIDs of the pods on the node, listing them again
// unless every candidate is known bound from a list younger than PodsTTL.
func (s *Sandboxes) boundPods(ctx context.Context, candidates []cri.Sandbox, now time.Time) (map[string]bool, error) {
	ttl := s.PodsTTL
	if ttl <= 0 {
		ttl = DefaultPodsTTL
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.bound != nil && now.Sub(s.listedAt) < ttl {
		known := true
		for _, c := range candidates {
			known = known && s.bound[c.PodUID]
		}
		if known {
			return s.bound, nil
		}
	}
	bound, err := s.Pods(ctx)
	if err != nil {
		return nil, err
	}
	s.bound, s.listedAt = bound, now
	return bound, nil
}

// LeftoverSandboxes returns, in order, the sandboxes with a pod UID that is
// not in bound and that were created more than grace before now.
func LeftoverSandboxes(sandboxes []cri.Sandbox, bound map[string]bool, now time.Time, grace time.Duration) []cri.Sandbox {
	var out []cri.Sandbox
	for _, sb := range sandboxes {
		if sb.PodUID == "" || bound[sb.PodUID] || now.Sub(sb.CreatedAt) <= grace {
			continue
		}
		out = append(out, sb)
	}
	return out
}

// describeSandboxes names up to five sandboxes for a condition message.
func describeSandboxes(sbs []cri.Sandbox, now time.Time) string {
	const show = 5
	var b strings.Builder
	fmt.Fprintf(&b, "%d pod sandbox(es) of pods not on this node: ", len(sbs))
	for i, sb := range sbs {
		if i == show {
			fmt.Fprintf(&b, ", and %d more", len(sbs)-show)
			break
		}
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%s/%s (%.12s, %s old)", sb.PodNamespace, sb.PodName, sb.ID, now.Sub(sb.CreatedAt).Round(time.Second))
	}
	return b.String()
}
