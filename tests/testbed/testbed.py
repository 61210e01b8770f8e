#!/usr/bin/env python3
"""stallmon real-guest testbed: guest kit, libvirt bring-up, domains, guest control channel,
host-side fault injectors.  Python 3 standard library only.  Run as root.

See tests/testbed/README.md for the commands and their JSON outputs.
"""

import argparse
import base64
import contextlib
import ctypes
import errno
import fcntl
import glob
import gzip
import hashlib
import json
import lzma
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
KIT_FORMAT = "4"  # bump when the kit layout or build steps change
DEFAULT_CACHE = "/var/cache/stallmon/testbed"
DEFAULT_RUN = "/run/stallmon-testbed"
CG_PREFIX = "stallmon-tb-inj-"
READY_MARKER = "STALLMON-READY"
VIRSH = ["virsh", "-q", "-c", "qemu:///system"]


class TestbedError(Exception):
    pass


def log(msg):
    print("testbed: " + msg, file=sys.stderr, flush=True)


def emit(obj):
    print(json.dumps(obj, sort_keys=True), flush=True)


def run(cmd, timeout=None, check=True, capture=True, **kw):
    """Runs cmd; returns CompletedProcess with text output."""
    try:
        p = subprocess.run(cmd, timeout=timeout, text=True,
                           stdout=subprocess.PIPE if capture else None,
                           stderr=subprocess.PIPE if capture else None, **kw)
    except subprocess.TimeoutExpired as e:
        raise TestbedError("timed out after %ss: %s" % (timeout, " ".join(cmd))) from e
    if check and p.returncode != 0:
        raise TestbedError("command failed (rc=%d): %s\n%s" % (
            p.returncode, " ".join(cmd), (p.stderr or "").strip()))
    return p


def cache_root():
    return os.environ.get("STALLMON_TESTBED_CACHE", DEFAULT_CACHE)


def run_root():
    return os.environ.get("STALLMON_TESTBED_RUN", DEFAULT_RUN)


def pid_alive(pid):
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is not alive for our purposes.
    try:
        with open("/proc/%d/stat" % pid) as f:
            return thread_state_from_stat(f.read()) != "Z"
    except OSError:
        return False


