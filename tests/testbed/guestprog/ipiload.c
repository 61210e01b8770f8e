// SPDX-License-Identifier: GPL-2.0
/*
 * stallmon testbed guest program: IPI load that does not patch kernel text.
 *
 *   ipiload tlb [--busy-ms N] [--sleep-ms N] [--pages N]
 *   ipiload tlb-free-tables [--busy-ms N] [--sleep-ms N] [--pages N]
 *   ipiload membarrier [--busy-ms N] [--sleep-ms N] [--sender-cpu N]
 *
 * One thread pinned to each online CPU, all in this one address space.
 *  tlb:        each thread maps its own pages once (at start, before its loop), then loops: read
 *              every page, madvise(MADV_DONTNEED). The zap flushes the other CPUs' TLBs:
 *              tlb_finish_mmu -> flush_tlb_mm_range -> flush_tlb_multi (flush_tlb_others on old
 *              kernels) -> smp_call_function_many_cond with wait=1, seed case 1's own path.
 *              The loop never takes mmap_lock for writing, so a thread frozen anywhere in it (its
 *              vCPU stopped by the host) cannot make the other threads sleep instead of
 *              flushing: on the Debian 6.1 and 6.12 guests madvise(MADV_DONTNEED) takes mmap_lock
 *              for reading (madvise_need_mmap_write() is 0 for it; per-VMA madvise locking came
 *              later), the read fault takes it for reading (6.1) or only the VMA's lock (6.12,
 *              per-VMA lock faults), and nothing in this process ever wants it for writing after
 *              the setup, so readers never queue behind a writer. The other locks of the loop are
 *              not shared either: each thread's pages sit alone in their own page-table page (a
 *              2 MiB-aligned block: its own split PTE lock, and the table is never freed), and a
 *              read fault maps the shared zero page, so no page is allocated or freed (no zone,
 *              LRU or memcg lock). Hence a thread frozen while holding any of them still leaves
 *              the other threads flushing, and the first flush to the frozen CPU waits forever.
 *              No page tables are freed, so only CPUs running a thread of this mm are
 *              interrupted (lazy-TLB CPUs are skipped, below); that is enough for seed case 1
 *              when the frozen CPU is running its generator thread, which it is nearly all the
 *              time with --sleep-ms 0 (the thread is pinned there and never sleeps).
 *  tlb-free-tables: tlb, plus after each busy period, before it sleeps, a thread maps a 2 MiB-
 *              aligned block that is alone in its page-table page, touches it and maps
 *              PROT_NONE over it: the page table is freed, and a flush that frees page tables
 *              goes to every CPU in the mm's cpumask, lazy-TLB idle ones included
 *              (native_flush_tlb_multi, freed_tables). So a vCPU frozen while idle in this mm
 *              stalls the next such flush too (seed case 1 with an idle CPU). But the mmap()
 *              calls and MADV_NOHUGEPAGE take mmap_lock for writing, and the freeing flush runs
 *              under it (mmap_region -> unmap_region -> tlb_finish_mmu, no downgrade): a thread
 *              frozen there holds the lock forever, every other thread sleeps on it, and no
 *              sender waits on the frozen CPU (seen: 1 of 3 seed-case-1 runs with busy freezes).
 *              Use it only for freezes of an idle CPU, whose generator thread sleeps in
 *              nanosleep holding nothing.
 *  membarrier: MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED once, then each thread loops
 *              MEMBARRIER_CMD_PRIVATE_EXPEDITED: an IPI to every CPU running this mm, waited for.
 *              The kernel serializes these senders with one global mutex (membarrier_ipi_mutex,
 *              "reduce the ability to hammer on sys_membarrier", in the 6.1 and 6.12 guests: a
 *              waiter shows state D, wchan membarrier_private_expedited), held across the IPI
 *              wait. A thread frozen while holding it leaves every other sender asleep on the
 *              mutex and none waiting on the frozen CPU (seen once in testbed_seed_case1_test).
 *              --sender-cpu N: only the thread on CPU N calls membarrier; the others spin in
 *              user space, keeping their CPU in this mm (so it is sent the IPI) while holding
 *              nothing. Freeze any CPU but N. They read the clock only every 4096 turns: the
 *              testbed guests' clocksource is the HPET (qemu64 has no stable TSC), and a clock
 *              read that is not a vDSO TSC read enters the kernel and QEMU's device emulation,
 *              under QEMU's big lock.
 *
 * All paths but the page-table-freeing flush only interrupt CPUs that currently run a thread of
 * this address space: an idle CPU is in lazy-TLB mode and current kernels skip it
 * (tlb_is_not_lazy, should_flush_tlb), and membarrier looks at rq->curr->mm. So the threads stay
 * busy most of the time: each runs its loop for busy-ms, then sleeps sleep-ms (defaults 200 and
 * 10: the CPU is idle ~5% of the time; 0 = never sleeps). A vCPU frozen by the host while it runs
 * one of these threads never answers the next IPI, and the sender spins.
 *
 * Built with `gcc -static -O2 -pthread` by testbed.py kit into the initramfs /bin.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/membarrier.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

enum mode { MODE_TLB, MODE_TLB_FREE_TABLES, MODE_MEMBARRIER };

static enum mode mode;
static long busy_ms = 200, sleep_ms = 10, pages = 4;
static long sender_cpu = -1; /* membarrier: -1 = every thread sends */

