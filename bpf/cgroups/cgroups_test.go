package cgroups_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"herd.dev/herd/bpf/cgroups"
	"herd.dev/herd/bpf/internal/testkernel"
)

func TestParsePath(t *testing.T) {
	const uid = "1a2b3c4d-0000-1111-2222-333344445555"
	const id = "3f1e2d4c5b6a79880123456789abcdef0123456789abcdef0123456789abcdef"
	under := strings.ReplaceAll(uid, "-", "_")
	tests := []struct {
		path string
		want cgroups.Container
	}{
		{"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + under + ".slice/cri-containerd-" + id + ".scope", cgroups.Container{PodUID: uid, ID: id}},
		{"/kubepods.slice/kubepods-pod" + under + ".slice/crio-" + id + ".scope", cgroups.Container{PodUID: uid, ID: id}},
		{"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + under + ".slice", cgroups.Container{PodUID: uid}},
		{"/kubepods.slice/kubepods-pod" + under + ".slice/crio-conmon-" + id + ".scope", cgroups.Container{PodUID: uid}},
		{"/kubepods/burstable/pod" + uid + "/" + id, cgroups.Container{PodUID: uid, ID: id}},
		{"/kubepods/pod" + uid + "/" + id + "/init.scope", cgroups.Container{PodUID: uid, ID: id}},
		{"/kubepods.slice/kubepods-burstable.slice", cgroups.Container{}},
		{"/system.slice/containerd.service", cgroups.Container{}},
		{"/", cgroups.Container{}},
	}
	for _, tt := range tests {
		if diff := cmp.Diff(tt.want, cgroups.ParsePath(tt.path)); diff != "" {
			t.Errorf("ParsePath(%q) (-want +got):\n%s", tt.path, diff)
		}
	}
}

func TestDetect(t *testing.T) {
	hybrid := []cgroups.Mount{
		{Point: "/sys/fs/cgroup/cpu", FSType: "cgroup", Options: []string{"rw", "cpu"}},
		{Point: "/sys/fs/cgroup/memory", FSType: "cgroup", Options: []string{"rw", "memory"}},
		{Point: "/sys/fs/cgroup/unified", FSType: "cgroup2", Options: []string{"rw"}},
	}
	unified := []cgroups.Mount{{Point: "/sys/fs/cgroup", FSType: "cgroup2", Options: []string{"rw"}}}
	tests := []struct {
		mode   cgroups.Mode
		mounts []cgroups.Mount
		want   cgroups.Hierarchy
		err    bool
	}{
		{cgroups.Auto, hybrid, cgroups.Hierarchy{Mode: cgroups.V1Memory, Root: "/sys/fs/cgroup/memory"}, false},
		{cgroups.Auto, unified, cgroups.Hierarchy{Mode: cgroups.V2, Root: "/sys/fs/cgroup"}, false},
		{cgroups.V2, hybrid, cgroups.Hierarchy{Mode: cgroups.V2, Root: "/sys/fs/cgroup/unified"}, false},
		{cgroups.V1Memory, unified, cgroups.Hierarchy{}, true},
		{cgroups.V2, hybrid[:2], cgroups.Hierarchy{}, true},
	}
	for _, tt := range tests {
		got, err := cgroups.Detect(tt.mode, tt.mounts)
		if (err != nil) != tt.err || got != tt.want {
			t.Errorf("Detect(%v, %v) = %v, %v; want %v, error %v", tt.mode, tt.mounts, got, err, tt.want, tt.err)
		}
	}
}

func TestMountsOfThisNode(t *testing.T) {
	mounts, err := cgroups.Mounts()
	if err != nil {
		t.Fatal(err)
	}
	if len(mounts) == 0 {
		t.Fatal("no cgroup mounts in /proc/self/mountinfo")
	}
}

// TestResolver resolves ids of cgroups the test creates, in both kinds of
// hierarchy, to their paths, and reports them gone once removed.
func TestResolver(t *testing.T) {
	for _, mode := range []cgroups.Mode{cgroups.V2, cgroups.V1Memory} {
		t.Run(mode.String(), func(t *testing.T) {
			h := testkernel.Hierarchy(t, mode)
			cg := testkernel.NewCgroup(t, h, "a/b")
			r, err := cgroups.NewResolver(h)
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			got, err := r.Path(cg.ID)
			if err != nil || got != cg.Path {
				t.Fatalf("Path(%d) = %q, %v; want %q", cg.ID, got, err, cg.Path)
			}
			root, err := cgroups.ID(h.Root)
			if err != nil {
				t.Fatal(err)
			}
			if got, err := r.Path(root); err != nil || got != "/" {
				t.Errorf("Path(root) = %q, %v; want /", got, err)
			}
			if !r.Alive(cg.ID) {
				t.Errorf("Alive(%d) = false for an existing cgroup", cg.ID)
			}
			if err := os.Remove(cg.Dir()); err != nil {
				t.Fatal(err)
			}
			if r.Alive(cg.ID) {
				t.Errorf("Alive(%d) = true after removal", cg.ID)
			}
			r.Forget(cg.ID)
			if _, err := r.Path(cg.ID); !errors.Is(err, cgroups.ErrGone) {
				t.Errorf("Path of a removed cgroup: %v, want ErrGone", err)
			}
		})
	}
}

// TestDetectRoot finds the hierarchies under this machine's cgroup root,
// as an agent in a container finds them under the host's.
func TestDetectRoot(t *testing.T) {
	v2 := testkernel.Hierarchy(t, cgroups.V2)
	v1 := testkernel.Hierarchy(t, cgroups.V1Memory)
	for _, tt := range []struct {
		mode cgroups.Mode
		root string
		want cgroups.Hierarchy
	}{
		{cgroups.Auto, v2.Root, v2},
		{cgroups.V2, v2.Root, v2},
		{cgroups.V1Memory, v1.Root, v1},
		{cgroups.Auto, filepath.Dir(v1.Root), v1}, // the v1 layout: a tmpfs of controllers
	} {
		got, err := cgroups.DetectRoot(tt.mode, tt.root)
		if err != nil || got != tt.want {
			t.Errorf("DetectRoot(%v, %s) = %v, %v; want %v", tt.mode, tt.root, got, err, tt.want)
		}
	}
	for _, root := range []string{t.TempDir(), filepath.Join(filepath.Dir(v1.Root), "cpu")} {
		if h, err := cgroups.DetectRoot(cgroups.Auto, root); err == nil {
			t.Errorf("DetectRoot(auto, %s) = %v, want an error", root, h)
		}
	}
}
