#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Scenario matrix (issue 15 item 4): faults x kernels x a random faulted vCPU, each run on a
fresh testbed guest watched by a real stallmond, judged from its WatchFindings stream.

    matrix.py [--faults F,...] [--kernels K,...] [--runs-per-cell N] [--seed S] [--out FILE]
              [--stallmond PATH] [--stallctl PATH]

Each run boots a 4-vCPU guest (watchdog_thresh 5), waits until stallmond has discovered its
kernel and sampled it for 3 s with no finding, applies the fault to a vCPU chosen at random,
and asserts:
  - the expected incident root (kind, cause and CPU) is opened, and no other root (one fault,
    one incident);
  - no flap: the expected root is opened once for one continuous fault;
  - detection time (fault applied -> root OPENED, host clock) and the guest's own report time
    (its console: soft lockup / RCU stall / panic), when it reports.
A healthy run (IPI load, no fault) asserts zero findings. The result table (markdown) goes to
stdout and --out. Exit status: 0 when every run passed (a void run, below, fails it too).

The faults, with how each is applied (tests/testbed/testbed.py inject, or a module in the guest):
  freeze     cgroup freezer of an idle vCPU under the on_each_cpu module load (seed case 1):
             root VCPU_HOST_BLOCKED on it (the IPI stall is its symptom)
  freeze-bql freeze of a vCPU that holds QEMU's big lock (bqlhog.ko port I/O): VM_WIDE_STALL
  throttle   its thread's cgroup throttled to 5 ms per 100 ms while the guest keeps that CPU busy
             (tb-load): VCPU_HOST_STARVED
  sigstop    SIGSTOP of the whole qemu: VM_WIDE_STALL
  ptrace     ptrace-stop of its thread: VCPU_HOST_BLOCKED
  irqoff     irqoff.ko spinning with interrupts off on it: GUEST_IRQS_OFF
  panic      echo c > /proc/sysrq-trigger run on it: GUEST_PANIC
  healthy    TLB-shootdown IPI load, wakeups and sleepers, no fault: no finding at all
