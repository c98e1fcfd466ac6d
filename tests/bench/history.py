#!/usr/bin/env python3
"""What a long history costs: fill, memory, file sizes, cold restart.

    tests/bench/history.py --dtc target/release/dtc --out OUT [--fill-secs 150]
                           [--clients 512] [--restarts 3]

1. Fill: `dtc bench --local --keep --clients N --secs S --json` commits
   transactions into the retention window (default one hour, so nothing
   expires). Every 5 s the three coordinators' RSS and the data directory
   sizes are sampled into OUT/history-samples.csv.
2. The bench SIGKILLs its coordinators at the end (LocalCluster's drop), so
   the kept data directories are what a crash of the whole cluster leaves.
3. Cold restart, repeated --restarts times: the three coordinators are
   started again on the same directories, ports and peers, and the time from
   spawning them to the new leader's `takeover:` line (the leader has read the
   pending index and serves; its timestamp is read from the log) is recorded,
   with each node's `coordinator listening` time (store open). Then all three
   are SIGKILLed again, so every restart opens files a crash left.
4. The same restarts on a cluster with an empty history (a 1 s, 1-client
   fill), measured right after, as the reference.

Prints one JSON object per line on stdout; progress on stderr. Loopback only.
Every process it starts is killed before it exits.
"""
import argparse
import datetime
import json
import os
import re
import signal
import subprocess
import sys
import time


def say(msg):
    print(f"[history {time.strftime('%H:%M:%S', time.gmtime())}] {msg}", file=sys.stderr, flush=True)


def du(path):
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(root, f))
            except OSError:
                pass
    return total


def rss_kib(pids):
    out = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        out[pid] = int(line.split()[1])
        except OSError:
            pass
    return out


def coordinator_pids(root):
    return sorted(pid for pid, _ in coordinators(lambda d: d.startswith(root)))


def coordinators(want):
    """(pid, argv) of every `dtc coordinator` whose --data-dir passes `want`."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = [a.decode(errors="replace") for a in f.read().split(b"\0")]
        except OSError:
            continue
        if "coordinator" not in argv or "--data-dir" not in argv:
            continue
        i = argv.index("--data-dir")
        if i + 1 < len(argv) and want(argv[i + 1]):
            found.append((int(pid), argv))
    return found


def local_cluster(known_before):
    """The data root and addresses of the cluster `dtc bench --local` started:
    read from its coordinators' command lines (works for any dtc version)."""
    for _, argv in coordinators(lambda d: "dtc-bench-" in d):
        data = argv[argv.index("--data-dir") + 1]
        root = os.path.dirname(data.rstrip("/"))
        if root in known_before:
            continue
        peers = argv[argv.index("--peers") + 1].split(",")
        addrs = [p.split("=", 1)[1] for p in sorted(peers, key=lambda p: int(p.split("=")[0]))]
        return root, addrs
    return None, None


def fill(dtc, clients, secs, out, tag):
    err_path = os.path.join(out, f"history-{tag}-bench.err")
    with open(err_path, "w") as err:
        bench = subprocess.Popen(
            [dtc, "bench", "--local", "--keep", "--clients", str(clients), "--secs", str(secs), "--json"],
            stdout=subprocess.PIPE, stderr=err, text=True)
        known_before = {os.path.dirname(a[a.index("--data-dir") + 1].rstrip("/"))
                        for _, a in coordinators(lambda d: "dtc-bench-" in d)}
        root = addrs = None
        samples = []
        started = time.time()
        next_sample = started
        while bench.poll() is None:
            if root is None:
                root, addrs = local_cluster(known_before)
            if root and time.time() >= next_sample:
                next_sample += 5
                rss = rss_kib(coordinator_pids(root))
                samples.append({
                    "t_s": round(time.time() - started, 1),
                    "rss_mib": sorted(round(v / 1024, 1) for v in rss.values()),
                    "data_mb": round(du(root) / 1e6, 1),
                })
            time.sleep(0.2)
        result = bench.stdout.read()
    if bench.returncode != 0 or root is None:
        raise SystemExit(f"the fill failed (exit {bench.returncode}); see {err_path}")
    summary = json.loads(result.strip().splitlines()[-1])
    return root, addrs, summary, samples


