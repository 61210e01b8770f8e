// SPDX-License-Identifier: GPL-2.0
/*
 * stallmon testbed: a spinlock held forever with interrupts off while another CPU contends for
 * it (issue 12 item 2; the seed post-mortem's CPU spinning in _spin_lock_irq).
 * On load, a kthread bound to CPU `holder_cpu` takes `spinhold_lock` with spin_lock_irq() and
 * spins forever holding it; once it holds the lock, a kthread bound to CPU `waiter_cpu` calls
 * spin_lock_irqsave() on the same lock and spins in the lock's slow path forever, interrupts
 * off too. Both CPUs stay lost until reboot; the module cannot be unloaded.
 */
#include <linux/module.h>
#include <linux/kthread.h>
#include <linux/spinlock.h>
#include <linux/delay.h>
#include <linux/err.h>

static int holder_cpu = 1;
module_param(holder_cpu, int, 0444);
MODULE_PARM_DESC(holder_cpu, "CPU that takes the lock with IRQs off and never releases it");
static int waiter_cpu = 2;
module_param(waiter_cpu, int, 0444);
MODULE_PARM_DESC(waiter_cpu, "CPU that contends for the lock (spin_lock_irqsave) forever");

static DEFINE_SPINLOCK(spinhold_lock);
static int held;

static int holder_fn(void *unused)
{
	pr_info("stallmon-spinhold: CPU%d takes the lock with IRQs off and keeps it\n", smp_processor_id());
	spin_lock_irq(&spinhold_lock);
	WRITE_ONCE(held, 1);
	for (;;)
		cpu_relax();
	return 0;
}

/* Started once the holder has the lock; takes it first thing (its message comes from init). */
static int waiter_fn(void *unused)
{
	unsigned long flags;

	spin_lock_irqsave(&spinhold_lock, flags);
	/* Never reached: the holder never releases it. */
	pr_info("stallmon-spinhold: CPU%d got the lock (unexpected)\n", smp_processor_id());
	spin_unlock_irqrestore(&spinhold_lock, flags);
	return 0;
}

static int __init spinhold_init(void)
{
	struct task_struct *h, *w;
	int i;

	if (holder_cpu < 0 || holder_cpu >= nr_cpu_ids || !cpu_online(holder_cpu) || waiter_cpu < 0 ||
	    waiter_cpu >= nr_cpu_ids || !cpu_online(waiter_cpu) || holder_cpu == waiter_cpu)
		return -EINVAL;
	h = kthread_create(holder_fn, NULL, "spinhold/%d", holder_cpu);
	if (IS_ERR(h))
		return PTR_ERR(h);
	w = kthread_create(waiter_fn, NULL, "spinwait/%d", waiter_cpu);
	if (IS_ERR(w)) {
		kthread_stop(h);
		return PTR_ERR(w);
	}
	kthread_bind(h, holder_cpu);
	kthread_bind(w, waiter_cpu);
	wake_up_process(h);
	/* The waiter contends only once the holder has the lock (a few ms; give up after 10 s). */
	for (i = 0; i < 1000 && !READ_ONCE(held); i++)
		msleep(10);
	if (!READ_ONCE(held)) {
		kthread_stop(w);
		pr_info("stallmon-spinhold: CPU%d never took the lock\n", holder_cpu);
		return -ETIMEDOUT;
	}
	pr_info("stallmon-spinhold: CPU%d contends for the lock held by CPU%d\n", waiter_cpu, holder_cpu);
	wake_up_process(w);
	return 0;
}
module_init(spinhold_init);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("stallmon testbed: a spinlock held forever with IRQs off, contended by another CPU");
