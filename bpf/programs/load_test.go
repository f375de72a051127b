package programs

import (
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// TestLoad loads every object in both cgroup modes into this kernel and
// attaches its programs: the verifier and the CO-RE relocations accept them.
func TestLoad(t *testing.T) {
	loaders := map[string]func() (*ebpf.CollectionSpec, error){
		"runqlat": LoadRunqlat, "oomkill": LoadOomkill, "tcpretrans": LoadTcpretrans,
		"execs": LoadExecs, "biolatency": LoadBiolatency,
	}
	for name, load := range loaders {
		for _, mode := range []uint32{0, 1} {
			spec, err := load()
			if err != nil {
				t.Fatal(err)
			}
			if err := spec.Variables["cgroup_mode"].Set(mode); err != nil {
				t.Fatal(err)
			}
			coll, err := ebpf.NewCollection(spec)
			if err != nil {
				t.Fatalf("%s mode %d: %v", name, mode, err)
			}
			for pname, p := range coll.Programs {
				l, err := link.AttachTracing(link.TracingOptions{Program: p})
				if err != nil {
					t.Fatalf("%s/%s: %v", name, pname, err)
				}
				l.Close()
			}
			coll.Close()
		}
	}
}