@contextlib.contextmanager
def file_lock(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# ---------------------------------------------------------------------------------------------
# Guest kit
# ---------------------------------------------------------------------------------------------

def apt_lists_stamp():
    """What `apt-cache depends` answers from: apt's package lists and dpkg's status (mtimes).
    None when they cannot be read (then nothing is remembered)."""
    try:
        paths = [os.path.join("/var/lib/apt/lists", n) for n in os.listdir("/var/lib/apt/lists")]
        paths.append("/var/lib/dpkg/status")
        return hashlib.sha256("\n".join(
            "%s %d" % (p, os.stat(p).st_mtime_ns) for p in sorted(paths)).encode()).hexdigest()[:16]
    except OSError:
        return None


def resolve_kernel_package(name):
    """Returns a linux-image package that ships a kernel.  Default: what linux-image-amd64
    depends on; a metapackage (linux-image-6.12-amd64, ...) is followed the same way.
    Remembered per state of apt's lists: two `apt-cache depends` were 2.1 s of every guest
    start (the integration tier boots ~40 guests), and the answer only changes with the lists."""
    name = name or "linux-image-amd64"
    if not name.startswith("linux-image-"):
        name = "linux-image-" + name
    memo = os.path.join(cache_root(), "resolved-packages.json")
    stamp = apt_lists_stamp()
    if not stamp:
        return resolve_kernel_package_uncached(name)
    try:
        with open(memo) as f:
            known = json.load(f)
    except (OSError, ValueError):
        known = None
    if not isinstance(known, dict) or known.get("apt_lists") != stamp:
        known = {"apt_lists": stamp}  # apt's lists changed: nothing remembered holds
    if isinstance(known.get(name), str):
        return known[name]
    pkg = resolve_kernel_package_uncached(name)
    known[name] = pkg
    os.makedirs(os.path.dirname(memo), exist_ok=True)
    tmp = "%s.%d" % (memo, os.getpid())
    with open(tmp, "w") as f:
        json.dump(known, f, sort_keys=True)
    os.replace(tmp, memo)  # atomic: concurrent starts read the old or the new file
    return pkg


def resolve_kernel_package_uncached(name):

    def target(meta):
        p = run(["apt-cache", "depends", meta], check=False)
        if p.returncode != 0 or not p.stdout.strip():
            return None, False
        for line in p.stdout.splitlines():
            m = re.match(r"\s*Depends:\s*(linux-image-[0-9]\S*)", line)
            if m:
                return m.group(1), True
        return None, True

    for attempt in range(2):
        pkg, known = name, True
        for _ in range(3):
            nxt, known = target(pkg)
            if not nxt or nxt == pkg:
                break
            pkg = nxt
        if known or attempt == 1:
            break
        log("apt-cache does not know %s; running apt-get update" % pkg)
        run(["apt-get", "update", "-qq"], timeout=600)
    if not known:
        raise TestbedError("apt knows no package %s" % pkg)
    if pkg in ("linux-image-amd64",) or not re.match(r"linux-image-[0-9]", pkg):
        raise TestbedError("cannot resolve a kernel package from %s" % name)
    return pkg


def kernel_release(pkg):
    rel = pkg[len("linux-image-"):]
    if rel.endswith("-unsigned"):
        rel = rel[: -len("-unsigned")]
    return rel


def kit_sources():
    files = sorted(glob.glob(os.path.join(HERE, "guest", "*")) +
                   glob.glob(os.path.join(HERE, "guestprog", "*")) +
                   glob.glob(os.path.join(HERE, "kmod", "*")) + [os.path.abspath(__file__)])
    return [f for f in files if os.path.isfile(f) and not f.endswith((".o", ".ko", ".cmd"))]


def kit_hash(pkg_deb):
    h = hashlib.sha256()
    h.update(KIT_FORMAT.encode())
    for f in kit_sources():
        h.update(os.path.relpath(f, HERE).encode())
        with open(f, "rb") as fh:
            h.update(fh.read())
    st = os.stat("/bin/busybox")
    h.update(("busybox:%d:%d" % (st.st_size, int(st.st_mtime))).encode())
    h.update(os.path.basename(pkg_deb).encode())
    return h.hexdigest()[:16]


# Guest kernel modules the kit loads when the kernel has them as modules (with their
# dependencies from modules.dep): pvpanic (guest panic -> libvirt <on_crash>), virtio-serial
# (the fast control channel).
GUEST_MODULES = ["pvpanic-mmio", "virtio_pci", "virtio_console"]


def mod_key(path):
    base = os.path.basename(path)
    base = re.sub(r"\.ko(\.(xz|zst|gz))?$", "", base)
    return base.replace("-", "_")


def module_load_order(moddir, wanted):
    """Relative module paths (from modules.dep) for wanted and their dependencies, in load
    order.  Modules that are built in or missing are skipped."""
    deps, by_key = {}, {}
    with contextlib.suppress(FileNotFoundError):
        with open(os.path.join(moddir, "modules.dep")) as f:
            for line in f:
                if ":" not in line:
                    continue
                mod, rest = line.split(":", 1)
                deps[mod] = rest.split()
                by_key[mod_key(mod)] = mod
    order = []

    def visit(mod):
        if mod in order:
            return
        for d in deps.get(mod, []):
            visit(d)
        order.append(mod)
    for w in wanted:
        mod = by_key.get(w.replace("-", "_"))
        if mod:
            visit(mod)
    return order


def ensure_kernel_package(pkg, kdir):
    root = os.path.join(kdir, "pkg", "root")
    done = os.path.join(kdir, "pkg", ".done")
    stamp = "modules2:" + ",".join(GUEST_MODULES)
    if os.path.exists(done):
        with open(done) as f:
            lines = f.read().split()
        if len(lines) == 2 and lines[1] == stamp:
            return root, lines[0]
    dl = os.path.join(kdir, "pkg", "dl")
    shutil.rmtree(os.path.join(kdir, "pkg"), ignore_errors=True)
    os.makedirs(dl)
    log("downloading %s" % pkg)
    p = run(["apt-get", "download", pkg], cwd=dl, check=False, timeout=900)
    if p.returncode != 0:
        log("apt-get download failed; running apt-get update and retrying")
        run(["apt-get", "update", "-qq"], timeout=600)
        run(["apt-get", "download", pkg], cwd=dl, timeout=900)
    debs = glob.glob(os.path.join(dl, "*.deb"))
    if len(debs) != 1:
        raise TestbedError("expected one .deb in %s, found %r" % (dl, debs))
    run(["dpkg-deb", "-x", debs[0], root])
    deb = os.path.basename(debs[0])
    os.unlink(debs[0])
    # The package has no modules.dep (its postinst runs depmod): make one.
    for moddir in glob.glob(os.path.join(root, "lib", "modules", "*")):
        run(["depmod", "-b", root, os.path.basename(moddir)], check=False)
    # Keep /boot (vmlinuz, config, System.map), modules.* and the modules the kit may load.
    for moddir in glob.glob(os.path.join(root, "lib", "modules", "*")):
        keep = {os.path.normpath(os.path.join(moddir, m))
                for m in module_load_order(moddir, GUEST_MODULES)}
        for dp, _dns, fns in os.walk(os.path.join(moddir, "kernel"), topdown=False):
            for fn in fns:
                if os.path.join(dp, fn) not in keep:
                    os.unlink(os.path.join(dp, fn))
            with contextlib.suppress(OSError):
                os.rmdir(dp)
    with open(done, "w") as f:
        f.write(deb + "\n" + stamp + "\n")
    return root, deb


def copy_module(src, dst_dir):
    """Copies a module into dst_dir uncompressed (busybox insmod takes plain .ko); returns its
    file name."""
    name = re.sub(r"\.(xz|zst|gz)$", "", os.path.basename(src))
    dst = os.path.join(dst_dir, name)
    if src.endswith(".xz"):
        with lzma.open(src) as fi, open(dst, "wb") as fo:
            shutil.copyfileobj(fi, fo)
    elif src.endswith(".gz"):
        with gzip.open(src) as fi, open(dst, "wb") as fo:
            shutil.copyfileobj(fi, fo)
    elif src.endswith(".zst"):
        with open(dst, "wb") as fo:
            subprocess.run(["zstd", "-dc", src], stdout=fo, check=True)
    else:
        shutil.copy(src, dst)
    return name


def ensure_headers(kver):
    hdr = "/usr/src/linux-headers-" + kver
    if not os.path.isfile(os.path.join(hdr, "Makefile")):
        log("installing linux-headers-%s (test dependency)" % kver)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        p = run(["apt-get", "install", "-y", "-qq", "--no-install-recommends",
                 "linux-headers-" + kver], check=False, timeout=1200, env=env)
        if p.returncode != 0:
            run(["apt-get", "update", "-qq"], timeout=600)
            run(["apt-get", "install", "-y", "-qq", "--no-install-recommends",
                 "linux-headers-" + kver], timeout=1200, env=env)
    return hdr


def build_module(kver, outdir):
    """Builds every module in kmod/ against linux-headers-<kver>; returns the .ko paths."""
    hdr = ensure_headers(kver)
    with tempfile.TemporaryDirectory(prefix="stallmon-kmod-") as tmp:
        for f in glob.glob(os.path.join(HERE, "kmod", "*")):
            if f.endswith((".c", ".h", "Kbuild")):
                shutil.copy(f, tmp)
        p = run(["make", "-C", hdr, "M=" + tmp, "modules", "-j2"], check=False, timeout=600)
        if p.returncode != 0:
            raise TestbedError("kernel module build failed:\n%s\n%s" % (p.stdout[-3000:],
                                                                         p.stderr[-3000:]))
        out = []
        for ko in sorted(glob.glob(os.path.join(tmp, "*.ko"))):
            shutil.copy(ko, outdir)
            out.append(os.path.join(outdir, os.path.basename(ko)))
        return out


def build_guest_programs(outdir):
    """Builds each guestprog/*.c into a static binary (the initramfs has no libc); returns
    the paths."""
    out = []
    for src in sorted(glob.glob(os.path.join(HERE, "guestprog", "*.c"))):
        exe = os.path.join(outdir, os.path.basename(src)[:-2])
        p = run(["gcc", "-static", "-O2", "-pthread", "-Wall", "-o", exe, src], check=False,
                timeout=300)
        if p.returncode != 0:
            raise TestbedError("guest program %s failed to build:\n%s" % (src, p.stderr[-3000:]))
        out.append(exe)
    return out


def build_initramfs(kroot, kver, modules, programs, out):
    with tempfile.TemporaryDirectory(prefix="stallmon-initramfs-") as st:
        for d in ("bin", "sbin", "proc", "sys", "dev", "tmp", "run", "lib/modules", "etc"):
            os.makedirs(os.path.join(st, d), exist_ok=True)
        shutil.copy("/bin/busybox", os.path.join(st, "bin", "busybox"))
        applets = run(["/bin/busybox", "--list"]).stdout.split()
        for a in applets:
            if a in ("busybox",) or "/" in a:
                continue
            link = os.path.join(st, "bin", a)
            if not os.path.lexists(link):
                os.symlink("busybox", link)
        for f in ("tb-ctl", "tb-load"):
            shutil.copy(os.path.join(HERE, "guest", f), os.path.join(st, "bin", f))
            os.chmod(os.path.join(st, "bin", f), 0o755)
        for exe in programs:
            shutil.copy(exe, os.path.join(st, "bin", os.path.basename(exe)))
        shutil.copy(os.path.join(HERE, "guest", "init"), os.path.join(st, "init"))
        os.chmod(os.path.join(st, "init"), 0o755)
        for m in modules:
            shutil.copy(m, os.path.join(st, os.path.basename(m)))
        moddir = os.path.join(kroot, "lib", "modules", kver)
        loaded = [copy_module(os.path.join(moddir, m), os.path.join(st, "lib", "modules"))
                  for m in module_load_order(moddir, GUEST_MODULES)]
        with open(os.path.join(st, "lib", "modules", "load.list"), "w") as f:
            f.write("".join(m + "\n" for m in loaded))
        with open(os.path.join(st, "etc", "kit-release"), "w") as f:
            f.write(kver + "\n")
        with contextlib.suppress(OSError):
            os.mknod(os.path.join(st, "dev", "console"), 0o600 | 0o020000, os.makedev(5, 1))
        names = []
        for dp, dns, fns in os.walk(st):
            for n in dns + fns:
                names.append(os.path.relpath(os.path.join(dp, n), st))
        names.sort()
        listing = ("\0".join(names) + "\0").encode()
        with open(out + ".tmp", "wb") as fo:
            cp = subprocess.Popen(["cpio", "--null", "-o", "-H", "newc", "-R", "0:0", "--quiet"],
                                  cwd=st, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE)
            data, err = cp.communicate(listing)
            if cp.returncode != 0:
                raise TestbedError("cpio failed: %s" % err.decode(errors="replace"))
            fo.write(gzip.compress(data, 6))
        os.rename(out + ".tmp", out)


def build_kit(kernel=None, force=False):
    pkg = resolve_kernel_package(kernel)
    kver = kernel_release(pkg)
    kdir = os.path.join(cache_root(), kver)
    os.makedirs(kdir, exist_ok=True)
    with file_lock(os.path.join(kdir, ".lock")):
        kroot, deb = ensure_kernel_package(pkg, kdir)
        vmlinuz = os.path.join(kroot, "boot", "vmlinuz-" + kver)
        if not os.path.isfile(vmlinuz):
            raise TestbedError("%s has no /boot/vmlinuz-%s" % (pkg, kver))
        kh = kit_hash(deb)
        kit = os.path.join(kdir, "kit-" + kh)
        meta_path = os.path.join(kit, "kit.json")
        if os.path.isfile(meta_path) and not force:
            with open(meta_path) as f:
                meta = json.load(f)
            meta["cached"] = True
            return meta
        t0 = time.monotonic()
        shutil.rmtree(kit, ignore_errors=True)
        os.makedirs(kit)
        modules = build_module(kver, kit)
        initrd = os.path.join(kit, "initrd.img")
        programs = build_guest_programs(kit)
        build_initramfs(kroot, kver, modules, programs, initrd)
        meta = {"package": pkg, "deb": deb, "kernel_release": kver, "kernel": vmlinuz,
                "initrd": initrd, "modules": modules, "programs": programs, "kit_dir": kit,
                "hash": kh,
                "build_seconds": round(time.monotonic() - t0, 1)}
        with open(meta_path + ".tmp", "w") as f:
            json.dump(meta, f, indent=1, sort_keys=True)
        os.rename(meta_path + ".tmp", meta_path)
        # Drop kits of older source versions for this kernel once nobody can still be booting
        # from them (a day old).
        for old in glob.glob(os.path.join(kdir, "kit-*")):
            if old != kit and time.time() - os.stat(old).st_mtime > 86400:
                shutil.rmtree(old, ignore_errors=True)
        meta["cached"] = False
        return meta


# ---------------------------------------------------------------------------------------------
# libvirt
# ---------------------------------------------------------------------------------------------

QEMU_CONF = "/etc/libvirt/qemu.conf"
QEMU_CONF_SETTINGS = [("user", '"root"'), ("group", '"root"'), ("security_driver", '"none"'),
                      ("cgroup_controllers", "[ ]")]


def libvirt_answers(timeout=10):
    try:
        p = subprocess.run(VIRSH + ["version"], timeout=timeout, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
        return p.returncode == 0
    except (subprocess.TimeoutExpired, FileNotFoundError):
        return False


def have_systemd():
    return os.path.isdir("/run/systemd/system")


def ensure_libvirt_user():
    def exists(db, name):
        return subprocess.run(["getent", db, name], stdout=subprocess.DEVNULL).returncode == 0
    if not exists("group", "libvirt-qemu"):
        run(["groupadd", "-r", "libvirt-qemu"])
    if not exists("passwd", "libvirt-qemu"):
        cmd = ["useradd", "-r", "-g", "libvirt-qemu", "-d", "/var/lib/libvirt",
               "-s", "/usr/sbin/nologin"]
        if exists("group", "kvm"):
            cmd += ["-G", "kvm"]
        run(cmd + ["libvirt-qemu"])


def ensure_qemu_conf():
    try:
        with open(QEMU_CONF) as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        lines = []
    keys = {k for k, _ in QEMU_CONF_SETTINGS}
    want = ["%s = %s" % kv for kv in QEMU_CONF_SETTINGS]
    current = {}
    for line in lines:
        m = re.match(r"\s*(\w+)\s*=\s*(.*?)\s*$", line)
        if m and m.group(1) in keys:
            current[m.group(1)] = m.group(2)
    if all(current.get(k) == v for k, v in QEMU_CONF_SETTINGS):
        return False
    kept = [l for l in lines
            if not (re.match(r"\s*(\w+)\s*=", l) and re.match(r"\s*(\w+)", l).group(1) in keys)]
    kept += ["", "# stallmon testbed (no systemd, no cgroup placement, no sVirt)"] + want
    os.makedirs(os.path.dirname(QEMU_CONF), exist_ok=True)
    with open(QEMU_CONF + ".tmp", "w") as f:
        f.write("\n".join(kept) + "\n")
    os.rename(QEMU_CONF + ".tmp", QEMU_CONF)
    return True


def find_daemon_pid(name):
    for pidfile in ("/run/%s.pid" % name, "/var/run/%s.pid" % name):
        with contextlib.suppress(OSError, ValueError):
            with open(pidfile) as f:
                pid = int(f.read().strip())
            if pid_alive(pid) and proc_comm(pid) == name:
                return pid
    for d in os.listdir("/proc"):
        if d.isdigit() and proc_comm(int(d)) == name:
            return int(d)
    return None


def proc_comm(pid, tid=None):
    path = "/proc/%d/comm" % pid if tid is None else "/proc/%d/task/%d/comm" % (pid, tid)
    try:
        with open(path) as f:
            return f.read().rstrip("\n")
    except OSError:
        return None


def start_daemon(path, logname):
    os.makedirs("/var/log/libvirt", exist_ok=True)
    with open("/var/log/libvirt/%s" % logname, "ab") as logf:
        subprocess.Popen([path], stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                         start_new_session=True, close_fds=True, cwd="/")


def libvirt_up(timeout=60):
    if libvirt_answers():
        return {"libvirtd": "already-running", "pid": find_daemon_pid("libvirtd")}
    if os.geteuid() != 0:
        raise TestbedError("libvirtd does not answer and we are not root to start it")
    with file_lock(os.path.join(run_root(), ".libvirt-up.lock")):
        if libvirt_answers():  # someone else started it meanwhile
            return {"libvirtd": "already-running", "pid": find_daemon_pid("libvirtd")}
        return start_libvirt(timeout)


def start_libvirt(timeout):
    if have_systemd():
        run(["systemctl", "start", "virtlogd", "libvirtd"], check=False)
    else:
        ensure_libvirt_user()
        ensure_qemu_conf()
        for d in ("/var/log/libvirt", "/var/run/libvirt", "/var/lib/libvirt/images",
                  "/var/lib/libvirt/qemu", "/var/cache/libvirt"):
            os.makedirs(d, exist_ok=True)
        if find_daemon_pid("virtlogd") is None:
            start_daemon("/usr/sbin/virtlogd", "virtlogd-testbed.log")
        if find_daemon_pid("libvirtd") is None:
            start_daemon("/usr/sbin/libvirtd", "libvirtd-testbed.log")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if libvirt_answers(timeout=5):
            return {"libvirtd": "started", "pid": find_daemon_pid("libvirtd")}
        time.sleep(0.3)
    raise TestbedError("libvirtd did not answer within %ss (see /var/log/libvirt/"
                       "libvirtd-testbed.log)" % timeout)


def libvirtd_restart(timeout=60):
    t0 = time.monotonic()
    if have_systemd():
        run(["systemctl", "restart", "libvirtd"])
    else:
        pid = find_daemon_pid("libvirtd")
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 15
            while pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
                while pid_alive(pid):
                    time.sleep(0.1)
        start_daemon("/usr/sbin/libvirtd", "libvirtd-testbed.log")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if libvirt_answers(timeout=5):
            return {"libvirtd": "restarted", "pid": find_daemon_pid("libvirtd"),
                    "seconds": round(time.monotonic() - t0, 2)}
        time.sleep(0.2)
    raise TestbedError("libvirtd did not answer within %ss after restart" % timeout)


# ---------------------------------------------------------------------------------------------
# Domains
# ---------------------------------------------------------------------------------------------

def probe_kvm(kit, timeout=20):
    """Boots the kit with qemu -accel kvm directly and waits for the ready marker."""
    if not os.path.exists("/dev/kvm"):
        return False
    cmd = ["qemu-system-x86_64", "-accel", "kvm", "-M", "q35", "-m", "256", "-smp", "1",
           "-nographic", "-no-reboot", "-kernel", kit["kernel"], "-initrd", kit["initrd"],
           "-append", "console=ttyS0 panic=-1 stallmon.scenario=none", "-serial", "stdio",
           "-monitor", "none", "-display", "none"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                         stdin=subprocess.DEVNULL)
    ok = False
    buf = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            r, _, _ = select.select([p.stdout], [], [], 0.5)
            if r:
                chunk = os.read(p.stdout.fileno(), 65536)
                if not chunk:
                    break
                buf += chunk
                if READY_MARKER.encode() in buf:
                    ok = True
                    break
    finally:
        p.kill()
        p.wait()
    return ok


def choose_accel(accel, kit):
    accel = accel or os.environ.get("STALLMON_TESTBED_ACCEL", "tcg")
    if accel == "auto":
        cache = os.path.join(cache_root(), "accel-probe.json")
        with contextlib.suppress(OSError, ValueError):
            with open(cache) as f:
                c = json.load(f)
            if c.get("kernel") == kit["kernel_release"]:
                return "kvm" if c["kvm"] else "tcg"
        ok = probe_kvm(kit)
        with open(cache, "w") as f:
            json.dump({"kernel": kit["kernel_release"], "kvm": ok}, f)
        return "kvm" if ok else "tcg"
    if accel not in ("tcg", "kvm"):
        raise TestbedError("accel must be tcg, kvm or auto")
    return accel


def xml_escape(s):
    return (s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace("'", "&apos;").replace('"', "&quot;"))


def domain_dir(name):
    return os.path.join(run_root(), name)


def domain_xml(name, kit, accel, vcpus, memory_mib, cmdline, on_crash, console, ctl_sock,
               vctl_sock, machine="q35", memory_backing="anonymous", max_memory_mib=0,
               on_reboot="destroy", no_kernel=False):
    with open(os.path.join(HERE, "domain.xml.in")) as f:
        tmpl = f.read()
    if no_kernel:
        # Firmware with nothing to boot (no kernel, no disk): a guest without Linux.
        tmpl = "\n".join(l for l in tmpl.split("\n")
                         if not re.search(r"@(KERNEL|INITRD|CMDLINE)@", l))
    cpu = ("<cpu mode='host-passthrough'/>" if accel == "kvm" else
           "<cpu mode='custom' match='exact' check='none'><model fallback='allow'>qemu64"
           "</model></cpu>")
    values = {"NAME": name, "TYPE": "kvm" if accel == "kvm" else "qemu",
              "MEMORY_MIB": str(memory_mib), "VCPUS": str(vcpus), "KERNEL": kit["kernel"],
              "INITRD": kit["initrd"], "CMDLINE": cmdline, "ON_CRASH": on_crash,
              "ON_REBOOT": on_reboot,
              "CONSOLE": console, "CTL_SOCK": ctl_sock, "VCTL_SOCK": vctl_sock, "CPU": cpu,
              "MACHINE": machine}
    # Memory options (issue 11's layout tests): backing, and room for a hotplugged DIMM (libvirt
    # wants maxMemory with slots and a NUMA cell for that).
    extra = ""
    if memory_backing in ("memfd", "hugepages"):
        extra += "<memoryBacking>%s</memoryBacking>" % (
            "<source type='memfd'/><access mode='shared'/>" if memory_backing == "memfd"
            else "<hugepages/>")
    elif memory_backing != "anonymous":
        raise TestbedError("memory backing %r: anonymous, memfd or hugepages" % memory_backing)
    if max_memory_mib:
        extra += "<maxMemory slots='4' unit='MiB'>%d</maxMemory>" % max_memory_mib
        numa = ("<numa><cell id='0' cpus='0-%d' memory='%d' unit='MiB'/></numa>"
                % (vcpus - 1, memory_mib))
        values["CPU"] = (cpu.replace("</cpu>", numa + "</cpu>") if cpu.endswith("</cpu>")
                         else cpu.replace("/>", ">" + numa + "</cpu>", 1))
    values["MEMORY_EXTRA"] = extra
    for k, v in values.items():
        tmpl = tmpl.replace("@%s@" % k, v if k in ("CPU", "MEMORY_EXTRA") else xml_escape(v))
    return tmpl


def start_domain(name, kernel=None, vcpus=4, memory=512, scenario="ipi,wakeups,sleepers",
                 wdt=None, ipi_interval=None, extra_cmdline="", panic=-1, on_crash="destroy",
                 accel=None, owner_pid=None, wait=0.0, machine="q35",
                 memory_backing="anonymous", max_memory=0, use_monitor=False,
                 on_reboot="destroy", no_kernel=False):
    if not re.match(r"^[A-Za-z0-9_.+-]{1,60}$", name):
        raise TestbedError("bad domain name %r" % name)
    kit = build_kit(kernel)
    libvirt_up()
    accel = choose_accel(accel, kit)
    d = domain_dir(name)
    if os.path.exists(d):
        if domain_state(name) is not None:
            raise TestbedError("domain %s already exists" % name)
        shutil.rmtree(d)
    os.makedirs(d)
    console = os.path.join(d, "console.log")
    ctl = os.path.join(d, "ctl.sock")
    vctl = os.path.join(d, "vctl.sock")
    if len(ctl) > 100:
        raise TestbedError("control socket path too long: %s" % ctl)
    cmdline = "console=ttyS0 panic=%d stallmon.scenario=%s" % (panic, scenario or "none")
    if wdt is not None:
        cmdline += " stallmon.wdt=%d" % wdt
    if ipi_interval is not None:
        cmdline += " stallmon.ipi_interval=%s" % ipi_interval
    if extra_cmdline:
        cmdline += " " + extra_cmdline
    xml = domain_xml(name, kit, accel, vcpus, memory, cmdline, on_crash, console, ctl, vctl,
                     machine, memory_backing, max_memory, on_reboot, no_kernel)
    xml_path = os.path.join(d, "domain.xml")
    with open(xml_path, "w") as f:
        f.write(xml)
    meta = {"name": name, "accel": accel, "vcpus": vcpus, "memory_mib": memory,
            "console": console, "ctl_socket": ctl, "vctl_socket": vctl, "cmdline": cmdline,
            "kit": kit,
            "owner_pid": os.getppid() if owner_pid is None else owner_pid,
            "run_dir": d, "started": time.time()}
    with open(os.path.join(d, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1, sort_keys=True)
    t0 = time.monotonic()
    run(VIRSH + ["create", xml_path], timeout=120)
    meta["qemu_pid"] = qemu_pid(name)
    if wait:
        # Without a kernel nothing ever prints the ready marker: the vCPU threads are all there is.
        meta["boot_seconds"] = 0.0 if no_kernel else wait_ready(name, wait, t0=t0)
        # use_monitor=False: thread names, so that the domain is never tainted "custom-monitor".
        meta["vcpu_tids"] = vcpu_tids(name, use_monitor=use_monitor)
    return meta


def attach_dimm(name, size_mib, node=0):
    """Hotplugs a DIMM (needs start --max-memory); returns the live XML's memory devices."""
    d = domain_dir(name)
    path = os.path.join(d, "dimm-%d.xml" % int(time.time() * 1000))
    with open(path, "w") as f:
        f.write("<memory model='dimm'><target><size unit='MiB'>%d</size><node>%d</node>"
                "</target></memory>" % (size_mib, node))
    run(VIRSH + ["attach-device", name, path, "--live"], timeout=120)
    xml = run(VIRSH + ["dumpxml", name], timeout=30).stdout
    return {"attached": name, "size_mib": size_mib,
            "devices": re.findall(r"<memory model='dimm'.*?</memory>", xml, re.S)}


def domain_state(name):
    p = subprocess.run(VIRSH + ["domstate", name], stdout=subprocess.PIPE,
                       stderr=subprocess.DEVNULL, text=True, timeout=30)
    return p.stdout.strip() if p.returncode == 0 else None


def load_meta(name):
    with open(os.path.join(domain_dir(name), "meta.json")) as f:
        return json.load(f)


def qemu_pid(name):
    for base in ("/run/libvirt/qemu", "/var/run/libvirt/qemu"):
        with contextlib.suppress(OSError, ValueError):
            with open(os.path.join(base, name + ".pid")) as f:
                return int(f.read().strip())
    raise TestbedError("no qemu pid file for domain %s" % name)


def read_console(name):
    try:
        with open(os.path.join(domain_dir(name), "console.log"), "rb") as f:
            return f.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ""


class GuestBootUnhealthy(TestbedError):
    """The guest kernel failed its own boot (it vanished: panic, triple fault; or its console
    showed an Oops/BUG/panic) before the ready marker, before any fault and without
    stallmon: the same verdict as the boot-health gate, which replaces such a guest. A boot that
    merely times out with a clean console stays a plain error (a host or testbed problem)."""


def wait_ready(name, timeout=120, t0=None, marker=READY_MARKER):
    t0 = time.monotonic() if t0 is None else t0
    deadline = t0 + timeout
    while True:
        text = read_console(name)
        if marker in text:
            return round(time.monotonic() - t0, 2)
        # A fault line before the marker already decides the boot-health gate (it fails any
        # console with one): say so now instead of at the timeout. Seen 2026-12-06: a 6.1 boot
        # whose static-key patching (text_poke_bp_batch) waited forever on an IPI printed a soft
        # lockup at 68 s, and the gate replaced the guest only after the 180-s boot timeout.
        faults = console_faults(text)
        if faults:
            raise GuestBootUnhealthy("domain %s: console faults while booting: %s; console tail:\n%s"
                                     % (name, faults, text[-2000:]))
        if time.monotonic() > deadline:
            # A clean console (checked just above): a host or testbed problem, not the kernel's.
            raise TestbedError("domain %s: no %r on the console within %ss; console tail:\n%s"
                               % (name, marker, timeout, text[-2000:]))
        if int(time.monotonic() * 10) % 20 == 0 and domain_state(name) is None:
            raise GuestBootUnhealthy("domain %s vanished while booting; console tail:\n%s"
                                     % (name, read_console(name)[-2000:]))
        time.sleep(0.2)


def vcpu_tids(name, pid=None, use_monitor=False, timeout=10):
    """vCPU index -> host thread id: QEMU's vCPU thread names (`CPU n/TCG`, debug-threads=on),
    or QMP query-cpus-fast with use_monitor (libvirt then taints the domain "custom-monitor")."""
    if use_monitor:
        p = run(["timeout", str(timeout)] + VIRSH + ["qemu-monitor-command", name,
                                                     '{"execute":"query-cpus-fast"}'],
                check=False)
        if p.returncode == 0:
            ret = json.loads(p.stdout)["return"]
            return {str(c["cpu-index"]): c["thread-id"] for c in ret}
        log("query-cpus-fast failed (%s); using thread names" % p.stderr.strip())
    pid = pid or qemu_pid(name)
    out = {}
    for tid in os.listdir("/proc/%d/task" % pid):
        m = re.match(r"CPU (\d+)/", proc_comm(pid, int(tid)) or "")
        if m:
            out[m.group(1)] = int(tid)
    return out


def release_faults_on(pid):
    """Undoes every testbed fault that touches process pid (before a destroy)."""
    for st in injector_states():
        if st.get("pid") == pid:
            undo_state(st, force=True)
    for m in cgroup_mounts().values():
        for cg in glob.glob(os.path.join(m, CG_PREFIX + "*")):
            tids = read_ints(os.path.join(cg, "tasks"))
            if any(os.path.exists("/proc/%d/task/%d" % (pid, t)) for t in tids):
                remove_cgroup(cg)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGCONT)


def destroy_domain(name, keep_files=None):
    keep_files = (os.environ.get("STALLMON_TESTBED_KEEP") == "1" if keep_files is None
                  else keep_files)
    with contextlib.suppress(TestbedError):
        release_faults_on(qemu_pid(name))
    state = domain_state(name)
    if state is not None:
        run(VIRSH + ["destroy", name], check=False, timeout=60)
        p = run(VIRSH + ["dominfo", name], check=False, timeout=30)
        if p.returncode == 0:  # persistent: undefine too
            run(VIRSH + ["undefine", name], check=False, timeout=30)
    if not keep_files:
        shutil.rmtree(domain_dir(name), ignore_errors=True)
    return {"destroyed": name, "was": state}


# ---------------------------------------------------------------------------------------------
# Guest control channel
# ---------------------------------------------------------------------------------------------

class GuestChannel:
    """Client of the guest's tb-ctl loop on the domain's ctl.sock (see guest/tb-ctl)."""

    def __init__(self, name, timeout=30, channel=None):
        channel = channel or os.environ.get("STALLMON_TESTBED_CHANNEL", "auto")
        if channel == "auto":
            channel = "virtio" if guest_has_vport(name) else "serial"
        if channel not in ("serial", "virtio"):
            raise TestbedError("channel must be auto, serial or virtio")
        self.channel = channel
        self.path = os.path.join(domain_dir(name), "vctl.sock" if channel == "virtio"
                                 else "ctl.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(self.path)
        except OSError as e:
            raise TestbedError("cannot connect to %s: %s" % (self.path, e)) from e
        self.buf = bytearray()

    def _until(self, marker, deadline):
        """Reads until a line starting with marker is complete; returns (text before the
        marker line, the marker line) and keeps what follows."""
        start = 0
        while True:
            i = self.buf.find(marker, start)
            if i >= 0 and (i == 0 or self.buf[i - 1] == 10):
                j = self.buf.find(b"\n", i)
                if j >= 0:
                    before = bytes(self.buf[:i])
                    line = bytes(self.buf[i:j]).rstrip(b"\r").decode("ascii", "replace")
                    del self.buf[:j + 1]
                    return before, line
            start = max(0, len(self.buf) - len(marker) - 2)
            left = deadline - time.monotonic()
            if left <= 0:
                raise TestbedError("guest control channel: timed out")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(1 << 20)
            except socket.timeout as e:
                raise TestbedError("guest control channel: timed out") from e
            if not chunk:
                raise TestbedError("guest control channel closed")
            self.buf += chunk
            # No pause here: QEMU writes the serial line byte by byte and a unix socket's
            # send buffer holds only a few hundred one-byte writes, so a slow reader throttles
            # the guest.

    @staticmethod
    def _tag(kind):
        return "%s%d.%d" % (kind, os.getpid(), time.monotonic_ns())

    def ping(self, timeout=10):
        tag = self._tag("p")
        deadline = time.monotonic() + timeout
        self.sock.sendall(("\nPING %s\n" % tag).encode())
        self._until(("@@TB-PONG %s" % tag).encode(), deadline)
        return True

    def run(self, script, timeout=60):
        """Runs script with sh in the guest; returns (exit code, stdout bytes, stderr bytes)."""
        tag = self._tag("r")
        payload = base64.b64encode(script.encode()).decode()
        deadline = time.monotonic() + timeout
        # The leading newline ends any partial line left by an earlier client that went away
        # mid-request (e.g. while the VM was stopped), so this request is not glued to it.
        enc = "raw" if self.channel == "virtio" else "gz"
        self.sock.sendall(("\nRUN %s %s %s\n" % (tag, payload, enc)).encode())
        self._until(("@@TB-BEGIN %s" % tag).encode(), deadline)
        out, _ = self._until(("@@TB-ERR %s" % tag).encode(), deadline)
        err, end = self._until(("@@TB-END %s " % tag).encode(), deadline)
        rc = int(end.split()[2])

        def dec(b64):
            raw = base64.b64decode(b"".join(b64.split()))
            return gzip.decompress(raw) if raw and enc == "gz" else raw
        return rc, dec(out), dec(err)

    def close(self):
        self.sock.close()


def guest_has_vport(name):
    """True if the guest's ready line says its control loop also serves the virtio port."""
    try:
        with open(os.path.join(domain_dir(name), "console.log"), "rb") as f:
            head = f.read(1 << 20).decode("utf-8", errors="replace")
    except OSError:
        return False
    m = re.search(r"STALLMON-READY .*ctl=(\S+)", head)
    return bool(m) and "vport" in m.group(1).split(",")


def guest_run(name, script, timeout=60, channel=None):
    ch = GuestChannel(name, timeout, channel)
    try:
        return ch.run(script, timeout)
    finally:
        ch.close()


# ---------------------------------------------------------------------------------------------
# Guest health (criteria independent of stallmon: the guest's own counters and console)
# ---------------------------------------------------------------------------------------------

# Console lines that mean the guest kernel itself is broken (or, once a fault is injected,
# reports it): oopses, BUG (soft lockups included), panics, RCU stalls, warnings.
CONSOLE_FAULT_RE = re.compile(r"Oops|BUG:|Kernel panic|general protection fault|"
                              r"rcu: INFO: rcu_\w+ (self-)?detected stall|WARNING: CPU")


def console_faults(text, limit=5):
    """The first `limit` fault lines of a console log."""
    return [ln.strip() for ln in text.splitlines() if CONSOLE_FAULT_RE.search(ln)][:limit]


def timer_interrupts(name, timeout=30):
    """Local timer interrupts per guest CPU ({cpu: count}) from the guest's /proc/interrupts."""
    rc, out, err = guest_run(name, "cat /proc/interrupts", timeout)
    if rc != 0:
        raise TestbedError("cat /proc/interrupts in %s: rc %d %s" % (name, rc, err[-300:]))
    lines = out.decode(errors="replace").splitlines()
    cpus = [int(c[3:]) for c in lines[0].split() if c.startswith("CPU")] if lines else []
    for ln in lines[1:]:
        f = ln.split()
        if f and f[0] == "LOC:":
            return {c: int(v) for c, v in zip(cpus, f[1:1 + len(cpus)])}
    raise TestbedError("no LOC line in the guest's /proc/interrupts")


def guest_health(name, gap=6.0, timeout=90, poll=0.5):
    """Boot health before any fault: every guest CPU's local timer interrupt count advances
    within `gap` seconds (the watchdog hrtimer alone fires every 2*watchdog_thresh/5 s on each
    CPU, even an idle one) and the console shows no fault. JSON-able dict, "ok" the verdict.
    The counts are read every `poll` s and the wait ends as soon as every CPU has advanced: a
    busy guest's CPUs tick every few ms, so the gate costs ~1 s instead of the whole gap (6 s
    of each of ~40 guest boots in the integration tier); a CPU that has not advanced still
    gets the whole gap."""
    res = {"name": name, "gap_s": gap, "ok": False}
    try:
        before = timer_interrupts(name, timeout)
        t_end = time.monotonic() + gap
        while True:
            time.sleep(max(0.0, min(poll, t_end - time.monotonic())))
            after = timer_interrupts(name, timeout)
            if all(after.get(c, 0) > before[c] for c in before) or time.monotonic() >= t_end:
                break
        res["waited_s"] = round(gap - max(0.0, t_end - time.monotonic()), 2)
    except TestbedError as e:
        res["error"] = str(e)
        before = after = None
    res["console_faults"] = console_faults(read_console(name))
    if before is not None:
        res["timer_before"], res["timer_after"] = before, after
        res["stuck_cpus"] = sorted(c for c in before if after.get(c, 0) <= before[c])
        res["ok"] = bool(before) and not res["stuck_cpus"] and not res["console_faults"]
    return res


def survey_one(name, scenario, observe, args):
    """Boots one guest, watches it for `observe` seconds after ready, destroys it."""
    r = {"scenario": scenario, "boot_failed": False, "no_answer": False, "stuck": False,
         "stuck_cpus": []}
    try:
        meta = start_domain(name, kernel=args.kernel, vcpus=args.vcpus, scenario=scenario,
                            wdt=args.wdt, panic=0, on_crash="preserve", owner_pid=os.getpid(),
                            wait=args.boot_timeout)
        r["boot_s"] = meta["boot_seconds"]
        t_end = time.monotonic() + observe
        prev = None
        while True:
            try:
                # Generous: on a host at load 40 one command takes 5-7 s, spikes far more; a
                # slow answer is not a dead guest.
                cur = timer_interrupts(name, args.answer_timeout)
            except TestbedError as e:
                r["no_answer"], r["error"] = True, str(e)[-300:]
                break
            if prev is not None:
                stuck = sorted(c for c in prev if cur.get(c, 0) <= prev[c])
                if stuck:
                    r["stuck"] = True
                    r["stuck_cpus"] = sorted(set(r["stuck_cpus"]) | set(stuck))
            prev = cur
            if time.monotonic() >= t_end:
                break
            time.sleep(min(args.sample, max(0.0, t_end - time.monotonic())))
    except TestbedError as e:
        r["boot_failed"], r["error"] = True, str(e)[-300:]
    r["console_faults"] = console_faults(read_console(name), 3)
    destroy_domain(name)
    return r


def boot_survey(args):
    """Boots args.boots guests per scenario (interleaved, args.parallel at a time) and prints
    per-boot JSON lines on stderr and one markdown table row per scenario on stdout."""
    import concurrent.futures
    scenarios = list(args.scenario)
    jobs = [(i, sc) for i in range(args.boots) for sc in scenarios]
    results = {sc: [] for sc in scenarios}
    load0 = os.getloadavg()
    loads = []
    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.parallel) as ex:
        futs = {ex.submit(survey_one, "stallmon-survey-%d-%d-%d" % (os.getpid(), i, k), sc,
                          args.observe, args): sc for k, (i, sc) in enumerate(jobs)}
        for f in concurrent.futures.as_completed(futs):
            r = f.result()
            results[futs[f]].append(r)
            loads.append(os.getloadavg()[0])
            print(json.dumps(r, sort_keys=True), file=sys.stderr, flush=True)
    kver = build_kit(args.kernel)["kernel_release"]
    print("| scenario | guest kernel | boots | Oops/BUG/panic on console | a CPU's timer "
          "interrupts stuck | control channel dead | boot failed | healthy | host load "
          "(1-min avg, min-max) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for sc in scenarios:
        rs = results[sc]
        faults = sum(1 for r in rs if r["console_faults"])
        stuck = sum(1 for r in rs if r["stuck"])
        dead = sum(1 for r in rs if r["no_answer"])
        failed = sum(1 for r in rs if r["boot_failed"])
        healthy = sum(1 for r in rs if not (r["console_faults"] or r["stuck"] or r["no_answer"]
                                            or r["boot_failed"]))
        print("| `%s` | %s | %d | %d | %d | %d | %d | %d | %.1f-%.1f |" % (
            sc, kver, len(rs), faults, stuck, dead, failed, healthy,
            min([load0[0]] + loads), max([load0[0]] + loads)))
    print("(%d vCPUs, wdt %s, observed %g s after ready, %d in parallel, %.0f min)" % (
        args.vcpus, args.wdt, args.observe, args.parallel, (time.monotonic() - t0) / 60))
    return 0


# ---------------------------------------------------------------------------------------------
# Host /proc helpers
# ---------------------------------------------------------------------------------------------

def thread_state_from_stat(text):
    return text[text.rindex(")") + 2:].split()[0]


def thread_stat(pid, tid):
    with open("/proc/%d/task/%d/stat" % (pid, tid)) as f:
        text = f.read()
    fields = text[text.rindex(")") + 2:].split()
    return {"state": fields[0], "utime": int(fields[11]), "stime": int(fields[12])}


def thread_state(pid, tid):
    return thread_stat(pid, tid)["state"]


def thread_schedstat(pid, tid):
    with open("/proc/%d/task/%d/schedstat" % (pid, tid)) as f:
        run_ns, delay_ns, slices = (int(x) for x in f.read().split())
    return {"run_ns": run_ns, "delay_ns": delay_ns, "slices": slices}


def thread_wchan(pid, tid):
    with contextlib.suppress(OSError):
        with open("/proc/%d/task/%d/wchan" % (pid, tid)) as f:
            return f.read().strip()
    return ""


def tracer_pid(tid):
    with open("/proc/%d/status" % tid) as f:
        for line in f:
            if line.startswith("TracerPid:"):
                return int(line.split()[1])
    return 0


def read_ints(path):
    try:
        with open(path) as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def cgroup_mounts():
    """controller name ('freezer', 'cpu', ...) -> v1 mount point; 'unified' -> cgroup2 mount."""
    out = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            pre, post = line.split(" - ", 1)
            fstype, _src, sopts = post.split()[:3]
            mnt = pre.split()[4]
            if fstype == "cgroup":
                for o in sopts.split(","):
                    if o in ("freezer", "cpu", "cpuacct", "cpuset", "memory", "pids"):
                        out.setdefault(o, mnt)
            elif fstype == "cgroup2":
                out.setdefault("unified", mnt)
    return out


def thread_cgroup(pid, tid, controller):
    """Path of tid's cgroup in a v1 hierarchy holding controller ('' = the v2 one)."""
    with open("/proc/%d/task/%d/cgroup" % (pid, tid)) as f:
        for line in f:
            _hid, ctrls, path = line.rstrip("\n").split(":", 2)
            if (controller and controller in ctrls.split(",")) or (not controller and ctrls == ""
                                                                   and _hid == "0"):
                return path
    return "/"


def write_file(path, value):
    with open(path, "w") as f:
        f.write(str(value))


def remove_cgroup(cg):
    """Thaws cg, moves its tasks to the parent cgroup and removes it (v1 or v2)."""
    if os.path.exists(os.path.join(cg, "freezer.state")):
        with contextlib.suppress(OSError):
            write_file(os.path.join(cg, "freezer.state"), "THAWED")
    if os.path.exists(os.path.join(cg, "cgroup.freeze")):
        with contextlib.suppress(OSError):
            write_file(os.path.join(cg, "cgroup.freeze"), "0")
    parent = os.path.dirname(cg)
    target = "tasks" if os.path.exists(os.path.join(parent, "tasks")) else "cgroup.threads"
    for t in read_ints(os.path.join(cg, "tasks")) or read_ints(os.path.join(cg, "cgroup.threads")):
        with contextlib.suppress(OSError):
            write_file(os.path.join(parent, target), t)
    for _ in range(50):
        try:
            os.rmdir(cg)
            return True
        except FileNotFoundError:
            return True
        except OSError:
            time.sleep(0.1)
    return False


# ---------------------------------------------------------------------------------------------
# Fault injectors
# ---------------------------------------------------------------------------------------------

PTRACE_DETACH = 17
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
WALL = 0x40000000
PR_SET_PDEATHSIG = 1

libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.restype = ctypes.c_long
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]


def injectors_dir():
    return os.path.join(run_root(), "injectors")


def injector_states():
    out = []
    for p in glob.glob(os.path.join(injectors_dir(), "*.json")):
        with contextlib.suppress(OSError, ValueError):
            with open(p) as f:
                st = json.load(f)
            st["_path"] = p
            out.append(st)
    return out


def undo_state(st, force=False):
    """Undoes the fault described by an injector state record.  Returns a list of problems."""
    problems = []
    kind = st["kind"]
    pid, tid = st.get("pid"), st.get("tid")
    if kind in ("freeze", "throttle"):
        cg = st["cgroup"]
        if os.path.isdir(cg):
            if kind == "freeze" and st.get("v2"):
                with contextlib.suppress(OSError):
                    write_file(os.path.join(cg, "cgroup.freeze"), "0")
            elif kind == "freeze":
                with contextlib.suppress(OSError):
                    write_file(os.path.join(cg, "freezer.state"), "THAWED")
            orig = st.get("orig_cgroup")
            if orig and tid and os.path.exists("/proc/%d/task/%d" % (pid, tid)):
                try:
                    if st.get("v2"):
                        write_file(os.path.join(orig, "cgroup.procs"), pid)
                    else:
                        write_file(os.path.join(orig, "tasks"), tid)
                except OSError as e:
                    problems.append("moving %d back to %s: %s" % (tid, orig, e))
            for sub in st.get("subdirs", []):
                if os.path.isdir(sub) and not remove_cgroup(sub):
                    problems.append("cannot remove %s" % sub)
            if not remove_cgroup(cg):
                problems.append("cannot remove %s" % cg)
    elif kind == "sigstop":
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    elif kind == "ptrace":
        # Only the tracer can detach; if it died the kernel detached already.
        if st.get("tracer") == os.getpid():
            r = libc.ptrace(PTRACE_DETACH, tid, None, None)
            if r != 0 and ctypes.get_errno() != errno.ESRCH:
                problems.append("PTRACE_DETACH: %s" % os.strerror(ctypes.get_errno()))
    if "_path" in st or force:
        with contextlib.suppress(OSError):
            os.unlink(st.get("_path") or os.path.join(injectors_dir(), "%d.json" % st["tracer"]))
    return problems


def sample_progress(pid, exclude, seconds):
    """run-ns progress of every thread of pid except exclude over `seconds`."""
    def snap():
        out = {}
        for t in os.listdir("/proc/%d/task" % pid):
            t = int(t)
            if t in exclude:
                continue
            with contextlib.suppress(OSError):
                out[t] = thread_schedstat(pid, t)["run_ns"]
        return out
    a = snap()
    time.sleep(seconds)
    b = snap()
    return {t: b[t] - a[t] for t in a if t in b}


def classify_freeze(pid, tid, seconds=1.0):
    """vcpu-only if the rest of the VM keeps running, vm-wide if it stopped (QEMU's big lock),
    lock-held if the main loop already waits for the lock the frozen thread holds."""
    prog = sample_progress(pid, {tid}, seconds)
    vcpus = {}
    for t, d in prog.items():
        m = re.match(r"CPU (\d+)/", proc_comm(pid, t) or "")
        if m:
            vcpus[t] = d
    main = prog.get(pid, 0)
    other_vcpu_max = max(vcpus.values()) if vcpus else 0
    # In the vm-wide case every other vCPU thread and the main loop wait for the big lock:
    # no run time at all.  A running guest shows milliseconds per second.
    waits = {t: thread_wchan(pid, t) for t in list(vcpus) + [pid]}
    states = {}
    for t in list(vcpus) + [pid]:
        with contextlib.suppress(OSError):
            states[t] = thread_state(pid, t)
    # On a host loaded enough, runnable threads may also get no CPU for a while: those are R,
    # not blocked, so they do not count as stopped.
    # The main loop waiting in a futex (for the lock) rather than in its poll also tells an idle
    # guest (KVM vCPUs halted use almost no run time) from a stopped one.
    vm_wide = (main < 200_000 and other_vcpu_max < 200_000
               and not any(st == "R" for st in states.values())
               and "futex" in waits.get(pid, ""))
    # The main loop parked on the big lock while other vCPUs still ran: the frozen thread holds
    # the lock and the rest of the VM is about to stop too (TCG vCPUs run guest code without the
    # lock until they need it). Neither case yet: a caller wanting either one retries.
    lock_held = (not vm_wide and main < 200_000 and states.get(pid) != "R"
                 and "futex" in waits.get(pid, ""))
    return ("vm-wide" if vm_wide else "lock-held" if lock_held else "vcpu-only",
            {"main_run_ns": main, "other_vcpu_run_ns": {str(t): d for t, d in vcpus.items()},
             "wchan": {str(t): w for t, w in waits.items()},
             "state": {str(t): v for t, v in states.items()}, "window_s": seconds})


def wait_for(pred, timeout, step=0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return pred()


class Injector:
    def __init__(self, kind, pid, tid, args):
        self.kind, self.pid, self.tid, self.args = kind, pid, tid, args
        self.state = {"kind": kind, "pid": pid, "tid": tid, "tracer": os.getpid()}
        self.state_path = os.path.join(injectors_dir(), "%d.json" % os.getpid())
        self.applied = False

    def save(self):
        os.makedirs(injectors_dir(), exist_ok=True)
        with open(self.state_path + ".tmp", "w") as f:
            json.dump(self.state, f)
        os.rename(self.state_path + ".tmp", self.state_path)

    def make_cgroup(self, mount, tag):
        cg = os.path.join(mount, "%s%s-%d-%d" % (CG_PREFIX, tag, os.getpid(), self.tid))
        os.mkdir(cg)
        self.state["cgroup"] = cg
        self.save()
        return cg

    def apply(self):
        out = getattr(self, "apply_" + self.kind)()
        self.applied = True
        return out

    # -- freeze --------------------------------------------------------------------------
    def apply_freeze(self):
        mounts = cgroup_mounts()
        pid, tid = self.pid, self.tid
        use = self.args.cgroup
        if use == "auto":
            use = "v1" if "freezer" in mounts else "v2"
        if use == "v1":
            if "freezer" not in mounts:
                raise TestbedError("no cgroup v1 freezer hierarchy")
            self.state["orig_cgroup"] = os.path.join(mounts["freezer"],
                                                     thread_cgroup(pid, tid, "freezer").lstrip("/"))
            cg = self.make_cgroup(mounts["freezer"], "freeze")
            write_file(os.path.join(cg, "tasks"), tid)
            knob, on, off = os.path.join(cg, "freezer.state"), "FROZEN", "THAWED"
            frozen = lambda: open(knob).read().strip() == "FROZEN"
        else:
            if "unified" not in mounts:
                raise TestbedError("no cgroup2 mount")
            victim = self.setup_freeze_v2(mounts["unified"])
            knob, on, off = os.path.join(victim, "cgroup.freeze"), "1", "0"
            events = os.path.join(victim, "cgroup.events")
            frozen = lambda: "frozen 1" in open(events).read()
        want, attempts = self.args.want_case, max(1, self.args.attempts)
        history = []
        for attempt in range(1, attempts + 1):
            if self.args.when_idle > 0:
                # A vCPU thread asleep (halt wait) does not hold QEMU's big lock.
                self.state["waited_for_idle"] = wait_for(
                    lambda: thread_state(pid, tid) == "S", self.args.when_idle, 0.001)
            write_file(knob, on)
            if not wait_for(frozen, 10):
                raise TestbedError("the freeze did not complete")
            wait_for(lambda: thread_state(pid, tid) == "D", 5)
            case, detail = classify_freeze(pid, tid, self.args.measure)
            idle = bool(self.state.get("waited_for_idle"))
            # --want-others-running: every other vCPU thread ran during the window. For a guest
            # that keeps every CPU busy, a VM whose other vCPUs all stopped is not vcpu-only
            # even with the main loop idle in its poll (seen under TCG: the other vCPU threads
            # in futex waits with no run time, e.g. parked for an exclusive section that the
            # frozen vCPU never joins), which classify_freeze cannot tell from an idle guest.
            # A thread in state R only waits for a host CPU (loaded host): not stopped.
            others_ran = all(d >= 1_000_000 or detail["state"].get(t) == "R"
                             for t, d in detail["other_vcpu_run_ns"].items())
            tags = ("" if idle or not self.args.want_idle else " (busy)") + \
                ("" if others_ran or not self.args.want_others_running else " (others stopped)")
            history.append(case + tags)
            # --want-idle: the guest CPU must have been halted (its host thread asleep just
            # before the freeze), e.g. for seed case 1's idle-CPU shape.
            if (want in ("any", case) and (idle or not self.args.want_idle)
                    and (others_ran or not self.args.want_others_running)) or \
                    attempt == attempts:
                break
            write_file(knob, off)  # not the wanted case: thaw, let the VM run, try again
            time.sleep(self.args.retry_pause)
        self.state.update({"case": case})
        self.save()
        return {"case": case, "measure": detail, "attempts": len(history), "cases": history,
                "frozen_idle": bool(self.state.get("waited_for_idle")),
                "cgroup_version": use, "waited_for_idle": self.state.get("waited_for_idle")}

    def setup_freeze_v2(self, mount):
        """A single thread can only be frozen inside a threaded subtree of its process's
        cgroup: moves the whole process into a new domain cgroup with two threaded children
        ("rest" and "victim").  Returns the victim cgroup."""
        pid, tid = self.pid, self.tid
        self.state["v2"] = True
        self.state["orig_cgroup"] = os.path.join(mount, thread_cgroup(pid, pid, "").lstrip("/"))
        top = self.make_cgroup(mount, "freeze")
        rest, victim = os.path.join(top, "rest"), os.path.join(top, "victim")
        self.state["subdirs"] = [victim, rest]
        self.save()
        write_file(os.path.join(top, "cgroup.procs"), pid)
        for d in (rest, victim):
            os.mkdir(d)
            write_file(os.path.join(d, "cgroup.type"), "threaded")
        for t in os.listdir("/proc/%d/task" % pid):
            with contextlib.suppress(OSError):
                write_file(os.path.join(victim if int(t) == tid else rest, "cgroup.threads"), t)
        return victim

    # -- throttle ------------------------------------------------------------------------
    def apply_throttle(self):
        mounts = cgroup_mounts()
        pid, tid = self.pid, self.tid
        period, quota = self.args.period_us, self.args.quota_us
        if "cpu" not in mounts:
            raise TestbedError("no cgroup v1 cpu controller (cgroup2-only throttle: not done)")
        self.state["orig_cgroup"] = os.path.join(mounts["cpu"],
                                                 thread_cgroup(pid, tid, "cpu").lstrip("/"))
        cg = self.make_cgroup(mounts["cpu"], "throttle")
        write_file(os.path.join(cg, "cpu.cfs_period_us"), period)
        write_file(os.path.join(cg, "cpu.cfs_quota_us"), quota)
        write_file(os.path.join(cg, "tasks"), tid)
        return {"quota_us": quota, "period_us": period}

    # -- ptrace --------------------------------------------------------------------------
    def apply_ptrace(self):
        tid = self.tid
        if libc.ptrace(PTRACE_SEIZE, tid, None, None) != 0:
            raise TestbedError("PTRACE_SEIZE %d: %s" % (tid, os.strerror(ctypes.get_errno())))
        self.save()
        if libc.ptrace(PTRACE_INTERRUPT, tid, None, None) != 0:
            raise TestbedError("PTRACE_INTERRUPT: %s" % os.strerror(ctypes.get_errno()))
        _, status = os.waitpid(tid, WALL)
        if not os.WIFSTOPPED(status):
            raise TestbedError("tracee did not stop (status %#x)" % status)
        wait_for(lambda: thread_state(self.pid, tid) == "t", 5)
        return {"stop_status": status}

    # -- sigstop -------------------------------------------------------------------------
    def apply_sigstop(self):
        self.save()
        os.kill(self.pid, signal.SIGSTOP)
        pid = self.pid
        wait_for(lambda: all(thread_state(pid, int(t)) == "T"
                             for t in os.listdir("/proc/%d/task" % pid)), 5)
        return {}

    def undo(self):
        problems = undo_state(dict(self.state), force=True)
        with contextlib.suppress(OSError):
            os.unlink(self.state_path)
        return problems


def cmd_inject(args):
    pid = args.pid
    tid = args.tid if args.tid else pid
    if args.domain:
        pid = qemu_pid(args.domain)
        tid = args.tid or pid
        if args.vcpu is not None:
            tid = int(vcpu_tids(args.domain, pid, use_monitor=args.monitor)[str(args.vcpu)])
    if not pid:
        raise TestbedError("give --pid (and --tid) or --domain (and --vcpu)")
    if not os.path.exists("/proc/%d/task/%d" % (pid, tid)):
        raise TestbedError("no thread %d in process %d" % (tid, pid))
    # Die with the parent (the test): the undo runs from the SIGTERM handler.
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)

    def on_signal(signum, _frame):
        raise KeyboardInterrupt("signal %d" % signum)
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, on_signal)
    inj = Injector(args.fault, pid, tid, args)
    status = {"applied": args.fault, "pid": pid, "tid": tid, "injector_pid": os.getpid()}
    try:
        try:
            status.update(inj.apply() or {})
            status["state"] = thread_state(pid, tid)
            status.update({k: v for k, v in inj.state.items() if k in ("cgroup", "case")})
            emit(status)
        except (TestbedError, OSError) as e:
            emit({"error": str(e), "applied": None, "fault": args.fault, "pid": pid, "tid": tid})
            raise TestbedError("%s: %s" % (args.fault, e)) from e
        if args.duration is not None:
            time.sleep(args.duration)  # stdin is not watched: it may be /dev/null
        else:
            while os.read(sys.stdin.fileno(), 4096):
                pass
    except KeyboardInterrupt:
        pass
    finally:
        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):  # nothing may cut the undo short
            signal.signal(s, signal.SIG_IGN)
        problems = inj.undo()
        after = {}
        with contextlib.suppress(OSError):
            after["state"] = thread_state(pid, tid)
        with contextlib.suppress(BrokenPipeError, OSError):
            emit({"undone": args.fault, "pid": pid, "tid": tid, "ok": not problems,
                  "problems": problems, **after})
    return 0 if not problems else 1


