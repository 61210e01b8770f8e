// SPDX-License-Identifier: GPL-2.0
/*
 * stallmon testbed: a kernel stack whose end was overwritten (seed case 5, issue 12 item 3).
 *
 * On load, starts a kthread bound to CPU `cpu` that overwrites its own STACK_END_MAGIC (the
 * lowest word of its kernel stack, end_of_stack(current)) with 0, as a stack overflow that
 * reached it would, and then:
 *   mode=spin (default): spins for `seconds` s with preemption disabled, so it cannot schedule
 *     (__schedule's schedule_debug() panics on a corrupted stack end with
 *     CONFIG_SCHED_STACK_END_CHECK, which Debian's 6.1 and 6.12 kernels have), touching the
 *     soft-lockup watchdog so the guest's own report is not what a test sees; then restores the
 *     magic and exits. Repeatable, no panic: `insmod /stackend.ko cpu=1 seconds=8 &`, wait for
 *     "stallmon-stackend: restored", `rmmod stackend`. Interrupts stay on (IPIs are answered);
 *     keep `seconds` well below the RCU stall timeout (21 s) and half the soft-lockup limit.
 *   mode=schedule: sleeps with the magic overwritten: the guest panics with "corrupted stack
 *     end detected inside scheduler" (CONFIG_SCHED_STACK_END_CHECK); without that option the
 *     kthread wakes up, restores the magic and exits.
 */
#include <linux/module.h>
#include <linux/kthread.h>
#include <linux/sched.h>
#include <linux/sched/task_stack.h>
#include <linux/magic.h>
#include <linux/nmi.h>
#include <linux/jiffies.h>
#include <linux/completion.h>
#include <linux/string.h>
#include <linux/err.h>

static int cpu = 1;
module_param(cpu, int, 0444);
MODULE_PARM_DESC(cpu, "CPU whose kthread overwrites its stack end");
static unsigned int seconds = 8;
module_param(seconds, uint, 0444);
MODULE_PARM_DESC(seconds, "mode=spin: how long to spin with the magic overwritten (1-15)");
static char *mode = "spin";
module_param(mode, charp, 0444);
MODULE_PARM_DESC(mode, "spin (no panic) or schedule (panics with CONFIG_SCHED_STACK_END_CHECK)");

static DECLARE_COMPLETION(done);

static int stackend_fn(void *unused)
{
	unsigned long *end = end_of_stack(current);
	unsigned long saved, until;

	preempt_disable();
	saved = *end;
	pr_info("stallmon-stackend: STACK_END_MAGIC overwritten on CPU%d by pid %d comm %s (was %#lx, %s, %u s)\n",
		smp_processor_id(), current->pid, current->comm, saved, mode, seconds);
	*end = 0;
	if (strcmp(mode, "schedule") == 0) {
		preempt_enable();
		schedule_timeout_interruptible(HZ);  /* panics here with SCHED_STACK_END_CHECK */
		preempt_disable();
	} else {
		until = jiffies + seconds * HZ;
		while (time_before(jiffies, until)) {
			touch_softlockup_watchdog();
			cpu_relax();
		}
	}
	*end = saved;
	pr_info("stallmon-stackend: restored STACK_END_MAGIC on CPU%d\n", smp_processor_id());
	preempt_enable();
	kthread_complete_and_exit(&done, 0);
}

static int __init stackend_init(void)
{
	struct task_struct *t;

	if (cpu < 0 || cpu >= nr_cpu_ids || !cpu_online(cpu) || seconds < 1 || seconds > 15)
		return -EINVAL;
	if (strcmp(mode, "spin") != 0 && strcmp(mode, "schedule") != 0)
		return -EINVAL;
	t = kthread_create(stackend_fn, NULL, "stackend/%d", cpu);
	if (IS_ERR(t))
		return PTR_ERR(t);
	kthread_bind(t, cpu);
	wake_up_process(t);
	return 0;
}

static void __exit stackend_exit(void)
{
	wait_for_completion(&done);
}

module_init(stackend_init);
module_exit(stackend_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("stallmon testbed: a kthread that overwrites its own stack-end magic");