"""
import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
TESTBED = [sys.executable, os.path.join(HERE, "testbed.py")]
# vCPUs per guest (--vcpus). A guest whose every vCPU is busy (the irqoff and healthy cells' IPI
# load) waits for a host CPU about (vCPUs - host cores) / vCPUs of the time by itself: on a
# 2-core host 4 busy vCPUs make those cells void; 2 vCPUs show them.
VCPUS = 4
FAULT_SECONDS = 20        # long enough for the guest's own soft-lockup report (thresh 5: ~11 s)
HEALTHY_SECONDS = 60
# A run whose vCPUs (the faulted one aside for a throttle) waited for a host CPU this fraction of
# the fault window or more is void: the host starved the guest (stallmon then rightly says
# VCPU_HOST_STARVED, and a verdict that needs the vCPU to run cannot form). Run it again on a
# quieter host; the table shows it.
VOID_STEAL = 0.5
GUEST_REPORT = re.compile(r"soft lockup - CPU#\d+ stuck for \d+s|rcu_sched self-detected stall|"
                          r"rcu: INFO: rcu_(pre)?sched detected stalls|Kernel panic - not syncing")

FAULTS = {
    # name: guest load scenario, expected root (kind, cause, on the faulted CPU?)
    "freeze": ("ipi-module", ("VCPU_HOST_BLOCKED", "CAUSE_HOST_BLOCKED", True)),
    "freeze-bql": ("sleepers", ("VM_WIDE_STALL", "CAUSE_HOST_BLOCKED", False)),
    "throttle": ("sleepers", ("VCPU_HOST_STARVED", "CAUSE_HOST_STARVED", True)),
    "sigstop": ("sleepers", ("VM_WIDE_STALL", "CAUSE_HOST_BLOCKED", False)),
    "ptrace": ("sleepers", ("VCPU_HOST_BLOCKED", "CAUSE_HOST_BLOCKED", True)),
    "irqoff": ("ipi-module,wakeups,sleepers", ("GUEST_IRQS_OFF", "CAUSE_GUEST_IRQS_OFF", True)),
    "panic": ("sleepers", ("GUEST_PANIC", None, True)),
    "healthy": ("ipi,wakeups,sleepers", None),
}
KERNELS = {
    "6.1": "linux-image-6.1.0-57-amd64",
    "6.12": "linux-image-6.12.118+deb12-amd64",
    "6.1-rt": "linux-image-rt-amd64",
    "6.1-cloud": "linux-image-cloud-amd64",
    "6.12-rt": "linux-image-6.12.118+deb12-rt-amd64",
    "6.12-cloud": "linux-image-6.12.118+deb12-cloud-amd64",
}


def log(msg):
    print("matrix: " + msg, file=sys.stderr, flush=True)


def testbed(*args, timeout=600, check=True):
    p = subprocess.run(TESTBED + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       timeout=timeout)
    if check and p.returncode != 0:
        raise RuntimeError("testbed %s failed: %s" % (" ".join(args[:2]), p.stderr[-1500:]))
    return p


def guest_run(name, cmd, timeout=60):
    return testbed("guest", "--timeout", str(timeout), name, "--", cmd, timeout=timeout + 30, check=False)


class Daemon:
    """A stallmond of its own (socket, state and metrics port in a temp dir), watching `domain`."""

    def __init__(self, stallmond, stallctl, domain):
        self.dir = tempfile.mkdtemp(prefix="stallmon-matrix-")
        self.sock = os.path.join(self.dir, "stallmond.sock")
        self.stallctl = stallctl
        cfg = os.path.join(self.dir, "stallmond.yaml")
        with open(cfg, "w") as f:
            f.write("domains:\n  include: [%s]\n" % json.dumps(domain))
            f.write("server:\n  unix_socket: %s\n" % json.dumps(self.sock))
            f.write("metrics:\n  listen: \"\"\n")
            f.write("state_dir: %s\n" % json.dumps(self.dir))
        self.log = open(os.path.join(self.dir, "stallmond.log"), "w")
        self.proc = subprocess.Popen([stallmond, "--config", cfg], stdout=self.log, stderr=subprocess.STDOUT)

    def ctl(self, *args, timeout=15):
        return subprocess.run([self.stallctl] + list(args) + ["--socket", self.sock], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, timeout=timeout)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


class Watch:
    """`stallctl findings --watch --json` for one domain: every event with its host receipt time."""

    def __init__(self, daemon, domain):
        self.events = []
        self.lock = threading.Lock()
        self.proc = subprocess.Popen([daemon.stallctl, "findings", "--watch", "--json", "--updates", "--domain", domain,
                                      "--socket", daemon.sock, "--timeout", "3600"],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        for line in self.proc.stdout:
            line = line.strip()
            if not line.startswith("{"):
                continue
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            with self.lock:
                self.events.append((time.monotonic(), ev))

    def since(self, t):
        with self.lock:
            return [(at, ev) for at, ev in self.events if at >= t]

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def wait_ready(daemon, domain, timeout=180):
    """Until the domain's kernel is discovered (status says ready)."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        p = daemon.ctl("status", "--json")
        if p.returncode == 0:
            try:
                st = json.loads(p.stdout)
            except ValueError:
                st = {}
            for d in st.get("agent", {}).get("domains", []):
                if d.get("domain") == domain:
                    last = "%s: %s" % (d.get("introspection_state"), d.get("introspection_error", ""))
                    if d.get("introspection_ok") and d.get("introspection_state") == "ready":
                        return True
        time.sleep(1)
    log("not ready after %d s: %s" % (timeout, last))
    return False


def judge(fault, cpu, events, t_fault):
    """Returns (ok, why, detection seconds) from the events after the fault. Each finding is
    judged by its latest state: a symptom may be linked to its root (incident_id) a tick after it
    opened, and a cause decided later is an UPDATED event."""
    expect = FAULTS[fault][1]
    opened_at, latest = {}, {}
    for at, ev in events:
        f = ev.get("finding")
        if not f or ev.get("type") not in ("OPENED", "UPDATED", "CURRENT"):
            continue
        opened_at.setdefault(f["id"], at)
        latest[f["id"]] = f
    if expect is None:
        return not latest, "no finding" if not latest else "findings: " + ", ".join(
            "%s%s" % (f.get("kind"), f.get("cpus", [])) for f in latest.values()), None
    kind, cause, on_cpu = expect
    roots = [f for f in latest.values() if f.get("incident_id", "") in ("", f["id"])]
    match = [f for f in roots if f.get("kind") == kind and (not on_cpu or f.get("cpus") == [cpu])]
    names = ", ".join("%s%s" % (f.get("kind"), f.get("cpus", [])) for f in roots) or "none"
    if not match:
        return False, "no %s root%s; roots: %s" % (kind, " on CPU%d" % cpu if on_cpu else "", names), None
    f = min(match, key=lambda g: opened_at[g["id"]])
    why = []
    if cause and f.get("cause") != cause:
        why.append("cause %s, expected %s" % (f.get("cause"), cause))
    if len(match) > 1 or f.get("recurrences"):
        why.append("flap: %s opened %d times, %s recurrences" % (kind, len(match), f.get("recurrences", 0)))
    if len(roots) > len(match):
        why.append("other roots: " + ", ".join("%s%s" % (g.get("kind"), g.get("cpus", [])) for g in roots
                                               if g not in match))
    return not why, "; ".join(why) or "ok", opened_at[f["id"]] - t_fault


