//go:build ignore

/* SPDX-License-Identifier: GPL-2.0-only OR BSD-2-Clause */
/*
 * Process execs per cgroup: sched_process_exec runs in the exec'ing task,
 * so the current task's cgroup is the one to charge.
 */
#include "common.h"

/* cgroup id -> successful execve calls in it. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_CGROUPS);
	__type(key, u64);
	__type(value, u64);
} execs SEC(".maps");

SEC("tp_btf/sched_process_exec")
int BPF_PROG(sched_process_exec)
{
	u64 cgroup = current_cgroup_id();

	count(&execs, &cgroup);
	return 0;
}
