// SPDX-License-Identifier: GPL-2.0
/*
 * stallmon testbed: keeps one guest CPU busy with port I/O (CMOS RTC reads, port 0x71).
 * Under QEMU each such access is emulated while holding QEMU's big lock, so a host-side freeze
 * of that vCPU thread is likely to land while it holds the lock ("vm-wide" case).
 * Interrupts stay on and the thread reschedules, so the guest itself stays healthy.
 * insmod /bqlhog.ko cpu=2 ... rmmod bqlhog
 */
#include <linux/module.h>
#include <linux/kthread.h>
#include <linux/sched.h>
#include <linux/err.h>
#include <linux/io.h>

static int cpu = 1;
module_param(cpu, int, 0444);
MODULE_PARM_DESC(cpu, "CPU to keep busy with port I/O");

static struct task_struct *worker;

static int bqlhog_fn(void *unused)
{
	unsigned long n = 0;

	pr_info("stallmon-bqlhog: port I/O loop on CPU%d\n", smp_processor_id());
	while (!kthread_should_stop()) {
		(void)inb(0x71);
		if ((++n & 63) == 0)
			cond_resched();
	}
	return 0;
}

static int __init bqlhog_init(void)
{
	if (cpu < 0 || cpu >= nr_cpu_ids || !cpu_online(cpu))
		return -EINVAL;
	worker = kthread_create(bqlhog_fn, NULL, "bqlhog/%d", cpu);
	if (IS_ERR(worker))
		return PTR_ERR(worker);
	kthread_bind(worker, cpu);
	wake_up_process(worker);
	return 0;
}

static void __exit bqlhog_exit(void)
{
	kthread_stop(worker);
}

module_init(bqlhog_init);
module_exit(bqlhog_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("stallmon testbed: busy port I/O on one CPU (QEMU big lock contention)");
