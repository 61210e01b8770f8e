// SPDX-License-Identifier: GPL-2.0
/*
 * stallmon testbed: IPI load from a kthread calling on_each_cpu(..., wait=1) in a loop, with
 * msleep(interval_ms) between calls. on_each_cpu interrupts every online CPU, idle (lazy-TLB)
 * ones included, through smp_call_function_many_cond, and waits for all of them: a vCPU frozen
 * by the host stalls the next call on the sender (seed case 1's wait loop), whatever the frozen
 * CPU was doing. No kernel text is patched.
 * The kthread is bound to one CPU (cpu=, default 0), never the one a test freezes: unbound, the
 * scheduler may wake it on the idle CPU a test is about to freeze (its previous CPU), where it
 * then waits, runnable, forever, and no IPI is sent at all (seen: the frozen idle CPU2 with
 * nr_running 1 and no sender waiting for 30 s).
 * insmod /ipigen.ko [interval_ms=10] [cpu=0] ... rmmod ipigen
 */
#include <linux/module.h>
#include <linux/kthread.h>
#include <linux/sched.h>
#include <linux/smp.h>
#include <linux/delay.h>
#include <linux/err.h>
#include <linux/atomic.h>

static unsigned int interval_ms = 10;
module_param(interval_ms, uint, 0444);
MODULE_PARM_DESC(interval_ms, "sleep between on_each_cpu calls (ms)");
static unsigned int cpu;
module_param(cpu, uint, 0444);
MODULE_PARM_DESC(cpu, "the CPU the sending kthread is bound to (default 0)");

static struct task_struct *worker;
static atomic_long_t calls = ATOMIC_LONG_INIT(0);

static void ipigen_ping(void *unused)
{
	atomic_long_inc(&calls);
}

static int ipigen_fn(void *unused)
{
	pr_info("stallmon-ipigen: on_each_cpu every %u ms from CPU %u\n", interval_ms, cpu);
	while (!kthread_should_stop()) {
		on_each_cpu(ipigen_ping, NULL, 1);
		msleep(interval_ms);
	}
	return 0;
}

static int __init ipigen_init(void)
{
	if (cpu >= nr_cpu_ids || !cpu_online(cpu))
		return -EINVAL;
	worker = kthread_create(ipigen_fn, NULL, "ipigen");
	if (IS_ERR(worker))
		return PTR_ERR(worker);
	kthread_bind(worker, cpu);
	wake_up_process(worker);
	return 0;
}

static void __exit ipigen_exit(void)
{
	kthread_stop(worker);
	pr_info("stallmon-ipigen: %ld calls answered\n", atomic_long_read(&calls));
}

module_init(ipigen_init);
module_exit(ipigen_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("stallmon testbed: on_each_cpu loop (IPI load without text patching)");
