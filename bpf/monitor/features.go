package monitor

import (
	"errors"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/features"
)

// kernelFeature is something of the kernel's eBPF support a program needs.
type kernelFeature int

const (
	featureBTF kernelFeature = iota
	featureTpBTF
	featureLRUHash
	featureRingBuf
	featureCgroupIDHelper
)

func (f kernelFeature) String() string {
	switch f {
	case featureBTF:
		return "kernel BTF (/sys/kernel/btf/vmlinux, CONFIG_DEBUG_INFO_BTF)"
	case featureTpBTF:
		return "BTF-enabled tracepoint programs (tp_btf, Linux 5.5)"
	case featureLRUHash:
		return "LRU hash maps (Linux 4.10)"
	case featureRingBuf:
		return "BPF ring buffers (Linux 5.8)"
	case featureCgroupIDHelper:
		return "the bpf_get_current_cgroup_id helper (Linux 4.18, CONFIG_CGROUPS)"
	}
	return "unknown feature"
}

// needs lists the features program p needs, beyond BTF.
func (d programDef) needs() []kernelFeature {
	need := []kernelFeature{featureTpBTF}
	if len(d.cgroupMaps) > 0 || d.ringBuffer {
		need = append(need, featureLRUHash)
	}
	if d.ringBuffer {
		need = append(need, featureRingBuf)
	}
	return append(need, featureCgroupIDHelper)
}

var probes = sync.OnceValue(func() map[kernelFeature]error {
	return map[kernelFeature]error{
		featureTpBTF:          probeTpBTF(),
		featureLRUHash:        features.HaveMapType(ebpf.LRUHash),
		featureRingBuf:        features.HaveMapType(ebpf.RingBuf),
		featureCgroupIDHelper: features.HaveProgramHelper(ebpf.RawTracepoint, asm.FnGetCurrentCgroupId),
	}
})

// probeTpBTF loads an empty tp_btf program for sched_switch. The
// features package cannot answer this: its probe of ebpf.Tracing loads an
// fentry program, and kernels without BPF trampolines (this project's CI
// machines among them) refuse fentry while they run tp_btf.
func probeTpBTF() error {
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:       ebpf.Tracing,
		AttachType: ebpf.AttachTraceRawTp,
		AttachTo:   "sched_switch",
		License:    "GPL",
		Instructions: asm.Instructions{
			asm.Mov.Imm(asm.R0, 0),
			asm.Return(),
		},
	})
	if err != nil {
		return err
	}
	return prog.Close()
}

// checkFeatures returns an UnsupportedError for the first feature p needs
// that the kernel lacks.
func checkFeatures(p Program, def programDef) error {
	have := probes()
	for _, f := range def.needs() {
		err := have[f]
		if errors.Is(err, ebpf.ErrNotSupported) {
			return &UnsupportedError{Program: p, Missing: f.String()}
		}
		if err != nil {
			return &UnsupportedError{Program: p, Missing: f.String() + " (probe: " + err.Error() + ")"}
		}
	}
	return nil
}
