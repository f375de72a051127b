package monitor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"herd.dev/herd/bpf/cgroups"
)

// Labels name what a series counts: a pod's container (Namespace, Pod,
// Container; Container is empty for the pod's own cgroup and its sandbox),
// or a cgroup outside kubepods (Cgroup, its path). All empty: the node as a
// whole (TCP retransmits on v1 nodes).
type Labels struct {
	Namespace string `json:"namespace,omitempty"`
	Pod       string `json:"pod,omitempty"`
	Container string `json:"container,omitempty"`
	Cgroup    string `json:"cgroup,omitempty"`
}

func (l Labels) values() []string { return []string{l.Namespace, l.Pod, l.Container, l.Cgroup} }

// String is "namespace/pod/container", the cgroup path, or "node".
func (l Labels) String() string {
	switch {
	case l.Pod != "":
		s := l.Namespace + "/" + l.Pod
		if l.Container != "" {
			s += "/" + l.Container
		}
		return s
	case l.Cgroup != "":
		return l.Cgroup
	}
	return "node"
}

// minPodRefresh limits how often an unknown pod makes the namer list pods.
const minPodRefresh = 10 * time.Second

// namer turns cgroup ids into Labels: the path from the resolver, the pod
// and container from the path, their names from the pod lister.
type namer struct {
	resolver *cgroups.Resolver
	list     PodLister
	log      *slog.Logger

	mu        sync.Mutex
	labels    map[uint64]Labels
	pods      map[string]Pod // by UID
	refreshed time.Time
}

func newNamer(r *cgroups.Resolver, list PodLister, log *slog.Logger) *namer {
	return &namer{resolver: r, list: list, log: log, labels: map[uint64]Labels{}, pods: map[string]Pod{}}
}

// name returns the labels of cgroup id, and false when the cgroup is gone
// (its counts are dropped with it).
func (n *namer) name(id uint64) (Labels, bool) {
	if id == 0 {
		return Labels{}, true
	}
	n.mu.Lock()
	l, ok := n.labels[id]
	n.mu.Unlock()
	if ok {
		return l, true
	}
	path, err := n.resolver.Path(id)
	if errors.Is(err, cgroups.ErrGone) {
		return Labels{}, false
	}
	if err != nil {
		return Labels{Cgroup: fmt.Sprintf("unresolved-%d", id)}, true
	}
	l, final := n.fromPath(path)
	if final {
		n.mu.Lock()
		n.labels[id] = l
		n.mu.Unlock()
	}
	return l, true
}

// fromPath names a cgroup path; final is false when the name may improve
// once the pod lister knows the pod or container.
func (n *namer) fromPath(path string) (l Labels, final bool) {
	c := cgroups.ParsePath(path)
	if c.PodUID == "" {
		return Labels{Cgroup: path}, true
	}
	if n.list == nil {
		return Labels{Pod: c.PodUID, Container: short(c.ID)}, true
	}
	pod, ok := n.pod(c.PodUID, c.ID)
	if !ok {
		return Labels{Pod: c.PodUID, Container: short(c.ID)}, false
	}
	name, ok := pod.Containers[c.ID]
	return Labels{Namespace: pod.Namespace, Pod: pod.Name, Container: name}, ok || c.ID == ""
}

// pod finds a pod by UID, listing the pods again (at most every
// minPodRefresh) when it or its container is not known yet. The list runs
// without the lock, so a slow API server does not hold up other names.
func (n *namer) pod(uid, containerID string) (Pod, bool) {
	n.mu.Lock()
	p, ok := n.pods[uid]
	_, known := p.Containers[containerID]
	if ok && (known || containerID == "") || time.Since(n.refreshed) < minPodRefresh {
		n.mu.Unlock()
		return p, ok
	}
	n.refreshed = time.Now()
	n.mu.Unlock()

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	pods, err := n.list(ctx)
	if err != nil {
		n.log.Warn("list the node's pods to name cgroups", "error", err)
		return p, ok
	}
	byUID := make(map[string]Pod, len(pods))
	for _, p := range pods {
		byUID[p.UID] = p
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	n.pods = byUID
	p, ok = n.pods[uid]
	return p, ok
}

func (n *namer) forget(id uint64) {
	n.mu.Lock()
	delete(n.labels, id)
	n.mu.Unlock()
	n.resolver.Forget(id)
}

// short is a container id as crictl prints it.
func short(id string) string {
	if len(id) > 13 {
		return id[:13]
	}
	return id
}

// diskNames names devices by their kernel name (sda, nvme0n1, loop3).
type diskNames struct {
	mu    sync.Mutex
	names map[uint32]string
}

func newDiskNames() *diskNames { return &diskNames{names: map[uint32]string{}} }

// name returns the name of dev (major<<20 | minor) from
// /sys/dev/block/MAJ:MIN/uevent, or "MAJ:MIN".
func (d *diskNames) name(dev uint32) string {
	d.mu.Lock()
	defer d.mu.Unlock()
	if n, ok := d.names[dev]; ok {
		return n
	}
	majmin := fmt.Sprintf("%d:%d", dev>>20, dev&(1<<20-1))
	n := majmin
	if b, err := os.ReadFile("/sys/dev/block/" + majmin + "/uevent"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "DEVNAME="); ok {
				n = v
			}
		}
	}
	d.names[dev] = n
	return n
}
