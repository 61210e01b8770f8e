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
 *   /sys/module/nmihog/parameters/steps, clock_anomalies   of the last spin (see nmihog_spin)
 * Console (from NMI context: in the ring buffer at once, on the console once flushed):
 * "stallmon-nmihog: CPU1 spinning in its NMI handler for 15 s", "... returns ... after N ms (S steps, A clock anomalies)".
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
 * only through its callers.
 *
 * The time spent is summed step by step from the NMI-safe monotonic clock, and a step that is not
 * a plausible length for one mdelay(1) (backwards, which unsigned arithmetic turns into a leap,
 * or over a second) counts as 1 ms and as a clock anomaly. Bounded also by a count of steps, in
 * case that clock stood still: 20,000 a second, since under TCG mdelay(1) is far shorter than
 * 1 ms and varies by boot with the guest's TSC calibration (15-s spins took 18,509 and 52,626
 * steps in two 6.12 guests). The former bound, 2,000 a second, is the likely reason a CI run's
 * 15-s spin was over within 0.6 s (the end message now tells a short delay from a clock leap).
 */
static unsigned long steps;
module_param(steps, ulong, 0444);
MODULE_PARM_DESC(steps, "1-ms steps of the last spin");
static unsigned int clock_anomalies;
module_param(clock_anomalies, uint, 0444);
MODULE_PARM_DESC(clock_anomalies, "clock steps of the last spin that went backwards or leapt over 1 s");

static noinline u64 nmihog_spin(unsigned int secs)
{
	const u64 limit = (u64)secs * NSEC_PER_SEC;
	u64 prev = ktime_get_mono_fast_ns(), elapsed = 0;
	unsigned long n;

	for (n = 0; n < secs * 20000UL && elapsed < limit; n++) {
		u64 now, step;

		touch_softlockup_watchdog();
		mdelay(1);
		now = ktime_get_mono_fast_ns();
		step = now - prev;
		if (step > NSEC_PER_SEC) {
			WRITE_ONCE(clock_anomalies, clock_anomalies + 1);
			step = NSEC_PER_MSEC;
		}
		elapsed += step;
		prev = now;
	}
	WRITE_ONCE(steps, n);
	return elapsed;
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
	pr_info("stallmon-nmihog: CPU%d returns from its NMI handler after %llu ms (%lu steps, %u clock anomalies)\n",
		cpu, ns / NSEC_PER_MSEC, steps, clock_anomalies);
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
