// SPDX-License-Identifier: GPL-2.0 OR Apache-2.0
// One pass over the kernel's tasks (iter/task) that writes, for every thread of the thread
// groups in `watched_tgids`, the fields stallmon's /proc sampler reads from stat, schedstat and
// status, the ids of its cgroups (what /proc/TID/cgroup names), plus the kernel stack of threads in the states user space asks for (the wchan and
// /proc/TID/stack equivalent). Records go to the iterator's seq_file; user space read()s them.
//
// CO-RE against the running kernel's BTF: fields that moved or were renamed between kernels
// are probed with bpf_core_field_exists, never by kernel version.
#include "vmlinux.h"

#include <bpf/bpf_core_read.h>
#include <bpf/bpf_helpers.h>

#include "task_stats_record.h"

char LICENSE[] SEC("license") = "GPL";

// tgid → 1. Sized for 4096 qemu processes; user space rejects more.
struct {
  __uint(type, BPF_MAP_TYPE_HASH);
  __uint(max_entries, STALLMON_BPF_MAX_TGIDS);
  __type(key, __u32);
  __type(value, __u8);
} watched_tgids SEC(".maps");

// Per-thread rate limit of stack reads: tid → time of the last one and the state it was in.
struct stack_seen {
  __u64 t_ns;
  __u32 state;
  __u32 pad;
};
struct {
  __uint(type, BPF_MAP_TYPE_LRU_HASH);
  __uint(max_entries, 65536);
  __type(key, __u32);
  __type(value, struct stack_seen);
} stack_seen SEC(".maps");

// Set by user space (mmapped .bss/.data) before a pass.
__u32 stack_state_mask = 0;  // bit i: read the stack of threads in report state i (0 R, 1 S, 2 D, 3 T, 4 t)
__u64 stack_interval_ns = 1000000000ULL;
__u64 pass_now_ns = 0;

// Kernels before 5.14 call the state field `state`.
struct task_struct___pre514 {
  long state;
} __attribute__((preserve_access_index));

// Before 5.16 the CPU lived in task_struct, before 5.5 there was no start_boottime.
struct task_struct___old {
  unsigned int cpu;
  __u64 real_start_time;
} __attribute__((preserve_access_index));

static __always_inline __u32 task_cpu(struct task_struct *t) {
  if (bpf_core_field_exists(t->thread_info.cpu)) return t->thread_info.cpu;
  struct task_struct___old *old = (void *)t;
  return BPF_CORE_READ(old, cpu);
}

static __always_inline __u64 task_start_boottime(struct task_struct *t) {
  if (bpf_core_field_exists(t->start_boottime)) return t->start_boottime;
  struct task_struct___old *old = (void *)t;
  return BPF_CORE_READ(old, real_start_time);
}

static __always_inline __u32 task_state_raw(struct task_struct *t) {
  if (bpf_core_field_exists(t->__state)) return t->__state;
  struct task_struct___pre514 *old = (void *)t;
  return (__u32)BPF_CORE_READ(old, state);
}

// A cgroup's kernfs id. Before 5.5 kernfs_node.id was a union (ino + generation): then 0, and
// user space keeps re-reading memberships on its own schedule.
static __always_inline __u64 cgroup_kn_id(struct cgroup *cg) {
  if (!cg) return 0;
  struct kernfs_node *kn = BPF_CORE_READ(cg, kn);
  if (!kn || !bpf_core_field_exists(kn->id)) return 0;
  if (bpf_core_field_size(kn->id) != sizeof(__u64)) return 0;
  return BPF_CORE_READ(kn, id);
}

static __always_inline void task_cgroup_ids(struct task_struct *t, __u64 *v2_id, __u64 *cpu_id) {
  *v2_id = 0;
  *cpu_id = 0;
  struct css_set *cs = BPF_CORE_READ(t, cgroups);
  if (!cs) return;
  *v2_id = cgroup_kn_id(BPF_CORE_READ(cs, dfl_cgrp));
  // Kernels without CONFIG_CGROUP_SCHED have no cpu controller.
  if (!bpf_core_enum_value_exists(enum cgroup_subsys_id, cpu_cgrp_id)) return;
  const int idx = bpf_core_enum_value(enum cgroup_subsys_id, cpu_cgrp_id);
  if (idx < 0 || idx >= (int)(bpf_core_field_size(cs->subsys) / sizeof(void *))) return;
  struct cgroup_subsys_state *css = NULL;
  bpf_core_read(&css, sizeof css, &cs->subsys[idx]);
  if (css) *cpu_id = cgroup_kn_id(BPF_CORE_READ(css, cgroup));
}

// Scratch for one record (stack included): too big for the 512-byte BPF stack.
struct {
  __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
  __uint(max_entries, 1);
  __type(key, __u32);
  __type(value, struct stallmon_task_record);
} scratch SEC(".maps");

SEC("iter/task")
int stallmon_task_stats(struct bpf_iter__task *ctx) {
  struct seq_file *seq = ctx->meta->seq;
  struct task_struct *task = ctx->task;
  if (!task) return 0;  // end of the walk
  __u32 tgid = task->tgid;
  if (!bpf_map_lookup_elem(&watched_tgids, &tgid)) return 0;

  __u32 zero = 0;
  struct stallmon_task_record *r = bpf_map_lookup_elem(&scratch, &zero);
  if (!r) return 0;
  r->tgid = tgid;
  r->tid = task->pid;
  r->state = task_state_raw(task);
  r->exit_state = task->exit_state;
  r->flags = 0;
  if (task->ptrace) r->flags |= STALLMON_REC_TRACED;
  r->cpu = task_cpu(task);
  r->run_ns = task->se.sum_exec_runtime;
  r->run_delay_ns = task->sched_info.run_delay;
  r->pcount = task->sched_info.pcount;
  r->nvcsw = task->nvcsw;
  r->nivcsw = task->nivcsw;
  r->start_boottime_ns = task_start_boottime(task);
  // Direct loads from the trusted task pointer: cheaper than a probe_read per field.
  __builtin_memcpy(r->comm, task->comm, sizeof r->comm);
  task_cgroup_ids(task, &r->cgroup_v2_id, &r->cpu_cgroup_id);
  r->stack_bytes = 0;

  __u32 report = stallmon_report_state(r->state, r->exit_state);
  long stack_bytes = 0;
  if (stack_state_mask & (1u << report)) {
    __u32 tid = r->tid;
    struct stack_seen *seen = bpf_map_lookup_elem(&stack_seen, &tid);
    if (!seen || seen->state != report || pass_now_ns - seen->t_ns >= stack_interval_ns) {
      stack_bytes = bpf_get_task_stack(task, r->stack, sizeof r->stack, 0);
      if (stack_bytes > 0) {
        r->stack_bytes = stack_bytes;
        r->flags |= STALLMON_REC_STACK;
      } else {
        r->flags |= STALLMON_REC_STACK_ERROR;
      }
      struct stack_seen now = {.t_ns = pass_now_ns, .state = report};
      bpf_map_update_elem(&stack_seen, &tid, &now, BPF_ANY);
    }
  }
  // Two writes, so the verifier sees each length bounded. A record that does not fit in the
  // seq_file buffer is shown again at the next read(): records are never split.
  bpf_seq_write(seq, r, STALLMON_REC_FIXED_BYTES);
  if (stack_bytes > 0 && stack_bytes <= (long)sizeof r->stack)
    bpf_seq_write(seq, r->stack, stack_bytes);
  return 0;
}
