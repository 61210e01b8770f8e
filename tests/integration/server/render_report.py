#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Renders a `stallctl incident ID --html` report in headless Chromium and checks what it shows.

Usage: render_report.py REPORT.html SCREENSHOT.png --vcpus N --cpus N --blocked-vcpu V
                        --waiter W --target T

Chromium (Debian's /usr/bin/chromium) loads the file three times: once logging to stderr, so
that any console message (a script error, a refused resource, a CSP violation) is seen; once
dumping the DOM it built; once taking a screenshot at device scale 1, kept as the test's artifact.
The screenshot is then read pixel by pixel (a PNG decoder on zlib below: no imaging library in
Debian's base python3) and must show:
  - one band of pixels per timeline lane (vCPUs first, then guest CPUs), in the report's colors;
  - vCPU V's band mostly in the blocked-thread red (D state: the host froze it);
  - CPU W's band shaded in the csd-wait purple, and the purple arrow crossing every gap between
    W's band and T's band.
The DOM must hold the same facts as elements (lane V with a D-state span, a csd-wait line from
W to T). Prints what it measured; exits 0 when everything holds, 1 with the reasons otherwise,
2 when Chromium cannot run.
"""
import argparse
import os
import re
import struct
import subprocess
import sys
import tempfile
import zlib

# The report's fills (agent/server/client/incident_html.cc, kStyle).
ST_D = (229, 57, 53)
LANE_FILLS = {
    (76, 175, 80), (207, 216, 220), ST_D, (251, 140, 0), (158, 158, 158),  # host thread states
    (129, 199, 132), (236, 239, 241), (97, 97, 97),  # guest CPU running / idle / offline
}
WAIT = (142, 36, 170)  # #8e24aa: the csd-wait arrow; its span is this at 0.6 opacity over the lane


def blend(over, alpha, under):
    return tuple(round(alpha * o + (1 - alpha) * u) for o, u in zip(over, under))


WAIT_SHADES = {blend(WAIT, 0.6, (129, 199, 132)), blend(WAIT, 0.6, (236, 239, 241)),
               blend(WAIT, 0.6, (97, 97, 97))}


def near(p, colors, tol=3):
    return any(all(abs(a - b) <= tol for a, b in zip(p, c)) for c in colors)


def chromium_flags(profile):
    # As the machine's notes say: without the background-networking flags Chromium keeps trying
    # Google's hosts, which this closed network refuses.
    return ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-extensions", "--hide-scrollbars", "--force-device-scale-factor=1",
            "--window-size=1400,1000", "--user-data-dir=" + profile]


def chromium(args, timeout=90):
    exe = os.environ.get("STALLMON_CHROMIUM", "/usr/bin/chromium")
    if not os.access(exe, os.X_OK):
        print(f"render_report: {exe} not found (deploy/install-deps.sh installs Debian's chromium)")
        sys.exit(2)
    with tempfile.TemporaryDirectory(prefix="stallmon-chromium-") as profile:
        r = subprocess.run([exe] + chromium_flags(profile) + args, capture_output=True, text=True,
                           timeout=timeout)
    return r


def read_png(path):
    """Returns (width, height, rows of RGB tuples) of an 8-bit, non-interlaced RGB/RGBA PNG."""
    data = open(path, "rb").read()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"{path}: not a PNG")
    pos, idat, hdr = 8, b"", None
    while pos + 8 <= len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            hdr = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            break
        pos += 12 + n
    if hdr is None:
        raise ValueError(f"{path}: no IHDR")
    w, h, depth, ctype, _, _, interlace = hdr
    if depth != 8 or ctype not in (2, 6) or interlace:
        raise ValueError(f"{path}: depth {depth} color type {ctype} interlace {interlace} not supported")
    bpp = 3 if ctype == 2 else 4
    raw = zlib.decompress(idat)
    stride = w * bpp
    rows, prev = [], bytearray(stride)
    for y in range(h):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 0xFF
            elif f == 2:
                line[i] = (line[i] + b) & 0xFF
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        rows.append([tuple(line[x * bpp:x * bpp + 3]) for x in range(w)])
        prev = line
    return w, h, rows


LANE_HEIGHT = 18  # kLaneH in incident_html.cc, at device scale 1


def lane_bands(rows):
    """Runs of rows each holding >= 100 pixels of lane fills, as tall as a lane (the legend's
    swatches are shorter): the timeline's lanes, top to bottom."""
    bands, start = [], None
    for y, row in enumerate(rows):
        lane = sum(1 for p in row if p in LANE_FILLS or near(p, WAIT_SHADES))
        if lane >= 100 and start is None:
            start = y
        elif lane < 100 and start is not None:
            bands.append((start, y))
            start = None
    if start is not None:
        bands.append((start, len(rows)))
    return [b for b in bands if abs((b[1] - b[0]) - LANE_HEIGHT) <= 2]


def check_pixels(png, a, problems):
    w, h, rows = read_png(png)
    bands = lane_bands(rows)
    print(f"screenshot {w}x{h}: lane bands (rows) {bands}")
    want = a.vcpus + a.cpus
    if len(bands) != want:
        problems.append(f"{len(bands)} lane bands in the screenshot, want {want} ({a.vcpus} vCPUs + {a.cpus} CPUs)")
        return
    def count(band, pred):
        return sum(1 for y in range(*band) for p in rows[y] if pred(p))
    red = [count(b, lambda p: p == ST_D) for b in bands[:a.vcpus]]
    lane_px = [count(b, lambda p: p in LANE_FILLS) for b in bands[:a.vcpus]]
    print(f"D-state red pixels per vCPU lane: {red} (of {lane_px} lane pixels)")
    v = a.blocked_vcpu
    if red[v] * 2 < lane_px[v] // 3:
        problems.append(f"vCPU {v}'s lane is not mostly blocked red: {red[v]} red of {lane_px[v]} pixels")
    wb, tb = bands[a.vcpus + a.waiter], bands[a.vcpus + a.target]
    shaded = count(wb, lambda p: near(p, WAIT_SHADES))
    print(f"csd-wait shading on CPU {a.waiter}'s lane: {shaded} pixels")
    if shaded < 200:
        problems.append(f"CPU {a.waiter}'s lane shows no csd wait ({shaded} shaded pixels)")
    # The arrow: a purple line through every gap between the waiter's band and the target's.
    lo, hi = (wb, tb) if wb[0] < tb[0] else (tb, wb)
    gaps = [(bands[i][1], bands[i + 1][0]) for i in range(bands.index(lo), bands.index(hi))]
    for g0, g1 in gaps:
        hit = any(near(p, {WAIT}, 40) for y in range(g0, g1) for p in rows[y])
        print(f"arrow pixels in the gap rows {g0}-{g1}: {hit}")
        if not hit:
            problems.append(f"no csd-wait arrow crosses the gap at rows {g0}-{g1} (CPU {a.waiter} to CPU {a.target})")


def check_dom(dom, a, problems):
    m = re.search(r'<g class="lane vcpu" data-vcpu="%d">(.*?)</g>' % a.blocked_vcpu, dom, re.S)
    if not m:
        problems.append(f"no lane for vCPU {a.blocked_vcpu} in the DOM")
    else:
        widths = [float(x) for x in re.findall(r'<rect class="st-d"[^>]*width="([0-9.]+)"', m.group(1))]
        print(f"DOM: vCPU {a.blocked_vcpu} D-state spans {len(widths)}, {sum(widths):.0f} px of 1000")
        if sum(widths) < 100:
            problems.append(f"vCPU {a.blocked_vcpu}'s lane has {sum(widths):.0f} px of D state in the DOM")
    arrows = re.findall(r'<line class="csd-wait" data-waiter="%d" data-target="%d"' % (a.waiter, a.target), dom)
    print(f"DOM: csd-wait arrows CPU {a.waiter} -> CPU {a.target}: {len(arrows)}")
    if not arrows:
        problems.append(f"no csd-wait arrow from CPU {a.waiter} to CPU {a.target} in the DOM")
    for what, n in (("vCPU", a.vcpus), ("guest CPU", a.cpus)):
        cls = "vcpu" if what == "vCPU" else "guest"
        got = len(re.findall(r'<g class="lane %s"' % cls, dom))
        if got != n:
            problems.append(f"{got} {what} lanes in the DOM, want {n}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("report")
    p.add_argument("screenshot")
    p.add_argument("--vcpus", type=int, required=True)
    p.add_argument("--cpus", type=int, required=True)
    p.add_argument("--blocked-vcpu", type=int, required=True)
    p.add_argument("--waiter", type=int, required=True)
    p.add_argument("--target", type=int, required=True)
    a = p.parse_args()
    url = "file://" + os.path.abspath(a.report)
    problems = []

    logged = chromium(["--enable-logging=stderr", "--v=0", "--dump-dom", url])
    console = [l for l in logged.stderr.splitlines() if "CONSOLE" in l]
    print(f"console messages: {len(console)}")
    for l in console:
        print("  " + l)
    if logged.returncode != 0:
        problems.append(f"chromium exited {logged.returncode}: {logged.stderr[-2000:]}")
    if console:
        problems.append(f"{len(console)} console messages while loading the report")
    check_dom(logged.stdout, a, problems)

    shot = chromium(["--screenshot=" + os.path.abspath(a.screenshot), url])
    if shot.returncode != 0 or not os.path.exists(a.screenshot):
        problems.append(f"no screenshot (chromium exited {shot.returncode}): {shot.stderr[-2000:]}")
    else:
        print(f"screenshot: {a.screenshot} ({os.path.getsize(a.screenshot)} bytes)")
        check_pixels(a.screenshot, a, problems)

    for x in problems:
        print("PROBLEM: " + x)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
