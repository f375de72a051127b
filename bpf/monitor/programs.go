package monitor

import (
	"errors"
	"fmt"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"

	"herd.dev/herd/bpf/programs"
)

// Program is one of the monitor's eBPF programs (an object of
// bpf/programs, attached to one or more tracepoints).
type Program string

const (
	// RunQueueLatency: a log2 histogram per cgroup of the time tasks wait
	// in a CPU's run queue (tp_btf/sched_switch).
	RunQueueLatency Program = "runqlat"
	// OOMKills: OOM kills per victim cgroup, victims through a ring buffer
	// (tp_btf/mark_victim).
	OOMKills Program = "oomkill"
	// TCPRetransmits: retransmitted TCP segments per socket cgroup
	// (tp_btf/tcp_retransmit_skb).
	TCPRetransmits Program = "tcpretrans"
	// Execs: successful execve calls per cgroup (tp_btf/sched_process_exec).
	Execs Program = "execs"
	// BlockIOLatency: a log2 histogram per disk of the time from issuing a
	// request to the driver to its completion (tp_btf/block_rq_issue,
	// tp_btf/block_rq_complete).
	BlockIOLatency Program = "biolatency"
)

// AllPrograms lists every program, in the order they load.
var AllPrograms = []Program{RunQueueLatency, OOMKills, TCPRetransmits, Execs, BlockIOLatency}

// tracepoint is a BTF-enabled tracepoint a program attaches to and the
// types of the arguments it reads (index 0 is the first argument after
// the context; "" leaves an argument unchecked).
type tracepoint struct {
	name string
	args []string
}

// member is a kernel struct member a program reads, and what the kernel
// lacks when it is missing.
type member struct {
	typ, name, lacking string
}

// programDef says how to load a program and what it needs of the kernel.
type programDef struct {
	load        func() (*ebpf.CollectionSpec, error)
	tracepoints []tracepoint
	members     []member
	// cgroupMaps are sized by Options.MaxCgroups.
	cgroupMaps []string
	ringBuffer bool
	// configure sets what the program learns from the kernel's BTF.
	configure func(spec *ebpf.CollectionSpec, kernel *btf.Spec) error
}

var taskCgroupMembers = []member{
	{"task_struct", "cgroups", "task_struct.cgroups (CONFIG_CGROUPS)"},
	{"css_set", "dfl_cgrp", "css_set.dfl_cgrp"},
	{"css_set", "subsys", "css_set.subsys"},
	{"cgroup", "kn", "cgroup.kn"},
	{"kernfs_node", "id", "a 64-bit kernfs_node.id (Linux 5.5)"},
}

var definitions = map[Program]programDef{
	RunQueueLatency: {
		load:        programs.LoadRunqlat,
		tracepoints: []tracepoint{{"sched_switch", []string{"bool", "*task_struct", "*task_struct"}}},
		members: append([]member{
			{"sched_info", "last_queued", "sched_info.last_queued (CONFIG_SCHED_INFO)"},
			{"sched_entity", "cfs_rq", "sched_entity.cfs_rq (CONFIG_FAIR_GROUP_SCHED)"},
			{"cfs_rq", "rq", "cfs_rq.rq (CONFIG_FAIR_GROUP_SCHED)"},
			{"rq", "clock", "rq.clock"},
		}, taskCgroupMembers...),
		cgroupMaps: []string{programs.RunqlatMapRunqLatency},
	},
	OOMKills: {
		load:        programs.LoadOomkill,
		tracepoints: []tracepoint{{"mark_victim", []string{"*task_struct", ""}}},
		members:     taskCgroupMembers,
		cgroupMaps:  []string{programs.OomkillMapOomKills},
		ringBuffer:  true,
	},
	TCPRetransmits: {
		load:        programs.LoadTcpretrans,
		tracepoints: []tracepoint{{"tcp_retransmit_skb", []string{"*sock"}}},
		members: []member{
			{"sock", "sk_cgrp_data", "sock.sk_cgrp_data (CONFIG_SOCK_CGROUP_DATA)"},
			{"sock_cgroup_data", "cgroup", "sock_cgroup_data.cgroup (Linux 5.15)"},
			{"cgroup", "kn", "cgroup.kn"},
		},
		cgroupMaps: []string{programs.TcpretransMapTcpRetransmits},
	},
	Execs: {
		load:        programs.LoadExecs,
		tracepoints: []tracepoint{{"sched_process_exec", nil}},
		members:     taskCgroupMembers,
		cgroupMaps:  []string{programs.ExecsMapExecs},
	},
	BlockIOLatency: {
		load: programs.LoadBiolatency,
		tracepoints: []tracepoint{
			{"block_rq_issue", []string{"*request"}},
			{"block_rq_complete", []string{"*request", "", "unsigned int"}},
		},
		members: []member{
			{"request", "q", "request.q"},
			{"request", "__data_len", "request.__data_len"},
			{"request", "io_start_time_ns", "request.io_start_time_ns"},
			{"request_queue", "queue_flags", "request_queue.queue_flags"},
			{"request_queue", "disk", "request_queue.disk (Linux 5.15)"},
			{"gendisk", "major", "gendisk.major"},
			{"gendisk", "first_minor", "gendisk.first_minor"},
		},
		configure: setQueueFlagStats,
	},
}

