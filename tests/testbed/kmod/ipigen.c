// SPDX-License-Identifier: GPL-2.0
/*
 * stallmon testbed: IPI load from a kthread calling on_each_cpu(..., wait=1) in a loop, with
 * msleep(interval_ms) between calls. on_each_cpu interrupts every online CPU, idle (lazy-TLB)
 * ones included, through smp_call_function_many_cond, and waits for all of them: a vCPU frozen
 * by the host stalls the next call on the sender (seed case 1's wait loop), whatever the frozen
 * CPU was doing. No kernel text is patched.
 * insmod /ipigen.ko [interval_ms=10] ... rmmod ipigen
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

static struct task_struct *worker;
static atomic_long_t calls = ATOMIC_LONG_INIT(0);

static void ipigen_ping(void *unused)
{
	atomic_long_inc(&calls);
}

static int ipigen_fn(void *unused)
{
	pr_info("stallmon-ipigen: on_each_cpu every %u ms\n", interval_ms);
	while (!kthread_should_stop()) {
		on_each_cpu(ipigen_ping, NULL, 1);
		msleep(interval_ms);
	}
	return 0;
}

static int __init ipigen_init(void)
{
	worker = kthread_run(ipigen_fn, NULL, "ipigen");
	return PTR_ERR_OR_ZERO(worker);
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