class StateWatch:
    """Polls one thread's /proc state letter every millisecond and keeps its transitions, so that
    a fault is dated by the thread itself, not by when the injector reports (it measures first)."""

    def __init__(self, pid, tid):
        self.path = "/proc/%d/task/%d/stat" % (pid, tid)
        self.transitions = []
        self.stop_flag = False
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def _poll(self):
        last = None
        while not self.stop_flag:
            try:
                with open(self.path) as f:
                    st = f.read().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                st = "?"
            if st != last:
                self.transitions.append((time.monotonic(), st))
                last = st
            time.sleep(0.001)

    def entered(self, states, before):
        """The last time before `before` the thread entered one of `states` (and stayed)."""
        self.stop_flag = True
        self.thread.join()
        t = None
        for at, st in self.transitions:
            if at > before:
                break
            t = at if st in states else None
        return t


def apply_fault(fault, name, cpu):
    """Applies the fault; returns (host time it took effect, undo callable)."""
    if fault == "healthy":
        return time.monotonic(), lambda: None
    if fault in ("freeze", "freeze-bql", "throttle", "ptrace", "sigstop"):
        args = ["inject"]
        if fault.startswith("freeze"):
            args += ["freeze", "--domain", name, "--vcpu", str(cpu), "--attempts", "25" if fault == "freeze-bql" else "5"]
            args += ["--want-case", "vm-wide", "--when-idle", "0"] if fault == "freeze-bql" else \
                    ["--want-case", "vcpu-only", "--want-idle", "--when-idle", "5"]
        elif fault == "throttle":
            args += ["throttle", "--domain", name, "--vcpu", str(cpu), "--quota-us", "5000", "--period-us", "100000"]
        elif fault == "ptrace":
            args += ["ptrace", "--domain", name, "--vcpu", str(cpu)]
        else:
            args += ["sigstop", "--domain", name]
        pid = int(testbed("qemu-pid", name).stdout.strip().splitlines()[0])
        tids = json.loads(testbed("vcpus", name).stdout.strip().splitlines()[0])
        watch = StateWatch(pid, pid if fault == "sigstop" else int(tids[str(cpu)]))
        p = subprocess.Popen(TESTBED + args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        first = json.loads(p.stdout.readline() or "{}")
        # When the thread entered the fault's state (a throttle has none: applied when reported).
        t = watch.entered({"freeze": "D", "freeze-bql": "D", "ptrace": "t", "sigstop": "T"}.get(fault, ""),
                          time.monotonic()) or time.monotonic()
        if not first.get("applied"):
            p.kill()
            raise RuntimeError("%s not applied: %s" % (fault, json.dumps(first)[:500]))
        want = {"freeze": "vcpu-only", "freeze-bql": "vm-wide"}.get(fault)
        if want and first.get("case") != want:
            p.stdin.close()
            p.wait(timeout=60)
            raise RuntimeError("the freeze was %s, not %s: %s" % (first.get("case"), want, json.dumps(first)[:300]))

        def undo():
            p.stdin.close()  # the injector undoes on EOF
            p.wait(timeout=60)
        return t, undo
    if fault == "irqoff":
        # The command returns before the module loads, and the onset is the module's own console
        # line: once a CPU spins with interrupts off, a guest command may never answer (seen on
        # 6.12 with 2 vCPUs, 4 of 4: the control loop hangs behind the IRQs-off CPU, e.g. in an
        # IPI it must answer), which is the fault itself, not a failed injection.
        mask = "%x" % (((1 << VCPUS) - 1) & ~(1 << cpu))
        from_len = len(testbed("console", name, check=False).stdout)
        r = guest_run(name, "for p in $(ls /proc | grep '^[0-9][0-9]*$'); do taskset -a -p %s $p >/dev/null 2>&1; done; "
                            "for f in /proc/irq/*/smp_affinity; do echo %s > $f 2>/dev/null; done; "
                            "(sleep 1; insmod /irqoff.ko cpu=%d) </dev/null >/dev/null 2>&1 &" % (mask, mask, cpu))
        if r.returncode != 0:
            raise RuntimeError("irqoff: " + r.stderr[-300:])
        line = "stallmon-irqoff: spinning with IRQs off on CPU%d" % cpu
        # The onset came after the previous poll read the console without the line: counting from
        # when that poll began never understates the detection time (by ~0.3 s at most).
        t_prev = time.monotonic()
        deadline = t_prev + 30
        while time.monotonic() < deadline:
            t_poll = time.monotonic()
            if line in testbed("console", name, check=False).stdout[from_len:]:
                return t_prev, lambda: None  # cannot be undone: the guest is destroyed after
            t_prev = t_poll
            time.sleep(0.1)
        raise RuntimeError("irqoff: no %r on the console within 30 s" % line)
    if fault == "panic":
        guest_run(name, "(sleep 0.3; taskset -c %d sh -c 'echo c > /proc/sysrq-trigger') </dev/null >/dev/null 2>&1 &"
                  % cpu, timeout=10)
        return time.monotonic() + 0.3, lambda: None
    raise ValueError(fault)


def guest_report(name, from_len):
    """The guest's own first report on its console since `from_len`, if any."""
    text = testbed("console", name, check=False).stdout[from_len:]
    m = GUEST_REPORT.search(text)
    return m.group(0) if m else None


def run_delays(name):
    """{vcpu: schedstat run delay ns} of the guest's vCPU threads, read by us from /proc: the
    host's own measure of how long each waited for a CPU, independent of stallmon."""
    pid = int(testbed("qemu-pid", name).stdout.strip().splitlines()[0])
    out = {}
    for v, tid in json.loads(testbed("vcpus", name).stdout.strip().splitlines()[0]).items():
        try:
            with open("/proc/%d/task/%s/schedstat" % (pid, tid)) as f:
                out[int(v)] = int(f.read().split()[1])
        except (OSError, IndexError, ValueError):
            pass
    return out


def max_steal(before, after, seconds, skip=None):
    """The largest fraction of `seconds` any vCPU (but `skip`) waited for a host CPU."""
    return max([(after[v] - before[v]) / 1e9 / seconds for v in after if v in before and v != skip] or [0])


def one_run(fault, kernel, cpu, daemon_paths, idx):
    name = "stallmon-tb-mx-%d-%d" % (os.getpid(), idx)
    scenario = FAULTS[fault][0]
    row = {"fault": fault, "kernel": kernel, "cpu": cpu if FAULTS[fault][1] and FAULTS[fault][1][2] else "-",
           "ok": False, "why": "", "detect": None, "guest": None, "load": "-", "steal": "-", "void": False}
    daemon = watch = None
    try:
        testbed("start", name, "--kernel", KERNELS[kernel], "--vcpus", str(VCPUS), "--scenario", scenario, "--wdt", "5",
                "--panic", "0", "--on-crash", "preserve", "--wait", "240", timeout=1500)
        # What the fault needs running on the CPU: port I/O that QEMU emulates under its big lock
        # (for a freeze to catch it there), a busy loop (a throttle starves only a vCPU that wants
        # to run).
        prepare = {"freeze-bql": "insmod /bqlhog.ko cpu=%d", "throttle": "tb-load start %d"}.get(fault)
        if prepare:
            r = guest_run(name, prepare % cpu)
            if r.returncode != 0:
                raise RuntimeError("%s: %s" % (prepare % cpu, r.stderr[-300:]))
        daemon = Daemon(*daemon_paths, name)
        if not wait_ready(daemon, name):
            raise RuntimeError("stallmond never discovered the guest kernel")
        watch = Watch(daemon, name)
        delays0, t0 = run_delays(name), time.monotonic()
        time.sleep(3)
        quiet = [ev for _, ev in watch.since(0) if ev.get("type") in ("OPENED", "CURRENT")]
        if quiet:
            steal = max_steal(delays0, run_delays(name), time.monotonic() - t0)
            row["steal"] = "%.0f %%" % (100 * steal)
            row["void"] = steal >= VOID_STEAL
            raise RuntimeError("findings before the fault: " + ", ".join(ev["finding"].get("kind", "?") for ev in quiet))
        console_from = len(testbed("console", name, check=False).stdout)
        delays0, t0 = run_delays(name), time.monotonic()
        t_fault, undo = apply_fault(fault, name, cpu)
        with open("/proc/loadavg") as f:
            row["load"] = f.read().split()[0]  # the host's: a loaded host starves vCPUs for real
        deadline = t_fault + (HEALTHY_SECONDS if fault == "healthy" else FAULT_SECONDS)
        report, t_report = None, None
        while time.monotonic() < deadline:
            time.sleep(0.5)
            if report is None:
                report = guest_report(name, console_from)
                if report:
                    t_report = time.monotonic()
        delays1, t1 = run_delays(name), time.monotonic()
        undo()
        events = watch.since(t_fault - 1)
        # How much the host itself kept the vCPUs waiting for a CPU (the throttled one aside):
        # at half the window or more, the host starved the guest and the run proves nothing.
        steal = max_steal(delays0, delays1, t1 - t0, cpu if fault == "throttle" else None)
        row["steal"] = "%.0f %%" % (100 * steal)
        row["ok"], row["why"], row["detect"] = judge(fault, cpu, events, t_fault)
        if steal >= VOID_STEAL:
            row["void"] = True
        if report:
            row["guest"] = "%.1f s (%s)" % (t_report - t_fault, report[:40])
    except Exception as e:  # a testbed failure is a failed run, reported with its reason
        row["why"] = "error: %s" % e
    finally:
        if watch:
            watch.stop()
        if daemon:
            daemon.stop()
        testbed("destroy", name, check=False, timeout=300)
    return row


def main():
    global VCPUS
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--faults", default=",".join(FAULTS))
    ap.add_argument("--kernels", default="6.1,6.12")
    ap.add_argument("--runs-per-cell", type=int, default=1)
    ap.add_argument("--vcpus", type=int, default=VCPUS, help="vCPUs per guest (default %(default)s)")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--out", default=None)
    ap.add_argument("--stallmond", default=os.path.join(ROOT, "build/release/agent/daemon/stallmond"))
    ap.add_argument("--stallctl", default=os.path.join(ROOT, "build/release/agent/cli/stallctl"))
    a = ap.parse_args()
    if a.vcpus < 2:
        ap.error("--vcpus: at least 2 (a fault needs a CPU that is not faulted)")
    VCPUS = a.vcpus
    seed = a.seed if a.seed is not None else int(time.time())
    rng = random.Random(seed)
    faults = [f for f in a.faults.split(",") if f]
    kernels = [k for k in a.kernels.split(",") if k]
    for f in faults:
        if f not in FAULTS:
            ap.error("unknown fault %s (known: %s)" % (f, ", ".join(FAULTS)))
    for k in kernels:
        if k not in KERNELS:
            ap.error("unknown kernel %s (known: %s)" % (k, ", ".join(KERNELS)))
    rows = []
    idx = 0
    for k in kernels:
        for f in faults:
            for _ in range(a.runs_per_cell):
                cpu = rng.randrange(VCPUS)
                idx += 1
                log("run %d: %s on %s, CPU%d" % (idx, f, k, cpu))
                row = one_run(f, k, cpu, (a.stallmond, a.stallctl), idx)
                log("  -> %s %s (vCPU steal %s)" % ("VOID" if row["void"] else "PASS" if row["ok"] else "FAIL",
                                                    row["why"], row["steal"]))
                rows.append(row)
    voids = [r for r in rows if r["void"]]
    lines = ["Seed %d, %s, %d-vCPU guests on %d host CPUs, %d runs: %d passed, %d failed, %d void (host starved the guest)." % (
        seed, time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), VCPUS, os.cpu_count() or 0, len(rows),
        sum(r["ok"] and not r["void"] for r in rows), sum(not r["ok"] and not r["void"] for r in rows), len(voids)), "",
             "| kernel | fault | CPU | host load | vCPU steal | result | detection | guest's own report | detail |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        result = "void" if r["void"] else "pass" if r["ok"] else "**FAIL**"
        lines.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            r["kernel"], r["fault"], r["cpu"], r["load"], r["steal"], result,
            "%.2f s" % r["detect"] if r["detect"] is not None else "-", r["guest"] or "-", r["why"]))
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)
    # Void runs fail too: the matrix has not shown those cells (rerun on a quieter host).
    return 0 if rows and all(r["ok"] and not r["void"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
