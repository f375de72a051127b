//go:build ignore

/* SPDX-License-Identifier: GPL-2.0-only OR BSD-2-Clause */
/*
 * Run-queue latency per cgroup: the time from a task becoming runnable
 * (woken, newly forked, or preempted while still runnable) to it running on
 * a CPU, as a log2 histogram per cgroup.
 *
 * The scheduler already stamps that moment: sched_info_enqueue sets
 * task->sched_info.last_queued to the run queue's clock whenever a task is
 * queued (the wakeup, wakeup_new and preemption paths alike), and
 * sched_info_arrive turns it into the task's schedstat run_delay right
 * after the sched_switch tracepoint. So one program on sched_switch reads
 * the stamp of the task switched in and the run queue's clock, updated by
 * __schedule just before: the same interval as a wakeup -> switch pair of
 * programs, with no map of pids and no clock read of its own.
 */
#include "common.h"

/* cgroup id -> histogram of run-queue latency. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_CGROUPS);
	__type(key, u64);
	__type(value, struct hist);
} runq_latency SEC(".maps");

SEC("tp_btf/sched_switch")
int BPF_PROG(sched_switch, bool preempt, struct task_struct *prev, struct task_struct *next)
{
	u64 queued = next->sched_info.last_queued, now, cgroup;

	if (!queued) /* not queued through enqueue_task: the idle task */
		return 0;
	now = next->se.cfs_rq->rq->clock;
	if (now < queued)
		return 0;
	cgroup = task_cgroup_id(next);
	hist_add(&runq_latency, &cgroup, now - queued);
	return 0;
}