#define PAGE 4096UL
#define BLOCK (2UL << 20)
#define MAX_PAGES ((long)(BLOCK / PAGE)) /* the pages stay within one page-table page */

struct worker {
	pthread_t thread;
	int cpu;
};

static double now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int membarrier(int cmd)
{
	return (int)syscall(__NR_membarrier, cmd, 0, 0);
}

/* A 2 MiB-aligned block inside a 4 MiB reservation with protection `prot` that stays mapped, so
 * the block's page-table page covers nothing but the block (its neighbours are the
 * reservation's own ends, in other PMDs) and no other mmap can land next to it. */
static char *reserve_block(int prot)
{
	char *base = mmap(NULL, 2 * BLOCK, prot, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);

	if (base == MAP_FAILED)
		return NULL;
	/* Small pages: a PTE table of our own, and the read faults map the 4 KiB zero page. */
	madvise(base, 2 * BLOCK, MADV_NOHUGEPAGE);
	return (char *)(((unsigned long)base + BLOCK - 1) & ~(BLOCK - 1));
}

/* Read every page (a read fault maps the shared zero page: nothing allocated, only this
 * thread's own page-table lock taken), then zap them: the PTEs are cleared and
 * tlb_finish_mmu flushes the other CPUs running this mm. No page is freed, no page table
 * either, and mmap_lock is only taken for reading. */
static void zap_round(volatile char *area)
{
	char sum = 0;

	for (long i = 0; i < pages; i++)
		sum += area[i * PAGE];
	__asm__ volatile("" : : "r"(sum));
	madvise((void *)area, (size_t)pages * PAGE, MADV_DONTNEED);
}

/* tlb-free-tables only. Map the block writable over its PROT_NONE reservation, touch it, then
 * map PROT_NONE over it again: that replacement unmaps the written block and frees its page
 * table (freed_tables flush, to lazy CPUs too). Takes mmap_lock for writing three times. */
static void freed_tables_round(char *block)
{
	volatile char *p;
	const int fixed = MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED;

	if (!block)
		return;
	p = mmap(block, BLOCK, PROT_READ | PROT_WRITE, fixed, -1, 0);
	if (p == MAP_FAILED)
		return;
	madvise((void *)p, BLOCK, MADV_NOHUGEPAGE); /* a PTE table, not a huge PMD */
	p[0] = 1;
	mmap(block, BLOCK, PROT_NONE, fixed | MAP_NORESERVE, -1, 0);
}