def files(root):
    sizes = {}
    for node in sorted(os.listdir(root)):
        d = os.path.join(root, node)
        if not (node.startswith("node-") and os.path.isdir(d)):
            continue
        sizes[node] = {
            "raft_log_mb": round(os.path.getsize(os.path.join(d, "raft-log.redb")) / 1e6, 1),
            "state_mb": round(os.path.getsize(os.path.join(d, "state.redb")) / 1e6, 1),
            "snapshots_mb": round(du(os.path.join(d, "snapshots")) / 1e6, 1),
        }
    return sizes


LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+)Z")


def log_time(line):
    m = LOG_TIME.match(line)
    if not m:
        return None
    return datetime.datetime.strptime(m.group(1)[:26], "%Y-%m-%dT%H:%M:%S.%f").replace(
        tzinfo=datetime.timezone.utc).timestamp()


def restart(dtc, root, addrs, n, tag):
    peers = ",".join(f"{i + 1}={a}" for i, a in enumerate(addrs))
    procs, logs = [], []
    t0 = time.time()
    for i, addr in enumerate(addrs):
        log = os.path.join(root, f"restart-{n}-node-{i + 1}.log")
        logs.append(log)
        procs.append(subprocess.Popen(
            [dtc, "coordinator", "--id", str(i + 1), "--listen", addr,
             "--data-dir", os.path.join(root, f"node-{i + 1}"), "--peers", peers],
            stdout=open(log, "w"), stderr=subprocess.STDOUT))
    try:
        deadline = t0 + 60
        takeover = None
        listening = {}
        while time.time() < deadline and takeover is None:
            time.sleep(0.01)
            for i, log in enumerate(logs):
                with open(log, errors="replace") as f:
                    for line in f:
                        if "coordinator listening" in line and i not in listening:
                            listening[i] = log_time(line)
                        if "takeover: found" in line:
                            takeover = (i + 1, log_time(line))
        if takeover is None:
            raise SystemExit(f"{tag}: no takeover within 60 s of restart {n}; logs in {root}")
        return {
            "history": tag,
            "restart": n,
            "takeover_ms": round((takeover[1] - t0) * 1000, 1),
            "leader": takeover[0],
            "listening_ms": sorted(round((t - t0) * 1000, 1) for t in listening.values() if t),
        }
    finally:
        for p in procs:
            p.send_signal(signal.SIGKILL)
            p.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtc", default="target/release/dtc")
    ap.add_argument("--out", default="bench-out")
    ap.add_argument("--fill-secs", type=int, default=150)
    ap.add_argument("--clients", type=int, default=512)
    ap.add_argument("--restarts", type=int, default=3)
    ap.add_argument("--then", metavar="BIN", help="after the restarts with --dtc, as many with this "
                    "other build on the same directories (an A/B on identical data)")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)

    for tag, clients, secs in [("full", args.clients, args.fill_secs), ("empty", 1, 1)]:
        say(f"{tag}: filling with {clients} clients for {secs} s")
        root, addrs, summary, samples = fill(args.dtc, clients, secs, args.out, tag)
        print(json.dumps({"history": tag, "fill": summary, "files": files(root)}), flush=True)
        if samples:
            print(json.dumps({"history": tag, "samples": samples}), flush=True)
        builds = [args.dtc] + ([args.then] if args.then else [])
        for b, build in enumerate(builds):
            for n in range(1, args.restarts + 1):
                r = restart(build, root, addrs, n + b * args.restarts, tag)
                r["build"] = build
                say(f"{tag}: {build}: restart {n}: takeover after {r['takeover_ms']} ms")
                print(json.dumps(r), flush=True)
        print(json.dumps({"history": tag, "files_after": files(root), "dir": root}), flush=True)


if __name__ == "__main__":
    main()
