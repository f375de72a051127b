//go:build ignore

/* SPDX-License-Identifier: GPL-2.0-only OR BSD-2-Clause */
/*
 * Block I/O latency per device: from a request's issue to the driver until
 * its completion, as a log2 histogram per disk (major:minor of the whole
 * disk, the kernel's dev_t encoding: major << 20 | minor).
 *
 * Queues with I/O statistics callbacks (QUEUE_FLAG_STATS: writeback
 * throttling, on by default, sets it) stamp rq->io_start_time_ns at issue
 * themselves, right after block_rq_issue; for those the issue program
 * returns at once and the completion reads the kernel's stamp: one clock
 * read and no map update per request. Other queues' requests are stamped
 * here, in a map keyed by the request. Passthrough requests (SG_IO) on a
 * stats queue carry no stamp and are not timed.
 */
#include "common.h"

#define MAX_INFLIGHT 16384
#define FLAG_UNKNOWN 64

/* Bit of QUEUE_FLAG_STATS in request_queue.queue_flags, from the kernel's
 * BTF (an anonymous enum, out of CO-RE's reach); FLAG_UNKNOWN stamps
 * every request here. */
const volatile u32 queue_flag_stats = FLAG_UNKNOWN;

/* request -> when it was issued (ns), for queues that do not stamp it. */
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

static __always_inline bool kernel_stamps(struct request *rq)
{
	return queue_flag_stats < FLAG_UNKNOWN && (rq->q->queue_flags >> queue_flag_stats) & 1;
}

SEC("tp_btf/block_rq_issue")
int BPF_PROG(block_rq_issue, struct request *rq)
{
	u64 key = (u64)rq, now;

	if (kernel_stamps(rq))
		return 0;
	now = bpf_ktime_get_ns();
	if (bpf_map_update_elem(&bio_issued, &key, &now, BPF_ANY))
		drop();
	return 0;
}

/* A request may complete in parts; only the last part (the bytes left in the
 * request) ends it. */
SEC("tp_btf/block_rq_complete")
int BPF_PROG(block_rq_complete, struct request *rq, int error, unsigned int nr_bytes)
{
	u64 key = (u64)rq, issued, *stamp, now;
	struct gendisk *disk;
	u32 dev;

	if (nr_bytes < rq->__data_len)
		return 0;
	issued = rq->io_start_time_ns;
	if (!issued) {
		stamp = bpf_map_lookup_elem(&bio_issued, &key);
		if (!stamp)
			return 0;
		issued = *stamp;
		bpf_map_delete_elem(&bio_issued, &key);
	}
	now = bpf_ktime_get_ns();
	disk = rq->q->disk;
	if (!disk || now < issued)
		return 0;
	dev = (u32)disk->major << 20 | (u32)disk->first_minor;
	hist_add(&bio_latency, &dev, now - issued);
	return 0;
}
