//go:build ignore

/* SPDX-License-Identifier: GPL-2.0-only OR BSD-2-Clause */
/*
 * Block I/O latency per device: from a request's issue to the driver until
 * its completion, as a log2 histogram per disk (major:minor of the whole
 * disk, the kernel's dev_t encoding: major << 20 | minor).
 */
#include "common.h"

#define MAX_INFLIGHT 16384

/* request -> when it was issued (ns). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_INFLIGHT);
	__type(key, u64);
	__type(value, u64);
} bio_issued SEC(".maps");

/* device -> histogram of I/O latency. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1024);
	__type(key, u32);
	__type(value, struct hist);
} bio_latency SEC(".maps");

SEC("tp_btf/block_rq_issue")
int BPF_PROG(block_rq_issue, struct request *rq)
{
	u64 key = (u64)rq, now = bpf_ktime_get_ns();

	if (bpf_map_update_elem(&bio_issued, &key, &now, BPF_ANY))
		drop();
	return 0;
}

/* A request may complete in parts; only the last part (the bytes left in the
 * request) ends it. */
SEC("tp_btf/block_rq_complete")
int BPF_PROG(block_rq_complete, struct request *rq, int error, unsigned int nr_bytes)
{
	u64 key = (u64)rq, *issued, delta;
	struct gendisk *disk;
	u32 dev;

	if (nr_bytes < rq->__data_len)
		return 0;
	issued = bpf_map_lookup_elem(&bio_issued, &key);
	if (!issued)
		return 0;
	delta = bpf_ktime_get_ns() - *issued;
	bpf_map_delete_elem(&bio_issued, &key);
	disk = rq->q->disk;
	if (!disk)
		return 0;
	dev = (u32)disk->major << 20 | (u32)disk->first_minor;
	hist_add(&bio_latency, &dev, delta);
	return 0;
}
