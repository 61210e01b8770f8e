// SPDX-License-Identifier: GPL-2.0
/*
 * stallmon testbed guest program: a hostile guest root planting forged VMCOREINFO notes.
 *
 *   notespray N      plant N distinct forged notes (and one exact copy of the real one), then
 *                    print "ready <real note text bytes> <planted> build-id=<real BUILD-ID>"
 *                    and hold them until killed.
 *
 * The real note's text is read from /proc/kcore (its PT_NOTE carries a "VMCOREINFO" note with
 * the text the kernel's own note holds). Each forged note is laid out exactly as the kernel lays
 * out its own (Elf64_Nhdr, "VMCOREINFO\0" padded to 12, the text) at the start of a page of
 * this process's memory, where a host-side scan of guest RAM finds it. The forgeries are the
 * ones a guest could use to mislead a monitor that trusts the first note that parses:
 *   0: the real text plus one extra line    every field right: only the kernel's own pointer
 *                                            (vmcoreinfo_note) tells it from the real one
 *   1: KERNELOFFSET and every SYMBOL moved  a plausible previous boot's note (other KASLR slide)
 *   2: another BUILD-ID                     a note claiming another kernel build
 *   3: another NUMBER(phys_base)            a note that maps the kernel elsewhere
 * The pages are locked (mlock) so that they stay in guest RAM while the host looks.
 *
 * Built with `gcc -static -O2 -pthread` by testbed.py kit into the initramfs /bin.
 */
#define _GNU_SOURCE
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define PAGE 4096
#define STRIDE (2 * PAGE)  /* room for a text up to ~8 KiB; notes start on page boundaries */
#define MAX_TEXT (STRIDE - 32)

static void die(const char *what)
{
	fprintf(stderr, "notespray: %s: %s\n", what, strerror(errno));
	exit(1);
}

static int pread_all(int fd, void *buf, size_t n, off_t off)
{
	size_t done = 0;

	while (done < n) {
		ssize_t r = pread(fd, (char *)buf + done, n - done, off + (off_t)done);

		if (r <= 0)
			return -1;
		done += (size_t)r;
	}
	return 0;
}

/* The VMCOREINFO note's text from /proc/kcore's PT_NOTE segment. */
static size_t real_text(char *out, size_t cap)
{
	Elf64_Ehdr eh;
	int fd = open("/proc/kcore", O_RDONLY);

	if (fd < 0)
		die("open /proc/kcore");
	if (pread_all(fd, &eh, sizeof(eh), 0) != 0 || memcmp(eh.e_ident, ELFMAG, SELFMAG) != 0)
		die("read /proc/kcore ELF header");
	for (int i = 0; i < eh.e_phnum; i++) {
		Elf64_Phdr ph;

		if (pread_all(fd, &ph, sizeof(ph), (off_t)(eh.e_phoff + (uint64_t)i * eh.e_phentsize)) != 0)
			die("read /proc/kcore program header");
		if (ph.p_type != PT_NOTE || ph.p_filesz > (1u << 20))
			continue;
		char *notes = malloc(ph.p_filesz);

		if (!notes || pread_all(fd, notes, ph.p_filesz, (off_t)ph.p_offset) != 0)
			die("read /proc/kcore notes");
		size_t off = 0;

		while (off + sizeof(Elf64_Nhdr) <= ph.p_filesz) {
			Elf64_Nhdr *n = (Elf64_Nhdr *)(notes + off);
			size_t name_off = off + sizeof(*n);
			size_t desc_off = name_off + ((n->n_namesz + 3u) & ~3u);
			size_t next = desc_off + ((n->n_descsz + 3u) & ~3u);

			if (next > ph.p_filesz)
				break;
			if (n->n_namesz == 11 && memcmp(notes + name_off, "VMCOREINFO", 11) == 0) {
				size_t len = strnlen(notes + desc_off, n->n_descsz);

				if (len >= cap) {
					fprintf(stderr, "notespray: VMCOREINFO text of %zu bytes too large\n", len);
					exit(1);
				}
				memcpy(out, notes + desc_off, len);
				out[len] = 0;
				free(notes);
				close(fd);
				return len;
			}
			off = next;
		}
		free(notes);
	}
	fprintf(stderr, "notespray: no VMCOREINFO note in /proc/kcore\n");
	exit(1);
}

