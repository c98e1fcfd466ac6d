#!/usr/bin/env bash
# Every figure of docs/performance.md in one run, with its same-run
# references (disk floor, etcd 3.4), into OUT_DIR (default bench-out/).
#
#   tests/bench/run-all.sh [OUT_DIR]
#
# Takes about 16 minutes on 2 cores. Run it on an otherwise idle machine:
# every process (three coordinators, participants, clients, etcd) shares
# the same cores, so anything else running moves the figures. Loopback only;
# every step ends by itself.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-bench-out}
mkdir -p "$out"

say() { printf '[run-all %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

say "building (release)"
cargo build --release -p dtc-cli
cargo build --release -p dtc-tests --bin dtc-bench
# A private copy: a concurrent build cannot replace the binary under test
# between a SIGKILL and the restart of a node.
cp target/release/dtc "$out/dtc"
bin=$out/dtc

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "git: $(git rev-parse --short HEAD) ($(git status --porcelain | wc -l) changed files)"
  echo "nproc: $(nproc)"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
  echo "kernel: $(uname -r)"
  echo "loadavg before: $(cut -d' ' -f1-3 /proc/loadavg)"
  free -m
} > "$out/machine.txt"

say "disk floor and etcd 3.4 (check perf, loads l and xl: 500 and 1000 clients)"
tests/bench/etcd-baseline.sh --dir "${TMPDIR:-/tmp}" --loads l,xl > "$out/etcd.jsonl"

say "dtc bench: throughput and latency by clients"
"$bin" bench --local --clients 1,8,64,256,512,1024 --secs 10 --json > "$out/latency.jsonl"

say "dtc bench: the same, answering at the decision"
"$bin" bench --local --clients 1,256 --secs 10 --reply-at-decision --json > "$out/latency-at-decision.jsonl"

say "dtc bench: failover under load (20 kills, 32 clients)"
"$bin" bench --local --failover --kills 20 --clients 32 --json \
  --timeline "$out/failover-timeline.csv" > "$out/failover.json"

say "dtc bench: failover with 1024 clients reconnecting"
"$bin" bench --local --failover --kills 5 --clients 1024 --json > "$out/failover-1024.json"

say "durable ledger participants (dtc-bench ledger)"
DTC_BIN=$bin target/release/dtc-bench ledger --ledger-clients 32,128,256 --ledger-secs 10 \
  --json > "$out/ledger.json" 2> "$out/ledger.txt"

say "takeover of 1000 and 10000 transactions in flight (dtc-bench takeover)"
DTC_BIN=$bin target/release/dtc-bench takeover --sizes 1000,10000 \
  --json > "$out/takeover.json" 2> "$out/takeover.txt"

say "history: fill the retention window for 150 s, then cold restarts against an empty history"
python3 tests/bench/history.py --dtc "$bin" --out "$out" --fill-secs 150 --clients 512 \
  --restarts 3 > "$out/history.jsonl"

echo "loadavg after: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$out/machine.txt"

say "plots"
cat "$out/latency.jsonl" "$out/etcd.jsonl" > "$out/plot-input.jsonl"
python3 tests/bench/plot.py --latency "$out/plot-input.jsonl" \
  --timeline "$out/failover-timeline.csv" --out-dir "$out" \
  --subtitle "$(nproc) cores, all processes co-located, $(date -u +%Y-%m-%d)"
say "done: $out"
