// SPDX-License-Identifier: GPL-2.0
/*
 * stallmon testbed guest program: IPI load that does not patch kernel text.
 *
 *   ipiload tlb [--busy-ms N] [--sleep-ms N] [--pages N]
 *   ipiload membarrier [--busy-ms N] [--sleep-ms N]
 *
 * One thread pinned to each online CPU, all in this one address space.
 *  tlb:        each thread maps its own few pages once, then loops: touch every page,
 *              madvise(MADV_DONTNEED). The zap flushes the other CPUs' TLBs:
 *              tlb_finish_mmu -> flush_tlb_mm_range -> flush_tlb_multi (flush_tlb_others on old
 *              kernels) -> smp_call_function_many_cond with wait=1, seed case 1's own path.
 *              Not mmap/munmap: those take mmap_lock for writing, so with a thread on every CPU
 *              most threads sleep on the lock (measured: ipiload at 41% of 4 CPUs, the rest
 *              idle), and an idle CPU gets no shootdown. MADV_DONTNEED takes it for reading.
 *              After each busy period, before it sleeps, a thread also maps a 2 MiB-aligned
 *              block that is alone in its page-table page, touches it and unmaps it: the page
 *              table is freed, and a flush that frees page tables goes to every CPU in the mm's
 *              cpumask, lazy-TLB idle ones included (native_flush_tlb_multi, freed_tables).
 *              So a vCPU frozen while idle in this mm stalls the next such flush too: seed case
 *              1's exact shape (an idle CPU that never answers).
 *  membarrier: MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED once, then each thread loops
 *              MEMBARRIER_CMD_PRIVATE_EXPEDITED: an IPI to every CPU running this mm, waited for.
 *
 * Both paths only interrupt CPUs that currently run a thread of this address space: an idle CPU
 * is in lazy-TLB mode and current kernels skip it (tlb_is_not_lazy), and membarrier looks at
 * rq->curr->mm. So the threads stay busy most of the time: each runs its loop for busy-ms, then
 * sleeps sleep-ms (defaults 200 and 10: the CPU is idle ~5% of the time). A vCPU frozen by the
 * host while it runs one of these threads never answers the next IPI, and the sender spins.
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

enum mode { MODE_TLB, MODE_MEMBARRIER };

static enum mode mode;
static long busy_ms = 200, sleep_ms = 10, pages = 4;

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

static void one_round(volatile char *area)
{
	if (mode == MODE_TLB) {
		for (long i = 0; i < pages; i++)
			area[i * 4096] = (char)i;
		madvise((void *)area, (size_t)pages * 4096, MADV_DONTNEED);
	} else {
		membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED);
	}
}

#define BLOCK (2UL << 20)

/* A 2 MiB-aligned block whose page-table page nothing else shares: it lies inside a 4 MiB
 * PROT_NONE reservation that stays mapped (no hole another mmap could take), so its
 * neighbours are the reservation's own ends, in other PMDs. */
static char *reserve_block(void)
{
	char *base = mmap(NULL, 2 * BLOCK, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
			  -1, 0);

	if (base == MAP_FAILED)
		return NULL;
	return (char *)(((unsigned long)base + BLOCK - 1) & ~(BLOCK - 1));
}

/* Map the block writable over the reservation, touch it, then map PROT_NONE over it again:
 * that replacement unmaps the written block and frees its page table (freed_tables flush). */
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

	if (mode == MODE_TLB) {
		block = reserve_block();
		area = mmap(NULL, (size_t)pages * 4096, PROT_READ | PROT_WRITE,
			    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (area == MAP_FAILED) {
			fprintf(stderr, "ipiload: mmap: %s\n", strerror(errno));
			exit(1);
		}
	}
	CPU_ZERO(&set);
	CPU_SET(w->cpu, &set);
	if (pthread_setaffinity_np(pthread_self(), sizeof(set), &set) != 0)
		fprintf(stderr, "ipiload: cannot pin to CPU %d\n", w->cpu);
	for (;;) {
		double until = now_ms() + busy_ms;

		while (now_ms() < until)
			one_round(area);
		if (mode == MODE_TLB)
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

	if (argc < 2 || (strcmp(argv[1], "tlb") && strcmp(argv[1], "membarrier"))) {
		fprintf(stderr, "usage: ipiload tlb|membarrier [--busy-ms N] [--sleep-ms N] "
				"[--pages N]\n");
		return 2;
	}
	mode = strcmp(argv[1], "tlb") == 0 ? MODE_TLB : MODE_MEMBARRIER;
	for (int i = 2; i < argc; i++) {
		if (!strcmp(argv[i], "--busy-ms"))
			busy_ms = arg_value(argc, argv, &i);
		else if (!strcmp(argv[i], "--sleep-ms"))
			sleep_ms = arg_value(argc, argv, &i);
		else if (!strcmp(argv[i], "--pages"))
			pages = arg_value(argc, argv, &i) ?: 1;
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