/* Replaces the value of every line starting with `prefix` through `edit`; returns the length. */
static size_t rewrite(const char *in, char *out, size_t cap, const char *prefix,
		      void (*edit)(const char *value, char *buf, size_t cap, long arg), long arg)
{
	size_t o = 0, plen = strlen(prefix);
	const char *line = in;

	while (*line) {
		const char *eol = strchr(line, '\n');
		size_t len = eol ? (size_t)(eol - line) : strlen(line);
		char buf[512];

		if (len < sizeof(buf) && strncmp(line, prefix, plen) == 0 && memchr(line, '=', len)) {
			const char *eq = memchr(line, '=', len);
			char value[256];
			size_t vlen = len - (size_t)(eq + 1 - line);

			if (vlen >= sizeof(value))
				vlen = sizeof(value) - 1;
			memcpy(value, eq + 1, vlen);
			value[vlen] = 0;
			char edited[256];

			edit(value, edited, sizeof(edited), arg);
			int n = snprintf(buf, sizeof(buf), "%.*s%s", (int)(eq + 1 - line), line, edited);

			if (n < 0 || (size_t)n >= sizeof(buf))
				n = 0;
			if (o + (size_t)n + 1 < cap) {
				memcpy(out + o, buf, (size_t)n);
				o += (size_t)n;
			}
		} else if (o + len + 1 < cap) {
			memcpy(out + o, line, len);
			o += len;
		}
		if (eol && o + 1 < cap)
			out[o++] = '\n';
		line = eol ? eol + 1 : line + len;
	}
	out[o] = 0;
	return o;
}

static void add_hex(const char *value, char *buf, size_t cap, long arg)
{
	snprintf(buf, cap, "%llx", strtoull(value, NULL, 16) + (unsigned long long)arg);
}

static void other_build_id(const char *value, char *buf, size_t cap, long arg)
{
	snprintf(buf, cap, "%.32s%08x", value, (unsigned)((unsigned long)arg * 2654435761u));
}

static void add_dec_or_hex(const char *value, char *buf, size_t cap, long arg)
{
	/* NUMBER(phys_base) is printed in decimal (signed long). */
	snprintf(buf, cap, "%lld", strtoll(value, NULL, 10) + (long long)arg);
}

static void plant(char *page, const char *text, size_t len)
{
	Elf64_Nhdr n = { .n_namesz = 11, .n_descsz = (Elf64_Word)(len + 1), .n_type = 0 };

	memcpy(page, &n, sizeof(n));
	memcpy(page + sizeof(n), "VMCOREINFO\0\0", 12);
	memcpy(page + sizeof(n) + 12, text, len + 1);
}

int main(int argc, char **argv)
{
	static char real[MAX_TEXT], forged[MAX_TEXT];
	long count = argc > 1 ? strtol(argv[1], NULL, 10) : 40;

	if (count < 0 || count > 100000) {
		fprintf(stderr, "usage: notespray N   (0..100000 forged notes)\n");
		return 2;
	}
	size_t real_len = real_text(real, sizeof(real));
	char *pages = mmap(NULL, (size_t)(count + 1) * STRIDE, PROT_READ | PROT_WRITE,
			   MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);

	if (pages == MAP_FAILED)
		die("mmap");
	/* An exact copy first: the same text at another address is no new candidate. */
	plant(pages, real, real_len);
	for (long i = 0; i < count; i++) {
		size_t len;

		switch (i % 4) {
		case 0:
			len = (size_t)snprintf(forged, sizeof(forged), "%sNUMBER(stallmon_forged)=%ld\n", real, i);
			break;
		case 1: {
			static char tmp[MAX_TEXT];
			long slide = (i / 4 + 1) * 0x200000L;

			rewrite(real, tmp, sizeof(tmp), "KERNELOFFSET=", add_hex, slide);
			len = rewrite(tmp, forged, sizeof(forged), "SYMBOL(", add_hex, slide);
			break;
		}
		case 2:
			len = rewrite(real, forged, sizeof(forged), "BUILD-ID=", other_build_id, i + 1);
			break;
		default:
			len = rewrite(real, forged, sizeof(forged), "NUMBER(phys_base)=", add_dec_or_hex,
				      (i / 4 + 1) * 0x200000L);
			break;
		}
		if (len >= sizeof(forged) - 1) {
			fprintf(stderr, "notespray: forged text %ld too large\n", i);
			return 1;
		}
		plant(pages + (size_t)(i + 1) * STRIDE, forged, len);
	}
	if (mlock(pages, (size_t)(count + 1) * STRIDE) != 0)
		die("mlock");
	const char *id = strstr(real, "BUILD-ID=");
	int id_len = id ? (int)strcspn(id + 9, "\n") : 0;

	/* The real note's BUILD-ID: what a monitor that found the real kernel reports. */
	printf("ready %zu %ld build-id=%.*s\n", real_len, count, id_len, id ? id + 9 : "");
	fflush(stdout);
	for (;;)
		pause();
}