def cleanup(domains=True):
    """Undoes faults left by dead injectors, removes stale testbed cgroups, and destroys
    testbed domains whose owner process is gone."""
    report = {"undone": [], "cgroups_removed": [], "domains_destroyed": []}
    for st in injector_states():
        if not pid_alive(st.get("tracer", 0)):
            undo_state(st)
            report["undone"].append({k: st.get(k) for k in ("kind", "pid", "tid")})
    for m in cgroup_mounts().values():
        for cg in glob.glob(os.path.join(m, CG_PREFIX + "*")):
            mm = re.search(r"-(\d+)-(\d+)$", cg)
            if mm and pid_alive(int(mm.group(1))):
                continue  # its injector is still running (possibly still setting up)
            for sub in glob.glob(os.path.join(cg, "*/")):
                if os.path.exists(os.path.join(sub, "cgroup.type")):
                    remove_cgroup(sub.rstrip("/"))
            if remove_cgroup(cg):
                report["cgroups_removed"].append(cg)
    if domains:
        for meta_path in glob.glob(os.path.join(run_root(), "*", "meta.json")):
            with contextlib.suppress(OSError, ValueError):
                with open(meta_path) as f:
                    meta = json.load(f)
                owner = meta.get("owner_pid") or 0
                if owner > 0 and not pid_alive(owner):
                    destroy_domain(meta["name"], keep_files=False)
                    report["domains_destroyed"].append(meta["name"])
    return report


