//go:build ignore

/* SPDX-License-Identifier: GPL-2.0-only OR BSD-2-Clause */
/*
 * TCP retransmits per cgroup. The tracepoint fires mostly in softirq (the
 * retransmit timer, incoming ACKs), where the current task is whoever the
 * interrupt landed on, so a retransmit is charged to the cgroup recorded
 * in the socket when it was created (sk->sk_cgrp_data, what
 * bpf_sk_cgroup_id reports), which lives in the v2 hierarchy. Under
 * CGROUP_V1_MEMORY that is not the pod's cgroup, so every retransmit is
 * charged to cgroup 0: the node.
 */
#include "common.h"

/* cgroup id (0: the node) -> retransmitted segments. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_CGROUPS);
	__type(key, u64);
	__type(value, u64);
} tcp_retransmits SEC(".maps");

SEC("tp_btf/tcp_retransmit_skb")
int BPF_PROG(tcp_retransmit_skb, const struct sock *sk)
{
	u64 cgroup = 0;

	if (cgroup_mode == CGROUP_V2)
		cgroup = sk->sk_cgrp_data.cgroup->kn->id;
	count(&tcp_retransmits, &cgroup);
	return 0;
}
