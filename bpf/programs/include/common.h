/* SPDX-License-Identifier: GPL-2.0-only OR BSD-2-Clause */
/*
 * What the monitor's programs share: how a task's cgroup is named, log2
 * histograms of latencies, counters, and the count of events a program
 * could not record (never a silent zero).
 */
#ifndef HERD_COMMON_H
#define HERD_COMMON_H

#include "kernel.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>

/* Bounds of the in-kernel maps; the loader may lower or raise them. */
#define MAX_CGROUPS 10240

/* cgroup_mode values: which hierarchy names a task's cgroup. */
#define CGROUP_V2 0        /* the unified (v2) hierarchy: kubepods on cgroup v2 nodes */
#define CGROUP_V1_MEMORY 1 /* the v1 memory controller's hierarchy, on v1-only nodes */

/* Set by the loader before the program is loaded. */
const volatile u32 cgroup_mode = CGROUP_V2;

/* Events this object could not record: a full map or ring buffer. */
u64 dropped = 0;

/* HIST_SLOTS log2 buckets of microseconds: slot 0 counts latencies under
 * 1 us, slot k (1 <= k < HIST_SLOTS-1) those in [2^(k-1), 2^k) us, and the
 * last slot everything from 2^(HIST_SLOTS-2) us on. */
#define HIST_SLOTS 28

/* sum_ns first: it shares a cache line with the short latencies' slots,
 * so a typical event dirties one line. */
struct hist {
	u64 sum_ns;
	u64 slots[HIST_SLOTS];
};

static const struct hist zero_hist;

static __always_inline void drop(void)
{
	__sync_fetch_and_add(&dropped, 1);
}

/* The kernfs id of task's cgroup: the inode number of its directory in the
 * hierarchy cgroup_mode names, and what bpf_get_current_cgroup_id returns
 * for the current task on the v2 hierarchy. The programs are BTF-enabled
 * tracepoints (tp_btf), so these are plain loads the verifier checks
 * against the kernel's BTF, not bpf_probe_read calls. */
static __always_inline u64 task_cgroup_id(struct task_struct *task)
{
	if (cgroup_mode == CGROUP_V1_MEMORY) {
		int memory = bpf_core_enum_value(enum cgroup_subsys_id, memory_cgrp_id);

		return task->cgroups->subsys[memory]->cgroup->kn->id;
	}
	return task->cgroups->dfl_cgrp->kn->id;
}

static __always_inline u64 current_cgroup_id(void)
{
	if (cgroup_mode == CGROUP_V2)
		return bpf_get_current_cgroup_id();
	return task_cgroup_id(bpf_get_current_task_btf());
}

/* floor(log2(v)) for v > 0, without loops. */
static __always_inline u32 log2_u64(u64 v)
{
	u32 r, shift;

	r = (v > 0xFFFFFFFF) << 5;
	v >>= r;
	shift = (v > 0xFFFF) << 4;
	v >>= shift;
	r |= shift;
	shift = (v > 0xFF) << 3;
	v >>= shift;
	r |= shift;
	shift = (v > 0xF) << 2;
	v >>= shift;
	r |= shift;
	shift = (v > 0x3) << 1;
	v >>= shift;
	r |= shift;
	r |= (v >> 1);
	return r;
}

static __always_inline u64 hist_slot(u64 delta_ns)
{
	u64 us = delta_ns / 1000, slot;

	if (!us)
		return 0;
	slot = log2_u64(us) + 1;
	/* Keeps the compiler from folding the bound the verifier needs. */
	barrier_var(slot);
	if (slot >= HIST_SLOTS)
		slot = HIST_SLOTS - 1;
	return slot;
}

/* hist_add records one latency in the histogram of key in map. */
static __always_inline void hist_add(void *map, const void *key, u64 delta_ns)
{
	struct hist *h = bpf_map_lookup_elem(map, key);

	if (!h) {
		bpf_map_update_elem(map, key, &zero_hist, BPF_NOEXIST);
		h = bpf_map_lookup_elem(map, key);
		if (!h) {
			drop();
			return;
		}
	}
	__sync_fetch_and_add(&h->slots[hist_slot(delta_ns)], 1);
	__sync_fetch_and_add(&h->sum_ns, delta_ns);
}

/* count adds one to the counter of key in map. */
static __always_inline void count(void *map, const void *key)
{
	static const u64 zero;
	u64 *v = bpf_map_lookup_elem(map, key);

	if (!v) {
		bpf_map_update_elem(map, key, &zero, BPF_NOEXIST);
		v = bpf_map_lookup_elem(map, key);
		if (!v) {
			drop();
			return;
		}
	}
	__sync_fetch_and_add(v, 1);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#endif
