#!/usr/bin/env bash
# A local three-node dtc cluster, shown working and failing over.
#
#   deploy/local-cluster.sh          build, start 3 nodes, kill the leader, show the new one, stop
#   deploy/local-cluster.sh --keep   same, but leave the cluster running (Ctrl-C stops it)
#
# Nodes listen on free loopback ports; data and logs go to a temporary
# directory that is printed (and removed on exit unless --keep).
set -euo pipefail
cd "$(dirname "$0")/.."
keep=false
[ "${1:-}" = "--keep" ] && keep=true

cargo build --release -p dtc-cli
bin=target/release/dtc
dir=$(mktemp -d -t dtc-local.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if $keep; then echo "data and logs kept in $dir"; else rm -rf "$dir"; fi
}
trap cleanup EXIT INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ports=($(free_port) $(free_port) $(free_port))
peers="1=127.0.0.1:${ports[0]},2=127.0.0.1:${ports[1]},3=127.0.0.1:${ports[2]}"
addrs="127.0.0.1:${ports[0]},127.0.0.1:${ports[1]},127.0.0.1:${ports[2]}"

start() {
  local i=$1
  "$bin" coordinator --id "$i" --listen "127.0.0.1:${ports[$((i-1))]}" \
    --data-dir "$dir/node$i" --peers "$peers" >>"$dir/node$i.log" 2>&1 &
  pids[$((i-1))]=$!
}
leader() { "$bin" status --coordinators "$addrs" --json 2>/dev/null | python3 -c 'import json,sys; l=json.load(sys.stdin)["leader"]; print(l if l else "")' || true; }
wait_leader() {
  local not=${1:-0}
  for _ in $(seq 1 100); do
    l=$(leader); if [ -n "$l" ] && [ "$l" != "$not" ]; then echo "$l"; return; fi
    sleep 0.1
  done
  echo "no leader elected; logs in $dir" >&2; exit 1
}

echo "== starting three coordinators in $dir"
for i in 1 2 3; do start "$i"; done
l=$(wait_leader)
"$bin" status --coordinators "$addrs"

echo; echo "== SIGKILL of the leader (node $l)"
t0=$(date +%s%N)
kill -9 "${pids[$((l-1))]}"
nl=$(wait_leader "$l")
t1=$(date +%s%N)
echo "node $nl took over in $(( (t1 - t0) / 1000000 )) ms (time until status showed a new leader)"
"$bin" status --coordinators "$addrs"

echo; echo "== restarting node $l: it rejoins as a follower with its data"
start "$l"
for _ in $(seq 1 100); do
  "$bin" status --coordinators "$addrs" --json | grep -q unreachable || break
  sleep 0.1
done
"$bin" status --coordinators "$addrs"
grep -h "takeover:" "$dir"/node*.log | tail -n 2 || true

if $keep; then
  echo; echo "cluster running: dtc status --coordinators $addrs   (Ctrl-C to stop)"
  wait
fi
