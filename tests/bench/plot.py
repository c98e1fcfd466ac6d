#!/usr/bin/env python3
"""Draw the benchmark charts for docs/performance.md as plain SVG.

Standard library only. See tests/bench/README.md for the input formats.

    python3 tests/bench/plot.py --latency LAT.jsonl --timeline TIMELINE.csv --out-dir docs/img

Writes throughput.svg and p99.svg (from --latency) and failover.svg (from
--timeline) into --out-dir, and prints one line per file written.
"""

import argparse
import csv
import json
import math
import os
import sys
from xml.sax.saxutils import escape

WIDTH, HEIGHT = 720, 400
MARGIN = {"left": 74, "right": 24, "top": 46, "bottom": 52}
FONT = "font-family=\"DejaVu Sans, Helvetica, Arial, sans-serif\""
# Okabe-Ito, readable for colour-blind readers; etcd gets the grey.
PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000"]
ETCD_COLOUR = "#777777"
KILL_COLOUR = "#C62828"


# ---------------------------------------------------------------- inputs ----

def _num(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def read_latency(path):
    """Returns ({label: [(clients, tps, p99_ms)]}, {label: [(clients, puts/s, at_cap)]})."""
    dtc, etcd = {}, {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                o = json.loads(line)
            except ValueError:
                continue
            if not isinstance(o, dict) or not _num(o.get("clients")) or o["clients"] <= 0:
                continue
            if o.get("tool") == "etcd":
                if not _num(o.get("puts_per_sec")):
                    continue
                label = o.get("label") or "etcd %s check perf (puts/s)" % o.get("version", "")
                label = " ".join(label.split())
                target = o.get("target_puts_per_sec")
                at_cap = _num(target) and o["puts_per_sec"] >= 0.9 * target
                etcd.setdefault(label, []).append((o["clients"], o["puts_per_sec"], bool(at_cap)))
                continue
            lat = o.get("latency_ms")
            if not _num(o.get("throughput_tps")) or not isinstance(lat, dict):
                continue
            label = o.get("label") or "dtc"
            p99 = lat.get("p99") if _num(lat.get("p99")) else None
            dtc.setdefault(str(label), []).append((o["clients"], o["throughput_tps"], p99))
    for d in (dtc, etcd):
        for k in d:
            d[k].sort(key=lambda r: r[0])
    return dtc, etcd


def read_timeline(path):
    """Returns ([(t_ms, commits)], [(t_ms, event)])."""
    rows, events = [], []
    with open(path, encoding="utf-8", newline="") as f:
        for r in csv.DictReader(f):
            try:
                t = float(r.get("t_ms", ""))
            except ValueError:
                continue
            try:
                c = float(r.get("commits") or 0)
            except ValueError:
                c = 0.0
            rows.append((t, c))
            ev = (r.get("event") or "").strip()
            if ev:
                events.append((t, ev))
    rows.sort()
    return rows, events


# ------------------------------------------------------------- scales -------

def nice_step(span, target=5):
    if span <= 0:
        return 1.0
    raw = span / target
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * mag:
            return m * mag
    return 10 * mag


def linear_ticks(vmax, target=5):
    vmax = vmax if vmax > 0 else 1.0
    step = nice_step(vmax, target)
    top = math.ceil(vmax / step - 1e-9) * step
    if top < vmax * 1.04:  # headroom above the highest point
        top += step
    n = int(round(top / step))
    return [i * step for i in range(n + 1)], top


def log_ticks(vmin, vmax):
    lo = 10 ** math.floor(math.log10(vmin))
    hi = 10 ** math.ceil(math.log10(vmax))
    if hi <= lo:
        hi = lo * 10
    steps = (1, 2, 5) if hi / lo <= 100.0001 else (1,)  # few decades: 1-2-5 ticks
    ticks, v = [], lo
    while v <= hi * 1.0001:
        ticks.extend(v * m for m in steps if v * m <= hi * 1.0001)
        v *= 10
    return ticks, lo, hi


def fmt(v):
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1000:
        s = "{:,.0f}".format(v) if float(v).is_integer() or a >= 10000 else "{:,.1f}".format(v)
        return s
    if a >= 10 or float(v).is_integer():
        return "{:g}".format(round(v, 1))
    if a >= 1:
        return "{:.1f}".format(v).rstrip("0").rstrip(".")
    return "{:.3g}".format(v)


def text_width(s, size=12):
    return 0.58 * size * len(s)


# ----------------------------------------------------------- drawing --------

class Chart:
    def __init__(self, title, xlabel, ylabel, subtitle=None):
        self.parts = []
        self.x0 = MARGIN["left"]
        self.x1 = WIDTH - MARGIN["right"]
        self.y0 = HEIGHT - MARGIN["bottom"]  # bottom of the plot area
        self.y1 = MARGIN["top"]  # top of the plot area
        self.title, self.subtitle = title, subtitle
        self.xlabel, self.ylabel = xlabel, ylabel

    def add(self, s):
        self.parts.append(s)

    def text(self, x, y, s, size=12, anchor="middle", weight="normal", fill="#222", extra=""):
        self.add('<text x="%.1f" y="%.1f" font-size="%d" text-anchor="%s" font-weight="%s" fill="%s" %s>%s</text>'
                 % (x, y, size, anchor, weight, fill, extra, escape(s)))

    def frame(self):
        self.add('<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="none" stroke="#444" stroke-width="1"/>'
                 % (self.x0, self.y1, self.x1 - self.x0, self.y0 - self.y1))
        self.text(WIDTH / 2, 22, self.title, size=16, weight="bold")
        if self.subtitle:
            self.text(WIDTH / 2, 38, self.subtitle, size=11, fill="#555")
        self.text((self.x0 + self.x1) / 2, HEIGHT - 12, self.xlabel, size=12)
        cy = (self.y0 + self.y1) / 2
        self.text(18, cy, self.ylabel, size=12, extra='transform="rotate(-90 18 %.1f)"' % cy)

    def ygrid(self, ticks, ymap):
        for t in ticks:
            y = ymap(t)
            self.add('<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#ddd" stroke-width="1"/>'
                     % (self.x0, y, self.x1, y))
            self.text(self.x0 - 6, y + 4, fmt(t), size=11, anchor="end", fill="#333")

    def xgrid(self, ticks, xmap, labels=None, minor=()):
        for t in minor:
            x = xmap(t)
            self.add('<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#f0f0f0" stroke-width="1"/>'
                     % (x, self.y1, x, self.y0))
        last = [-1e9, -1e9]  # right edge of the last label in each of two rows
        for i, t in enumerate(ticks):
            x = xmap(t)
            self.add('<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#ddd" stroke-width="1"/>'
                     % (x, self.y1, x, self.y0))
            label = labels[i] if labels else fmt(t)
            w = text_width(label, 11)
            # A label that would overlap its neighbour goes one row lower;
            # if that row is taken too, it is left out.
            for row in (0, 1):
                if x - w / 2 > last[row] + 4:
                    self.add('<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#444" stroke-width="1"/>'
                             % (x, self.y0, x, self.y0 + 4 + 12 * row))
                    self.text(x, self.y0 + 17 + 12 * row, label, size=11, fill="#333")
                    last[row] = x + w / 2
                    break

    def legend(self, entries, where="top-left", points=()):
        """entries: [(label, colour, kind)], kind in line|hollow|bar|dash.

        where: top-left, top-right, or auto (the upper corner that covers
        fewer of the given (x, y) pixel points)."""
        if not entries:
            return
        size, row = 12, 18
        w = max(text_width(e[0], size) for e in entries) + 44
        h = row * len(entries) + 10
        y = self.y1 + 10
        if where == "auto":
            def covered(x):
                return sum(1 for px, py in points if x - 6 <= px <= x + w + 6 and py <= y + h + 6)
            where = "top-right" if covered(self.x1 - 10 - w) < covered(self.x0 + 10) else "top-left"
        x = self.x0 + 10 if where == "top-left" else self.x1 - 10 - w
        self.add('<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="#fff" fill-opacity="0.9" '
                 'stroke="#bbb" stroke-width="1" rx="3"/>' % (x, y, w, h))
        for i, (label, colour, kind) in enumerate(entries):
            cy = y + 5 + row * i + row / 2
            if kind == "bar":
                self.add('<rect x="%.1f" y="%.1f" width="22" height="10" fill="%s" fill-opacity="0.55" stroke="%s"/>'
                         % (x + 8, cy - 5, colour, colour))
            elif kind == "dash":
                self.add('<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-width="2" '
                         'stroke-dasharray="5,3"/>' % (x + 8, cy, x + 30, cy, colour))
            else:
                dash = ' stroke-dasharray="6,3"' if kind in ("hollow", "dashed-line") else ""
                self.add('<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-width="2"%s/>'
                         % (x + 8, cy, x + 30, cy, colour, dash))
                fill = "#fff" if kind == "hollow" else colour
                self.add('<circle cx="%.1f" cy="%.1f" r="3.5" fill="%s" stroke="%s" stroke-width="1.5"/>'
                         % (x + 19, cy, fill, colour))
            self.text(x + 36, cy + 4, label, size=size, anchor="start")

    def save(self, path):
        body = "\n".join(self.parts)
        svg = ('<?xml version="1.0" encoding="UTF-8"?>\n'
               '<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" %s>\n'
               '<rect width="100%%" height="100%%" fill="#fff"/>\n%s\n</svg>\n'
               % (WIDTH, HEIGHT, WIDTH, HEIGHT, FONT, body))
        with open(path, "w", encoding="utf-8") as f:
            f.write(svg)
        print("wrote %s" % path)


def series_chart(path, title, ylabel, series, subtitle=None, log_y=False):
    """series: [(label, colour, [(x, y, hollow)], dashed)]; x = clients on a log axis."""
    xs = sorted({p[0] for _, _, pts, _ in series for p in pts})
    ys = [p[1] for _, _, pts, _ in series for p in pts]
    c = Chart(title, "concurrent clients (log scale)", ylabel, subtitle)
    if not xs:
        c.frame()
        c.text(WIDTH / 2, HEIGHT / 2, "no data", size=14, fill="#888")
        c.save(path)
        return
    lx0, lx1 = math.log10(xs[0]), math.log10(xs[-1])
    if lx1 - lx0 < 1e-9:
        lx0, lx1 = lx0 - 0.5, lx1 + 0.5
    pad = (lx1 - lx0) * 0.06
    lx0, lx1 = lx0 - pad, lx1 + pad

    def xmap(v):
        return c.x0 + (math.log10(v) - lx0) / (lx1 - lx0) * (c.x1 - c.x0)

    if log_y:
        pos = [y for y in ys if y > 0]
        yticks, ylo, yhi = log_ticks(min(pos), max(pos)) if pos else ([1, 10], 1, 10)

        def ymap(v):
            v = max(v, ylo)
            return c.y0 - (math.log10(v) - math.log10(ylo)) / (math.log10(yhi) - math.log10(ylo)) * (c.y0 - c.y1)
    else:
        yticks, ytop = linear_ticks(max(ys) if ys else 1)

        def ymap(v):
            return c.y0 - v / ytop * (c.y0 - c.y1)

    c.ygrid(yticks, ymap)
    c.xgrid(xs, xmap, labels=[fmt(x) for x in xs])
    c.frame()
    entries, pixels = [], []
    for label, colour, pts, dashed in series:
        pts = [p for p in pts if not (log_y and p[1] <= 0)]
        if not pts:
            continue
        d = " ".join("%s%.1f,%.1f" % ("M" if i == 0 else "L", xmap(p[0]), ymap(p[1])) for i, p in enumerate(pts))
        dash = ' stroke-dasharray="6,3"' if dashed else ""
        c.add('<path d="%s" fill="none" stroke="%s" stroke-width="2"%s/>' % (d, colour, dash))
        # the segments too, sampled, so that the legend avoids the lines
        for a, b in zip(pts, pts[1:]):
            for k in range(1, 8):
                f = k / 8.0
                pixels.append((xmap(a[0]) + f * (xmap(b[0]) - xmap(a[0])),
                               ymap(a[1]) + f * (ymap(b[1]) - ymap(a[1]))))
        for p in pts:
            pixels.append((xmap(p[0]), ymap(p[1])))
            fill = "#fff" if p[2] else colour
            c.add('<circle cx="%.1f" cy="%.1f" r="4" fill="%s" stroke="%s" stroke-width="1.5">'
                  '<title>%s: %s clients, %s</title></circle>'
                  % (xmap(p[0]), ymap(p[1]), fill, colour, escape(label), fmt(p[0]), fmt(p[1])))
        entries.append((label, colour, "dashed-line" if dashed else "line"))
        if any(p[2] for p in pts):
            entries.append(("  (hollow: at etcdctl's rate cap)", colour, "hollow"))
    c.legend(entries, where="auto", points=pixels)
    c.save(path)


def throughput_svg(out, dtc, etcd, subtitle):
    series = []
    for i, (label, pts) in enumerate(dtc.items()):
        series.append((label, PALETTE[i % len(PALETTE)], [(x, t, False) for x, t, _ in pts], False))
    for label, pts in etcd.items():
        series.append((label, ETCD_COLOUR, pts, True))
    ylabel = "throughput (txn/s)" if not etcd else "throughput (txn/s; etcd: puts/s)"
    series_chart(os.path.join(out, "throughput.svg"), "Throughput vs. concurrent clients",
                 ylabel, series, subtitle)


def p99_svg(out, dtc, subtitle, log_y):
    series = []
    for i, (label, pts) in enumerate(dtc.items()):
        series.append((label, PALETTE[i % len(PALETTE)],
                       [(x, p, False) for x, _, p in pts if p is not None], False))
    series_chart(os.path.join(out, "p99.svg"), "p99 latency vs. concurrent clients",
                 "p99 latency (ms%s)" % (", log scale" if log_y else ""), series, subtitle, log_y)


def failover_svg(out, rows, events, subtitle, kill_label):
    c = Chart("Commits per 100 ms across leader kills", "time since start (s)",
              "commits per 100 ms bucket", subtitle)
    path = os.path.join(out, "failover.svg")
    if not rows:
        c.frame()
        c.text(WIDTH / 2, HEIGHT / 2, "no data", size=14, fill="#888")
        c.save(path)
        return
    ts = [t for t, _ in rows]
    gaps = sorted(b - a for a, b in zip(ts, ts[1:]) if b > a)
    bucket = gaps[len(gaps) // 2] if gaps else 100.0
    t0 = min(ts + [t for t, _ in events])
    t1 = max([t + bucket for t in ts] + [t for t, _ in events])
    span = (t1 - t0) / 1000.0
    xstep = nice_step(span, 8)
    xt0 = math.floor(t0 / 1000.0 / xstep) * xstep
    xt1 = max(math.ceil(t1 / 1000.0 / xstep) * xstep, xt0 + xstep)

    def xmap(ms):
        return c.x0 + (ms / 1000.0 - xt0) / (xt1 - xt0) * (c.x1 - c.x0)

    # headroom above the highest bucket for the legend and the event labels
    yticks, ytop = linear_ticks((max(v for _, v in rows) or 1) * 1.3)

    def ymap(v):
        return c.y0 - v / ytop * (c.y0 - c.y1)

    c.ygrid(yticks, ymap)
    n = int(round((xt1 - xt0) / xstep))
    xticks = [xt0 + i * xstep for i in range(n + 1)]
    c.xgrid([t * 1000.0 for t in xticks], xmap, labels=[fmt(t) for t in xticks])
    c.frame()
    # Step outline of the buckets, filled: each row covers [t, t + bucket).
    colour = PALETTE[0]
    d = ["M%.1f,%.1f" % (xmap(rows[0][0]), ymap(0))]
    prev_end = None
    for t, v in rows:
        if prev_end is not None and t > prev_end + 1e-6:  # missing buckets drop to zero
            d.append("L%.1f,%.1f L%.1f,%.1f" % (xmap(prev_end), ymap(0), xmap(t), ymap(0)))
        d.append("L%.1f,%.1f L%.1f,%.1f" % (xmap(t), ymap(v), xmap(t + bucket), ymap(v)))
        prev_end = t + bucket
    d.append("L%.1f,%.1f Z" % (xmap(prev_end), ymap(0)))
    c.add('<path d="%s" fill="%s" fill-opacity="0.35" stroke="%s" stroke-width="1.2" stroke-linejoin="round"/>'
          % (" ".join(d), colour, colour))
    entries = [("commits per %s ms" % fmt(bucket), colour, "bar")]
    kinds = set()
    for t, ev in events:
        x = xmap(t)
        col = KILL_COLOUR if ev.lower() == "kill" else "#555"
        c.add('<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-width="2" stroke-dasharray="5,3"/>'
              % (x, c.y1, x, c.y0, col))
        c.text(x + 4, c.y1 + 14 if ev.lower() == "kill" else c.y1 + 28, ev, size=11, anchor="start", fill=col)
        if ev.lower() not in kinds:
            kinds.add(ev.lower())
            entries.append((kill_label if ev.lower() == "kill" else ev, col, "dash"))
    c.legend(entries, where="top-right")
    c.save(path)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--latency", help="JSON lines: dtc latency levels (and etcd-baseline.sh lines)")
    ap.add_argument("--timeline", help="CSV t_ms,commits,event: commits per 100 ms bucket")
    ap.add_argument("--out-dir", default=".", help="directory for the SVG files (default: .)")
    ap.add_argument("--subtitle", help="small line under each title, e.g. machine and date")
    ap.add_argument("--p99-log", action="store_true", help="log scale for the p99 axis")
    ap.add_argument("--kill-label", default="leader killed (SIGKILL)",
                    help="legend text for event=kill rows (default: %(default)s)")
    a = ap.parse_args(argv)
    if not a.latency and not a.timeline:
        ap.error("give --latency and/or --timeline")
    os.makedirs(a.out_dir, exist_ok=True)
    if a.latency:
        dtc, etcd = read_latency(a.latency)
        if not dtc and not etcd:
            print("warning: no usable lines in %s" % a.latency, file=sys.stderr)
        throughput_svg(a.out_dir, dtc, etcd, a.subtitle)
        p99_svg(a.out_dir, dtc, a.subtitle, a.p99_log)
    if a.timeline:
        rows, events = read_timeline(a.timeline)
        if not rows:
            print("warning: no usable rows in %s" % a.timeline, file=sys.stderr)
        failover_svg(a.out_dir, rows, events, a.subtitle, a.kill_label)
    return 0


if __name__ == "__main__":
    sys.exit(main())
