// Package cri is the agent's client of the container runtime's CRI over its
// socket: runtime status, the pod sandboxes with their pods, and removal.
package cri

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// DefaultSocket is containerd's CRI socket on a node.
const DefaultSocket = "/run/containerd/containerd.sock"

// Labels kubelet puts on every pod sandbox it creates.
const (
	LabelPodName      = "io.kubernetes.pod.name"
	LabelPodNamespace = "io.kubernetes.pod.namespace"
	LabelPodUID       = "io.kubernetes.pod.uid"
)

// maxMsgSize bounds a CRI answer, as kubelet does (16 MiB).
const maxMsgSize = 16 << 20

// Client talks to one runtime's CRI RuntimeService. It is safe for
// concurrent use; the connection is made on first use and re-made after
// the runtime restarts.
type Client struct {
	conn *grpc.ClientConn
	rt   runtimeapi.RuntimeServiceClient
}

// New returns a client of the CRI at the unix socket path. It does not
// connect yet.
func New(socket string) (*Client, error) {
	conn, err := grpc.NewClient("unix://"+socket,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxMsgSize)),
	)
	if err != nil {
		return nil, fmt.Errorf("cri: client for %s: %w", socket, err)
	}
	return &Client{conn: conn, rt: runtimeapi.NewRuntimeServiceClient(conn)}, nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

// Conn is the gRPC connection, for callers that need more of the CRI than
// this package offers (tests create sandboxes with it).
func (c *Client) Conn() *grpc.ClientConn { return c.conn }

// Status is the runtime's answer to the CRI Status call.
type Status struct {
	RuntimeReady bool
	NetworkReady bool
	// Reason and Message of the first condition that is not true, as the
	// runtime words them (for people; decisions use the booleans).
	Reason, Message string
}

// Status asks the runtime whether it and its network are ready. A runtime
// that omits a condition is taken as not ready for it.
func (c *Client) Status(ctx context.Context) (Status, error) {
	resp, err := c.rt.Status(ctx, &runtimeapi.StatusRequest{})
	if err != nil {
		return Status{}, fmt.Errorf("cri: status: %w", err)
	}
	var st Status
	for _, cond := range resp.GetStatus().GetConditions() {
		switch cond.GetType() {
		case runtimeapi.RuntimeReady:
			st.RuntimeReady = cond.GetStatus()
		case runtimeapi.NetworkReady:
			st.NetworkReady = cond.GetStatus()
		default:
			continue
		}
		if !cond.GetStatus() && st.Reason == "" {
			st.Reason, st.Message = cond.GetReason(), cond.GetMessage()
		}
	}
	return st, nil
}

// SandboxState is whether a sandbox's pause process runs.
type SandboxState string

// Sandbox states, as the CRI names them.
const (
	SandboxReady    SandboxState = "Ready"
	SandboxNotReady SandboxState = "NotReady"
)

// Sandbox is one pod sandbox and the pod it was made for.
type Sandbox struct {
	ID           string       `json:"id"`
	PodName      string       `json:"podName,omitempty"`
	PodNamespace string       `json:"podNamespace,omitempty"`
	PodUID       string       `json:"podUID,omitempty"`
	State        SandboxState `json:"state"`
	CreatedAt    time.Time    `json:"createdAt"`
}

// Sandboxes lists every pod sandbox, oldest first. The pod comes from
// kubelet's labels, or from the sandbox metadata when a label is missing.
func (c *Client) Sandboxes(ctx context.Context) ([]Sandbox, error) {
	resp, err := c.rt.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
	if err != nil {
		return nil, fmt.Errorf("cri: list pod sandboxes: %w", err)
	}
	out := make([]Sandbox, 0, len(resp.GetItems()))
	for _, s := range resp.GetItems() {
		out = append(out, sandboxOf(s))
	}
	slices.SortFunc(out, func(a, b Sandbox) int {
		if c := a.CreatedAt.Compare(b.CreatedAt); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	return out, nil
}

func sandboxOf(s *runtimeapi.PodSandbox) Sandbox {
	md := s.GetMetadata()
	pick := func(label, fallback string) string {
		if v := s.GetLabels()[label]; v != "" {
			return v
		}
		return fallback
	}
	state := SandboxNotReady
	if s.GetState() == runtimeapi.PodSandboxState_SANDBOX_READY {
		state = SandboxReady
	}
	return Sandbox{
		ID:           s.GetId(),
		PodName:      pick(LabelPodName, md.GetName()),
		PodNamespace: pick(LabelPodNamespace, md.GetNamespace()),
		PodUID:       pick(LabelPodUID, md.GetUid()),
		State:        state,
		CreatedAt:    time.Unix(0, s.GetCreatedAt()).UTC(),
	}
}

// RemoveSandbox stops the sandbox (its containers and pause process) and
// removes it, as kubelet's garbage collector does. A sandbox that is already
// gone is not an error.
func (c *Client) RemoveSandbox(ctx context.Context, id string) error {
	if _, err := c.rt.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: id}); err != nil && !isNotFound(err) {
		return fmt.Errorf("cri: stop sandbox %s: %w", id, err)
	}
	if _, err := c.rt.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: id}); err != nil && !isNotFound(err) {
		return fmt.Errorf("cri: remove sandbox %s: %w", id, err)
	}
	return nil
}

// isNotFound reports a CRI NotFound error, the answer to a call about a
// sandbox that no longer exists.
func isNotFound(err error) bool { return status.Code(err) == codes.NotFound }
