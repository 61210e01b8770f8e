// SPDX-License-Identifier: GPL-2.0
/*
 * stallmon testbed: a CPU held inside an NMI handler (issue 12: traces that start on the NMI
 * stack).
 *
 * On load, registers an NMI_LOCAL handler (register_nmi_handler) armed for CPU `cpu`: the first
 * NMI that CPU takes after the load spins in nmihog_spin() for `seconds` s (1-15), then returns;
 * every other NMI (other CPUs, later NMIs) passes through at once. One spin per load. The NMI
 * comes from `echo l > /proc/sysrq-trigger` (backtrace of all active CPUs: an NMI to every
 * online CPU but the writer's, which prints its own trace without one; so write it from another
 * CPU, e.g. `taskset -c 0 sh -c 'echo l > /proc/sysrq-trigger'`). The kernel's backtrace
 * handler (registered at boot, so called first) has answered the writer before ours spins:
 * the write returns at once.
 *
 * Read-only parameters, an answer independent of guest-memory readers:
 *   /sys/module/nmihog/parameters/spinning  the CPU spinning in the handler now, or -1
 *   /sys/module/nmihog/parameters/inside    how many CPUs are inside this handler now
 *   /sys/module/nmihog/parameters/spins     spins finished (0 or 1)
 * Console (from NMI context: in the ring buffer at once, on the console once flushed):
 * "stallmon-nmihog: CPU1 spinning in its NMI handler for 15 s", "... returns ... after N ms".
 *
 * The spin touches the soft-lockup watchdog (the guest's own report is not what a test looks
 * at) and stays under the RCU stall timeout (21 s): interrupts, IPIs and RCU quiescent states
 * wait on that CPU meanwhile, so move tasks off it first. `rmmod nmihog` waits for a running
 * spin (unregister_nmi_handler waits for the handlers in flight).
 */
#include <linux/module.h>
#include <linux/atomic.h>
#include <linux/delay.h>
#include <linux/nmi.h>
#include <linux/smp.h>
#include <linux/timekeeping.h>
#include <asm/nmi.h>

static int cpu = 1;
module_param(cpu, int, 0444);
MODULE_PARM_DESC(cpu, "CPU whose first NMI after the load spins in the handler");
static unsigned int seconds = 10;
module_param(seconds, uint, 0444);
MODULE_PARM_DESC(seconds, "how long that NMI spins (1-15)");

static int spinning = -1;
module_param(spinning, int, 0444);
MODULE_PARM_DESC(spinning, "CPU spinning in the handler now, or -1");
static atomic_t inside = ATOMIC_INIT(0);
static int inside_get(char *buf, const struct kernel_param *kp)
{
	return sysfs_emit(buf, "%d\n", atomic_read(&inside));
}
static const struct kernel_param_ops inside_ops = { .get = inside_get };
module_param_cb(inside, &inside_ops, NULL, 0444);
MODULE_PARM_DESC(inside, "CPUs inside this NMI handler now");
static int spins;
module_param(spins, int, 0444);
MODULE_PARM_DESC(spins, "spins finished");

static atomic_t armed = ATOMIC_INIT(1);

/*
 * Not inlined, and spending its time in a callee (mdelay), so that its own return address is on
 * the NMI stack while it runs: a backtrace read from memory sees a function that calls nothing
 * only through its callers. Bounded twice: by the NMI-safe monotonic clock, and by a count of
 * 1 ms delays (in case that clock stood still).
 */
static noinline u64 nmihog_spin(unsigned int secs)
{
	const u64 start = ktime_get_mono_fast_ns();
	u64 now = start;
	unsigned long n;

	for (n = 0; n < secs * 2000UL; n++) {
		now = ktime_get_mono_fast_ns();
		if (now - start >= (u64)secs * NSEC_PER_SEC)
			break;
		touch_softlockup_watchdog();
		mdelay(1);
	}
	return now - start;
}

static int nmihog_handler(unsigned int type, struct pt_regs *regs)
{
	u64 ns;

	atomic_inc(&inside);
	if (smp_processor_id() != cpu || atomic_cmpxchg(&armed, 1, 0) != 1) {
		atomic_dec(&inside);
		return NMI_DONE;
	}
	WRITE_ONCE(spinning, cpu);
	pr_info("stallmon-nmihog: CPU%d spinning in its NMI handler for %u s\n", cpu, seconds);
	ns = nmihog_spin(seconds);
	WRITE_ONCE(spinning, -1);
	WRITE_ONCE(spins, spins + 1);
	pr_info("stallmon-nmihog: CPU%d returns from its NMI handler after %llu ms\n", cpu, ns / NSEC_PER_MSEC);
	atomic_dec(&inside);
	/* Not ours to claim: the NMI is the backtrace handler's (it answered NMI_HANDLED). */
	return NMI_DONE;
}

static int __init nmihog_init(void)
{
	if (cpu < 0 || cpu >= nr_cpu_ids || !cpu_online(cpu) || seconds < 1 || seconds > 15)
		return -EINVAL;
	return register_nmi_handler(NMI_LOCAL, nmihog_handler, 0, "stallmon_nmihog");
}

static void __exit nmihog_exit(void)
{
	unregister_nmi_handler(NMI_LOCAL, "stallmon_nmihog");
}

module_init(nmihog_init);
module_exit(nmihog_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("stallmon testbed: one CPU held inside an NMI handler for a bounded time");
