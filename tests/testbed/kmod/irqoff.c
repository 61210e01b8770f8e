// SPDX-License-Identifier: GPL-2.0
/*
 * stallmon testbed: a guest-internal IRQs-off lockup (seed cases 2 and 4).
 * On load, starts a kthread bound to CPU `cpu` that disables interrupts and spins forever.
 * It never returns: the module cannot be unloaded and the CPU stays lost until reboot.
 */
#include <linux/module.h>
#include <linux/kthread.h>
#include <linux/irqflags.h>
#include <linux/err.h>
#include <linux/io.h>

static int cpu = 1;
module_param(cpu, int, 0444);
MODULE_PARM_DESC(cpu, "CPU on which to spin with interrupts disabled");

/*
 * The testbed times the fault by the marker line on the serial console. On PREEMPT_RT the
 * console is printed by a kthread, which may never get to run once this CPU spins (another CPU
 * waiting for this one in an IPI keeps it off that CPU too): the line stays in the ring buffer.
 * So the marker is also written straight to the first serial port (polled, 0x3f8), with
 * interrupts already off here so that nothing on this CPU comes between it and the spin.
 */
static void com1_write(const char *s)
{
	for (; *s; s++) {
		int spins = 1000000;

		while (!(inb(0x3f8 + 5) & 0x20) && --spins)  /* LSR: transmit holding register empty */
			cpu_relax();
		outb(*s, 0x3f8);
	}
}

static int irqoff_fn(void *unused)
{
	char marker[64];

	snprintf(marker, sizeof(marker), "stallmon-irqoff: spinning with IRQs off on CPU%d",
		 smp_processor_id());
	pr_info("%s\n", marker);
	local_irq_disable();
	com1_write("\r\n");
	com1_write(marker);
	com1_write("\r\n");
	for (;;)
		cpu_relax();
	return 0;
}

static int __init irqoff_init(void)
{
	struct task_struct *t;

	if (cpu < 0 || cpu >= nr_cpu_ids || !cpu_online(cpu))
		return -EINVAL;
	t = kthread_create(irqoff_fn, NULL, "irqoff/%d", cpu);
	if (IS_ERR(t))
		return PTR_ERR(t);
	kthread_bind(t, cpu);
	wake_up_process(t);
	return 0;
}
module_init(irqoff_init);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("stallmon testbed: spin with interrupts disabled on one CPU");