// UnsupportedError says why this kernel cannot run a program.
type UnsupportedError struct {
	Program Program
	// Missing names the kernel feature, type or configuration lacking.
	Missing string
}

func (e *UnsupportedError) Error() string {
	return fmt.Sprintf("program %s: kernel lacks %s", e.Program, e.Missing)
}

// checkKernel tells whether the kernel's BTF has the tracepoints and
// members program p reads, so that a missing one is named instead of
// surfacing as a CO-RE relocation failure.
func checkKernel(p Program, def programDef, kernel *btf.Spec) error {
	for _, tp := range def.tracepoints {
		if err := checkTracepoint(kernel, tp); err != nil {
			return &UnsupportedError{Program: p, Missing: err.Error()}
		}
	}
	for _, m := range def.members {
		if !hasMember(kernel, m.typ, m.name) {
			return &UnsupportedError{Program: p, Missing: m.lacking}
		}
	}
	return nil
}

func checkTracepoint(kernel *btf.Spec, tp tracepoint) error {
	var td *btf.Typedef
	if err := kernel.TypeByName("btf_trace_"+tp.name, &td); err != nil {
		return fmt.Errorf("the BTF-enabled tracepoint %s", tp.name)
	}
	ptr, ok := td.Type.(*btf.Pointer)
	if !ok {
		return fmt.Errorf("tracepoint %s with a known prototype", tp.name)
	}
	proto, ok := ptr.Target.(*btf.FuncProto)
	if !ok || len(proto.Params) < len(tp.args)+1 {
		return fmt.Errorf("tracepoint %s with arguments %s", tp.name, strings.Join(tp.args, ", "))
	}
	for i, want := range tp.args {
		if got := typeName(proto.Params[i+1].Type); want != "" && got != want {
			return fmt.Errorf("tracepoint %s with argument %d of type %s (it is %s)", tp.name, i, want, got)
		}
	}
	return nil
}

// typeName names t as the checks above spell it: "*task_struct", "bool",
// "unsigned int", qualifiers and typedefs removed.
func typeName(t btf.Type) string {
	for {
		switch v := t.(type) {
		case *btf.Const:
			t = v.Type
		case *btf.Volatile:
			t = v.Type
		case *btf.Typedef:
			if v.Name == "bool" {
				return "bool"
			}
			t = v.Type
		case *btf.Pointer:
			return "*" + typeName(v.Target)
		case *btf.Int:
			if v.Name == "_Bool" {
				return "bool"
			}
			return v.Name
		default:
			return t.TypeName()
		}
	}
}

func hasMember(kernel *btf.Spec, typ, name string) bool {
	var s *btf.Struct
	if err := kernel.TypeByName(typ, &s); err != nil {
		return false
	}
	for _, m := range s.Members {
		if m.Name == name {
			return true
		}
	}
	return false
}

// errorReason shortens a load error to one line for a metric label.
func errorReason(err error) string {
	var u *UnsupportedError
	if errors.As(err, &u) {
		return "kernel lacks " + u.Missing
	}
	s := err.Error()
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	if len(s) > 200 {
		s = s[:200]
	}
	return s
}

// setQueueFlagStats tells biolatency which bit of queue_flags is
// QUEUE_FLAG_STATS (queues that stamp io_start_time_ns themselves). It is
// an anonymous enum since Linux 6.11 and a #define before, so CO-RE cannot
// relocate it; when the kernel's BTF does not name it, biolatency stamps
// every request itself.
func setQueueFlagStats(spec *ebpf.CollectionSpec, kernel *btf.Spec) error {
	for typ, err := range kernel.All() {
		if err != nil {
			return err
		}
		e, ok := typ.(*btf.Enum)
		if !ok || e.Name != "" {
			continue
		}
		for _, v := range e.Values {
			if v.Name == "QUEUE_FLAG_STATS" && v.Value < 64 {
				return spec.Variables[programs.BiolatencyVarQueueFlagStats].Set(uint32(v.Value))
			}
		}
	}
	return nil
}