def cmd_hold(args):
    """Keeps a domain until stdin reaches EOF or a signal arrives, then destroys it."""
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)

    def on_signal(signum, _frame):
        raise KeyboardInterrupt()
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, on_signal)
    try:
        emit({"holding": args.name})
        while os.read(sys.stdin.fileno(), 4096):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(s, signal.SIG_IGN)
        destroy_domain(args.name)
    return 0


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------

def main(argv=None):
    ap = argparse.ArgumentParser(prog="testbed.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("kit", help="build (or reuse) the guest kit; prints JSON")
    p.add_argument("--kernel", help="linux-image package (default: linux-image-amd64's target)")
    p.add_argument("--force", action="store_true")

    sub.add_parser("libvirt-up", help="start virtlogd+libvirtd if libvirtd does not answer")
    sub.add_parser("libvirtd-restart", help="stop and start libvirtd")

    p = sub.add_parser("start", help="boot a transient domain; prints JSON")
    p.add_argument("name")
    p.add_argument("--kernel")
    p.add_argument("--vcpus", type=int, default=4)
    p.add_argument("--memory", type=int, default=512, help="MiB")
    p.add_argument("--scenario", default="ipi,wakeups,sleepers",
                   help="comma list of ipi (TLB shootdowns), ipi-free-tables, membarrier, ipi-module, "
                   "ipi-textpatch, wakeups, sleepers, or none")
    p.add_argument("--wdt", type=int, help="guest watchdog_thresh")
    p.add_argument("--ipi-interval", help="ipi-textpatch: seconds between schedstats toggles")
    p.add_argument("--cmdline", default="", help="extra kernel command line")
    p.add_argument("--panic", type=int, default=-1, help="kernel panic= (-1 reboot now, "
                   "0 stay hung)")
    p.add_argument("--on-crash", default="destroy",
                   choices=["destroy", "preserve", "restart", "coredump-destroy"])
    p.add_argument("--on-reboot", default="destroy", choices=["destroy", "restart"],
                   help="libvirt <on_reboot>: restart keeps the domain (and its qemu process) "
                   "across a reboot inside the guest")
    p.add_argument("--no-kernel", action="store_true",
                   help="boot the firmware with nothing to boot: a guest without Linux")
    p.add_argument("--accel", choices=["tcg", "kvm", "auto"])
    p.add_argument("--owner-pid", type=int, help="cleanup destroys the domain once this pid "
                   "is gone (default: the caller; 0: never)")
    p.add_argument("--wait", type=float, default=0, help="also wait this long for ready")
    p.add_argument("--machine", default="q35", help="q35 or pc (i440fx)")
    p.add_argument("--memory-backing", default="anonymous",
                   choices=["anonymous", "memfd", "hugepages"])
    p.add_argument("--max-memory", type=int, default=0,
                   help="MiB: maxMemory with DIMM slots and one NUMA cell (for attach-dimm)")
    p.add_argument("--monitor", action="store_true",
                   help="vCPU threads from QMP query-cpus-fast (taints the domain custom-monitor); "
                        "default: thread names, no monitor command")
    p.add_argument("--no-monitor", action="store_true", help="the default; accepted for old callers")

    p = sub.add_parser("attach-dimm", help="hotplug a DIMM into a domain started with --max-memory")
    p.add_argument("name")
    p.add_argument("--size", type=int, default=256, help="MiB")

    p = sub.add_parser("wait-ready", help="wait for the ready marker on the console")
    p.add_argument("name")
    p.add_argument("--timeout", type=float, default=120)
    p.add_argument("--marker", default=READY_MARKER)

    p = sub.add_parser("console", help="print the console log")
    p.add_argument("name")

    p = sub.add_parser("guest", help="run a shell command in the guest (control channel); "
                       "stdout/stderr are the guest's, exit code the guest's (255: testbed "
                       "error)")
    p.add_argument("--channel", choices=["auto", "serial", "virtio"],
                   help="ttyS1 or the virtio-serial port (default auto: virtio when the "
                   "guest serves it; env STALLMON_TESTBED_CHANNEL)")
    p.add_argument("name")
    p.add_argument("--timeout", type=float, default=60)
    p.add_argument("command", nargs=argparse.REMAINDER)

    p = sub.add_parser("ping", help="check the guest control loop answers")
    p.add_argument("--channel", choices=["auto", "serial", "virtio"])
    p.add_argument("name")
    p.add_argument("--timeout", type=float, default=10)

    p = sub.add_parser("vcpus", help="vCPU index -> host tid (JSON)")
    p.add_argument("name")
    p.add_argument("--monitor", action="store_true", help="use QMP (taints the domain), not thread names")
    p.add_argument("--no-monitor", action="store_true", help="the default; accepted for old callers")

    p = sub.add_parser("info", help="pid, vcpus, paths of a domain (JSON)")
    p.add_argument("name")

    p = sub.add_parser("qemu-pid")
    p.add_argument("name")

    p = sub.add_parser("destroy", help="undo faults on it, destroy (and undefine) a domain")
    p.add_argument("name")
    p.add_argument("--keep-files", action="store_true")

    p = sub.add_parser("hold", help="destroy the domain when stdin reaches EOF or on a signal")
    p.add_argument("name")

    p = sub.add_parser("inject", help="apply a fault, print JSON, wait for stdin EOF/SIGTERM "
                       "(or --duration), undo, print JSON")
    p.add_argument("fault", choices=["freeze", "throttle", "ptrace", "sigstop"])
    p.add_argument("--pid", type=int)
    p.add_argument("--tid", type=int)
    p.add_argument("--domain")
    p.add_argument("--vcpu", type=int)
    p.add_argument("--monitor", action="store_true", help="use QMP (taints the domain), not thread names")
    p.add_argument("--no-monitor", action="store_true", help="the default; accepted for old callers")
    p.add_argument("--duration", type=float, help="undo after this many seconds")
    p.add_argument("--quota-us", type=int, default=5000)
    p.add_argument("--period-us", type=int, default=100000)
    p.add_argument("--when-idle", type=float, default=2.0,
                   help="freeze: wait up to this long for the thread to sleep first (0: no)")
    p.add_argument("--measure", type=float, default=1.0,
                   help="freeze: seconds of /proc sampling to classify the case")
    p.add_argument("--want-case", default="any", choices=["any", "vcpu-only", "vm-wide"],
                   help="freeze: thaw and refreeze until this case (up to --attempts)")
    p.add_argument("--want-idle", action="store_true",
                   help="freeze: also thaw and refreeze until the thread was seen asleep "
                   "(halted vCPU) just before the freeze (needs --when-idle > 0)")
    p.add_argument("--want-others-running", action="store_true",
                   help="freeze: also thaw and refreeze until every other vCPU thread ran at "
                   "least 1 ms in the --measure window or is runnable (for guests that keep "
                   "every CPU busy)")
    p.add_argument("--attempts", type=int, default=1)
    p.add_argument("--retry-pause", type=float, default=1.0)
    p.add_argument("--cgroup", default="auto", choices=["auto", "v1", "v2"],
                   help="freeze: cgroup v1 freezer or cgroup2 cgroup.freeze (auto: v1 if any)")

    p = sub.add_parser("health", help="boot health: every CPU's timer interrupts advance over "
                       "--gap s, no Oops/BUG/panic on the console (JSON, \"ok\")")
    p.add_argument("name")
    p.add_argument("--gap", type=float, default=6.0)

    p = sub.add_parser("boot-survey", help="boot guests, watch console and timer interrupts, "
                       "print a markdown row per scenario")
    p.add_argument("--scenario", action="append", required=True,
                   help="repeatable: scenarios are interleaved, one row each")
    p.add_argument("--boots", type=int, default=30, help="per scenario")
    p.add_argument("--parallel", type=int, default=2)
    p.add_argument("--observe", type=float, default=60, help="seconds watched after ready")
    p.add_argument("--sample", type=float, default=10, help="seconds between timer samples")
    p.add_argument("--vcpus", type=int, default=4)
    p.add_argument("--wdt", type=int, default=5)
    p.add_argument("--kernel")
    p.add_argument("--boot-timeout", type=float, default=300)
    p.add_argument("--answer-timeout", type=float, default=120,
                   help="seconds a timer sample may take before the guest counts as dead")

    p = sub.add_parser("cleanup", help="undo faults of dead injectors, remove stale cgroups, "
                       "destroy testbed domains whose owner is gone")
    p.add_argument("--no-domains", action="store_true")

    args = ap.parse_args(argv)
    try:
        if args.cmd == "kit":
            emit(build_kit(args.kernel, args.force))
        elif args.cmd == "libvirt-up":
            emit(libvirt_up())
        elif args.cmd == "libvirtd-restart":
            emit(libvirtd_restart())
        elif args.cmd == "start":
            emit(start_domain(args.name, kernel=args.kernel, vcpus=args.vcpus,
                              memory=args.memory, scenario=args.scenario, wdt=args.wdt,
                              ipi_interval=args.ipi_interval, extra_cmdline=args.cmdline,
                              panic=args.panic, on_crash=args.on_crash, accel=args.accel,
                              owner_pid=args.owner_pid, wait=args.wait, machine=args.machine,
                              memory_backing=args.memory_backing, max_memory=args.max_memory,
                              use_monitor=args.monitor, on_reboot=args.on_reboot,
                              no_kernel=args.no_kernel))
        elif args.cmd == "attach-dimm":
            emit(attach_dimm(args.name, args.size))
        elif args.cmd == "wait-ready":
            emit({"ready": args.name, "seconds": wait_ready(args.name, args.timeout,
                                                            marker=args.marker)})
        elif args.cmd == "console":
            sys.stdout.write(read_console(args.name))
        elif args.cmd == "guest":
            cmd = list(args.command)
            while cmd[:1] in (["--timeout"], ["--channel"]) and len(cmd) > 1:
                setattr(args, cmd[0][2:], float(cmd[1]) if cmd[0] == "--timeout" else cmd[1])
                cmd = cmd[2:]  # REMAINDER swallows options given after the name
            cmd = cmd[1:] if cmd[:1] == ["--"] else cmd
            if not cmd:
                raise TestbedError("no command")
            rc, out, err = guest_run(args.name, " ".join(cmd), args.timeout, args.channel)
            sys.stdout.buffer.write(out)
            sys.stdout.flush()
            sys.stderr.buffer.write(err)
            return rc
        elif args.cmd == "ping":
            ch = GuestChannel(args.name, args.timeout, args.channel)
            ch.ping(args.timeout)
            emit({"pong": args.name, "channel": ch.channel})
        elif args.cmd == "vcpus":
            emit(vcpu_tids(args.name, use_monitor=args.monitor))
        elif args.cmd == "info":
            pid = qemu_pid(args.name)
            info = load_meta(args.name)
            info.update({"qemu_pid": pid, "state": domain_state(args.name),
                         "vcpu_tids": vcpu_tids(args.name, pid)})
            emit(info)
        elif args.cmd == "qemu-pid":
            print(qemu_pid(args.name))
        elif args.cmd == "destroy":
            emit(destroy_domain(args.name, keep_files=args.keep_files or None))
        elif args.cmd == "hold":
            return cmd_hold(args)
        elif args.cmd == "inject":
            return cmd_inject(args)
        elif args.cmd == "cleanup":
            emit(cleanup(domains=not args.no_domains))
        elif args.cmd == "health":
            emit(guest_health(args.name, args.gap))
        elif args.cmd == "boot-survey":
            return boot_survey(args)
        return 0
    except GuestBootUnhealthy as e:
        # Exit status 3: Guest::boot (tests/integration/testbed) replaces the guest, counted.
        log(str(e))
        return 3
    except TestbedError as e:
        log(str(e))
        return 255


if __name__ == "__main__":
    sys.exit(main())
