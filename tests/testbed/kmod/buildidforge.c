// SPDX-License-Identifier: GPL-2.0
/*
 * stallmon testbed: a hostile guest kernel that lies about its identity. Rewrites the BUILD-ID
 * line of the running kernel's own VMCOREINFO (vmcoreinfo_data and the note the kernel points
 * to, vmcoreinfo_note) to another kernel's BUILD-ID, e.g. another tenant's. A monitor that keyed
 * symbols or types on BUILD-ID would then hand this guest's tables to the other guest, or the
 * other's to this one (issue 10).
 * insmod /buildidforge.ko build_id=<40 hex digits>
 * The symbols are looked up through kallsyms_lookup_name, found with a kprobe (not exported).
 */
#include <linux/module.h>
#include <linux/kprobes.h>
#include <linux/string.h>

static char *build_id = "";
module_param(build_id, charp, 0444);
MODULE_PARM_DESC(build_id, "the BUILD-ID to claim (40 hex digits)");

typedef unsigned long (*lookup_fn)(const char *name);

/* Overwrites the 40 hex digits after "BUILD-ID=" in text[0..len). */
static int forge(char *text, size_t len)
{
	char *p = strnstr(text, "BUILD-ID=", len);

	if (!p || p + 9 + 40 > text + len || p[9 + 40] != '\n')
		return -ENOENT;
	memcpy(p + 9, build_id, 40);
	return 0;
}

static int __init buildidforge_init(void)
{
	struct kprobe kp = { .symbol_name = "kallsyms_lookup_name" };
	lookup_fn lookup;
	unsigned char **data;
	size_t *size;
	u32 **note;
	int err;

	if (strlen(build_id) != 40)
		return -EINVAL;
	err = register_kprobe(&kp);
	if (err < 0)
		return err;
	lookup = (lookup_fn)kp.addr;
	unregister_kprobe(&kp);
	data = (unsigned char **)lookup("vmcoreinfo_data");
	size = (size_t *)lookup("vmcoreinfo_size");
	note = (u32 **)lookup("vmcoreinfo_note");
	if (!data || !size || !note || !*data || !*note)
		return -ENOENT;
	err = forge((char *)*data, *size);
	if (err)
		return err;
	/* The note: Elf64_Nhdr (namesz, descsz, type), "VMCOREINFO\0" padded to 12, the text. */
	err = forge((char *)*note + 12 + 12, (*note)[1]);
	if (err)
		return err;
	pr_info("stallmon-buildidforge: VMCOREINFO now claims BUILD-ID=%s\n", build_id);
	return 0;
}

static void __exit buildidforge_exit(void)
{
}

module_init(buildidforge_init);
module_exit(buildidforge_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("stallmon testbed: claim another kernel's BUILD-ID in VMCOREINFO");
