//go:build ignore

/* SPDX-License-Identifier: GPL-2.0-only OR BSD-2-Clause */
/*
 * OOM kills: a counter per victim cgroup, and each victim's pid, command
 * and cgroup through a ring buffer.
 */
#include "common.h"

struct oom_kill {
	u64 cgroup_id;
	u32 pid;
	u32 uid;
	char comm[16];
};

/* Makes struct oom_kill part of the BTF, for the generated Go type. */
const struct oom_kill *unused_oom_kill __attribute__((unused));

/* cgroup id -> OOM kills of tasks in it. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_CGROUPS);
	__type(key, u64);
	__type(value, u64);
} oom_kills SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 64 * 1024);
} oom_victims SEC(".maps");

/* mark_victim runs in the context of the task that chose the victim, so
 * everything is read from the victim's task_struct. */
SEC("tp_btf/mark_victim")
int BPF_PROG(mark_victim, struct task_struct *task, u32 uid)
{
	struct oom_kill *e;
	u64 cgroup = task_cgroup_id(task);

	count(&oom_kills, &cgroup);
	e = bpf_ringbuf_reserve(&oom_victims, sizeof(*e), 0);
	if (!e) {
		drop();
		return 0;
	}
	e->cgroup_id = cgroup;
	e->pid = task->tgid;
	e->uid = uid;
	__builtin_memcpy(e->comm, task->comm, sizeof(e->comm));
	bpf_ringbuf_submit(e, 0);
	return 0;
}