static void *run(void *arg)
{
	struct worker *w = arg;
	cpu_set_t set;
	struct timespec pause = { sleep_ms / 1000, (sleep_ms % 1000) * 1000000L };
	volatile char *area = NULL;
	char *block = NULL;

	CPU_ZERO(&set);
	CPU_SET(w->cpu, &set);
	if (pthread_setaffinity_np(pthread_self(), sizeof(set), &set) != 0)
		fprintf(stderr, "ipiload: cannot pin to CPU %d\n", w->cpu);
	/* Setup, the only mmap_lock write sections of the tlb mode: before the loop. */
	if (mode != MODE_MEMBARRIER) {
		area = reserve_block(PROT_READ | PROT_WRITE);
		if (!area) {
			fprintf(stderr, "ipiload: mmap: %s\n", strerror(errno));
			exit(1);
		}
		zap_round(area); /* allocates the page-table page once; it is never freed */
	}
	if (mode == MODE_TLB_FREE_TABLES)
		block = reserve_block(PROT_NONE);
	for (;;) {
		double until = now_ms() + busy_ms;

		while (now_ms() < until) {
			if (mode != MODE_MEMBARRIER)
				zap_round(area);
			else if (sender_cpu < 0 || sender_cpu == w->cpu)
				membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED);
			else
				for (volatile int spin = 0; spin < 4096; spin++)
					;
		}
		if (mode == MODE_TLB_FREE_TABLES)
			freed_tables_round(block);
		if (sleep_ms > 0)
			nanosleep(&pause, NULL);
	}
	return NULL;
}

static long arg_value(int argc, char **argv, int *i)
{
	char *end;
	long v;

	if (*i + 1 >= argc) {
		fprintf(stderr, "ipiload: %s needs a value\n", argv[*i]);
		exit(2);
	}
	v = strtol(argv[++*i], &end, 10);
	if (*end || v < 0 || v > 1000000) {
		fprintf(stderr, "ipiload: bad value %s\n", argv[*i]);
		exit(2);
	}
	return v;
}

int main(int argc, char **argv)
{
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	struct worker *workers;

	if (argc >= 2 && !strcmp(argv[1], "tlb"))
		mode = MODE_TLB;
	else if (argc >= 2 && !strcmp(argv[1], "tlb-free-tables"))
		mode = MODE_TLB_FREE_TABLES;
	else if (argc >= 2 && !strcmp(argv[1], "membarrier"))
		mode = MODE_MEMBARRIER;
	else {
		fprintf(stderr, "usage: ipiload tlb|tlb-free-tables|membarrier [--busy-ms N] "
				"[--sleep-ms N] [--pages N (1-%ld)] [--sender-cpu N]\n", MAX_PAGES);
		return 2;
	}
	for (int i = 2; i < argc; i++) {
		if (!strcmp(argv[i], "--busy-ms"))
			busy_ms = arg_value(argc, argv, &i);
		else if (!strcmp(argv[i], "--sleep-ms"))
			sleep_ms = arg_value(argc, argv, &i);
		else if (!strcmp(argv[i], "--sender-cpu"))
			sender_cpu = arg_value(argc, argv, &i);
		else if (!strcmp(argv[i], "--pages")) {
			pages = arg_value(argc, argv, &i);
			if (pages < 1 || pages > MAX_PAGES) {
				fprintf(stderr, "ipiload: --pages must be 1-%ld\n", MAX_PAGES);
				return 2;
			}
		}
		else {
			fprintf(stderr, "ipiload: unknown option %s\n", argv[i]);
			return 2;
		}
	}
	if (mode == MODE_MEMBARRIER &&
	    membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED) != 0) {
		fprintf(stderr, "ipiload: membarrier register: %s\n", strerror(errno));
		return 1;
	}
	if (ncpu < 1)
		ncpu = 1;
	if (sender_cpu >= ncpu) {
		fprintf(stderr, "ipiload: --sender-cpu %ld: only %ld CPUs\n", sender_cpu, ncpu);
		return 2;
	}
	workers = calloc((size_t)ncpu, sizeof(*workers));
	if (!workers)
		return 1;
	for (long c = 0; c < ncpu; c++) {
		workers[c].cpu = (int)c;
		if (pthread_create(&workers[c].thread, NULL, run, &workers[c]) != 0) {
			fprintf(stderr, "ipiload: pthread_create: %s\n", strerror(errno));
			return 1;
		}
	}
	printf("ipiload: %s on %ld CPUs, busy %ld ms, sleep %ld ms\n", argv[1], ncpu, busy_ms,
	       sleep_ms);
	fflush(stdout);
	pthread_join(workers[0].thread, NULL);
	return 0;
}
