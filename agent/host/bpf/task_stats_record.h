// SPDX-License-Identifier: GPL-2.0 OR Apache-2.0
// The record the task-iterator program writes per thread, shared by the BPF program (C, BPF
// target) and the reader in bpf_thread_stat_source.cc. Fixed part first, then stack_bytes bytes
// of kernel return addresses (innermost first). Little-endian host layout, no padding holes.
#ifndef STALLMON_TASK_STATS_RECORD_H
#define STALLMON_TASK_STATS_RECORD_H

#define STALLMON_BPF_MAX_TGIDS 4096
#define STALLMON_BPF_MAX_STACK 64  // frames, like the /proc sampler's kMaxStackFrames

#define STALLMON_REC_TRACED 1u
#define STALLMON_REC_STACK 2u        // stack_bytes of return addresses follow
#define STALLMON_REC_STACK_ERROR 4u  // a stack was wanted and bpf_get_task_stack failed

struct stallmon_task_record {
  __u32 tgid;
  __u32 tid;
  __u32 state;       // task_struct::__state (raw)
  __u32 exit_state;
  __u32 flags;
  __u32 cpu;
  __u64 run_ns;      // se.sum_exec_runtime (schedstat field 1)
  __u64 run_delay_ns;  // sched_info.run_delay (schedstat field 2)
  __u64 pcount;      // sched_info.pcount (schedstat field 3)
  __u64 nvcsw;
  __u64 nivcsw;
  __u64 start_boottime_ns;  // /proc stat field 22, in ns
  char comm[16];
  // Kernfs ids (the cgroup directory's inode number) of the thread's cgroup in the unified (v2)
  // hierarchy and of its cpu controller's cgroup (v1 or v2); 0 when the kernel cannot say. They
  // change when the thread moves: user space re-reads /proc/TID/cgroup only then.
  __u64 cgroup_v2_id;
  __u64 cpu_cgroup_id;
  __u32 stack_bytes;
  __u32 pad;
  __u64 stack[STALLMON_BPF_MAX_STACK];
};
#define STALLMON_REC_FIXED_BYTES 112  // offsetof(struct stallmon_task_record, stack)

// The /proc state index (fs/proc/array.c task_state_array, "RSDTtXZPI"): the kernel's
// task_state_index(). Flag values have been stable since 4.14 (TASK_REPORT_IDLE etc.).
static inline __u32 stallmon_report_state(__u32 state, __u32 exit_state) {
  const __u32 kReport = 0x7f;         // TASK_REPORT: RUNNING..PARKED, EXIT_*
  const __u32 kIdle = 0x402;          // TASK_UNINTERRUPTIBLE | TASK_NOLOAD
  const __u32 kRtlockWait = 0x1000;   // TASK_RTLOCK_WAIT
  const __u32 kFrozen = 0x8000;       // TASK_FROZEN (6.1+; unused bit before)
  __u32 s = (state | exit_state) & kReport;
  if ((state & kIdle) == kIdle) s = 0x80;            // TASK_REPORT_IDLE → 'I'
  if ((state & kRtlockWait) || (state & kFrozen)) s = 2;  // reported as 'D'
  // fls(s)
  __u32 i = 0;
  while (s && i < 9) {
    s >>= 1;
    i++;
  }
  return i;
}

#endif
