/* SPDX-License-Identifier: GPL-2.0-only OR BSD-2-Clause */
/*
 * The kernel types the monitor's programs read, reduced to the fields they
 * use. preserve_access_index makes every access a CO-RE relocation, so the
 * loader fixes offsets up against the running kernel's BTF
 * (/sys/kernel/btf/vmlinux) and no vmlinux.h of one build machine is needed:
 * the objects are the same wherever they are regenerated.
 */
#ifndef HERD_KERNEL_H
#define HERD_KERNEL_H

typedef unsigned char __u8;
typedef unsigned short __u16;
typedef unsigned int __u32;
typedef unsigned long long __u64;
typedef signed int __s32;
typedef signed long long __s64;
typedef __u8 u8;
typedef __u16 u16;
typedef __u32 u32;
typedef __u64 u64;
typedef __s32 s32;
typedef __s64 s64;
typedef __u16 __be16;
typedef __u32 __be32;
typedef __u32 __wsum;
typedef _Bool bool;
#define true 1
#define false 0

enum bpf_map_type {
	BPF_MAP_TYPE_HASH = 1,
	BPF_MAP_TYPE_ARRAY = 2,
	BPF_MAP_TYPE_LRU_HASH = 9,
	BPF_MAP_TYPE_RINGBUF = 27,
};

enum {
	BPF_ANY = 0,
	BPF_NOEXIST = 1,
	BPF_EXIST = 2,
};

#pragma clang attribute push(__attribute__((preserve_access_index)), apply_to = record)

struct kernfs_node {
	u64 id;
};

struct cgroup {
	struct kernfs_node *kn;
};

struct cgroup_subsys_state {
	struct cgroup *cgroup;
};

struct css_set {
	struct cgroup_subsys_state *subsys[12];
	struct cgroup *dfl_cgrp;
};

struct rq {
	u64 clock;
};

struct cfs_rq {
	struct rq *rq;
};

struct sched_entity {
	struct cfs_rq *cfs_rq;
};

struct sched_info {
	unsigned long long last_queued;
};

struct task_struct {
	int pid;
	int tgid;
	char comm[16];
	struct css_set *cgroups;
	struct sched_entity se;
	struct sched_info sched_info;
};

struct sock_cgroup_data {
	struct cgroup *cgroup;
};

struct sock {
	struct sock_cgroup_data sk_cgrp_data;
};

struct sk_buff;
struct linux_binprm;

struct gendisk {
	int major;
	int first_minor;
};

struct request_queue {
	unsigned long queue_flags;
	struct gendisk *disk;
};

struct request {
	struct request_queue *q;
	unsigned int __data_len;
	u64 io_start_time_ns;
};

#pragma clang attribute pop

enum cgroup_subsys_id {
	memory_cgrp_id = 4,
};

#endif
