// SPDX-License-Identifier: Apache-2.0
// Kernel-like structs for `stallctl profile make`'s DWARF reader (type_profile_test.cc): built
// with -g into a linked ELF with a build-id; run, it prints where the compiler put each member
// the readers ask for ("TYPE PATH BIT_OFFSET BIT_SIZE SIZE"), bitfields found by setting them.
// Layouts after Linux 6.1 (include/linux/smp_types.h, kernel/sched/sched.h, include/linux/
// printk ring buffer, arch/x86/include/asm/orc_types.h); -DLEGACY_CSD gives the pre-4.14 csd
// (struct call_single_data { llist; func; info; flags }) and task->state.
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

typedef struct { int counter; } atomic_t;
typedef struct { long counter; } atomic_long_t;
struct llist_node { struct llist_node *next; };
struct llist_head { struct llist_node *first; };
struct list_head { struct list_head *next, *prev; };
typedef void (*smp_call_func_t)(void *info);

#ifndef LEGACY_CSD
struct __call_single_node {
  struct llist_node llist;
  union {
    unsigned int u_flags;
    atomic_t a_flags;
  };
  uint16_t src, dst;
};
struct __call_single_data {
  struct __call_single_node node;
  smp_call_func_t func;
  void *info;
};
typedef struct __call_single_data call_single_data_t;
#else
struct call_single_data {
  struct llist_node llist;
  smp_call_func_t func;
  void *info;
  unsigned int flags;
};
typedef struct call_single_data call_single_data_t;
#endif

struct cfs_rq { unsigned long load; unsigned int nr_running; unsigned int h_nr_running; };
struct task_struct;
struct rq {
  int lock;
  unsigned int nr_running;
  unsigned long cpu_load[5];
  struct cfs_rq cfs;
  struct task_struct *curr, *idle;
  uint64_t clock;
#ifndef LEGACY_CSD
  unsigned int ttwu_pending;
#endif
};
struct task_struct {
#ifndef LEGACY_CSD
  unsigned int __state;
#else
  volatile long state;
#endif
  void *stack;
  unsigned int flags;
  char pad[100];
  int pid;
  char comm[16];
#ifndef LEGACY_CSD
  struct __call_single_node wake_entry;
  void *worker_private;
#else
  int *set_child_tid;
#endif
};
struct cpumask { unsigned long bits[1]; };
typedef struct cpumask *cpumask_var_t;
#ifndef LEGACY_CSD
struct cfd_percpu { call_single_data_t csd; };
struct call_function_data { struct cfd_percpu *pcpu; cpumask_var_t cpumask; cpumask_var_t cpumask_ipi; };
#else
struct call_function_data { call_single_data_t *csd; cpumask_var_t cpumask; };
#endif
struct kvm_steal_time { uint64_t steal; uint32_t version; uint32_t flags; uint8_t preempted; uint8_t pad[47]; };
struct orc_entry {
  int16_t sp_offset;
  int16_t bp_offset;
  unsigned sp_reg : 4;
  unsigned bp_reg : 4;
  unsigned type : 3;
  unsigned signal : 1;
} __attribute__((packed));
struct kthread { unsigned long flags; unsigned int cpu; int (*threadfn)(void *); void *data; };
struct prb_desc_ring { unsigned int count_bits; struct prb_desc *descs; struct printk_info *infos; atomic_long_t head_id, tail_id; };
struct prb_data_ring { unsigned int size_bits; char *data; atomic_long_t head_lpos, tail_lpos; };
struct printk_ringbuffer { struct prb_desc_ring desc_ring; struct prb_data_ring text_data_ring; atomic_long_t fail; };
struct prb_data_blk_lpos { unsigned long begin, next; };
struct prb_desc { atomic_long_t state_var; struct prb_data_blk_lpos text_blk_lpos; };
struct printk_info {
  uint64_t seq, ts_nsec;
  uint16_t text_len;
  uint8_t facility;
  uint8_t flags : 5;
  uint8_t level : 3;
  uint32_t caller_id;
  char dev_info[48];
};

unsigned long watchdog_touch_ts;
atomic_t hrtimer_interrupts;
int hrtimer_interrupts_saved;

#define MEMBER(T, path) printf("%s %s %zu 0 %zu\n", #T, #path, offsetof(struct T, path) * 8, sizeof(((struct T*)0)->path))

// The lowest bit a bitfield occupies and its width, found by setting all its bits.
#define BITFIELD(T, field)                                                              \
  do {                                                                                  \
    struct T v;                                                                         \
    memset(&v, 0, sizeof v);                                                            \
    v.field--; /* from 0: every bit of the field set */                               \
    const unsigned char* p = (const unsigned char*)&v;                                  \
    int lo = -1, n = 0;                                                                 \
    for (size_t i = 0; i < sizeof v * 8; ++i)                                           \
      if (p[i / 8] >> (i % 8) & 1) { if (lo < 0) lo = (int)i; ++n; }                    \
    printf("%s %s %d %d 0\n", #T, #field, lo, n);                                       \
  } while (0)

int main(void) {
  MEMBER(rq, nr_running);
  MEMBER(rq, curr);
  MEMBER(rq, idle);
  MEMBER(rq, clock);
  MEMBER(rq, cfs.h_nr_running);
  MEMBER(task_struct, pid);
  MEMBER(task_struct, comm);
  MEMBER(task_struct, stack);
  MEMBER(task_struct, flags);
  MEMBER(llist_head, first);
  MEMBER(llist_node, next);
  MEMBER(call_function_data, cpumask);
  MEMBER(kvm_steal_time, steal);
  MEMBER(kvm_steal_time, preempted);
  MEMBER(kthread, threadfn);
  MEMBER(printk_ringbuffer, text_data_ring.data);
  MEMBER(prb_desc, text_blk_lpos.next);
  MEMBER(printk_info, caller_id);
  MEMBER(orc_entry, bp_offset);
  BITFIELD(orc_entry, sp_reg);
  BITFIELD(orc_entry, type);
  BITFIELD(orc_entry, signal);
  BITFIELD(printk_info, level);
#ifndef LEGACY_CSD
  MEMBER(rq, ttwu_pending);
  MEMBER(task_struct, __state);
  MEMBER(task_struct, wake_entry.llist);
  MEMBER(task_struct, worker_private);
  MEMBER(__call_single_data, node.llist);
  MEMBER(__call_single_data, node.u_flags);
  MEMBER(__call_single_data, func);
  MEMBER(call_function_data, pcpu);
  MEMBER(cfd_percpu, csd);
#else
  MEMBER(task_struct, state);
  MEMBER(task_struct, set_child_tid);
  MEMBER(call_single_data, llist);
  MEMBER(call_single_data, flags);
  MEMBER(call_single_data, func);
  MEMBER(call_function_data, csd);
#endif
  printf("var watchdog_touch_ts 0 0 %zu\n", sizeof watchdog_touch_ts);
  printf("var hrtimer_interrupts 0 0 %zu\n", sizeof hrtimer_interrupts);
  return 0;
}
