#!/usr/bin/env bash
# Same-machine reference: a three-member etcd cluster on 127.0.0.1 measured
# with `etcdctl check perf`, plus the append+fdatasync floor of the same
# filesystem. Prints one JSON line per measurement on stdout; progress goes
# to stderr. See tests/bench/README.md.
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: tests/bench/etcd-baseline.sh [--dir DIR] [--loads LIST] [--fsync-floor|--no-fsync-floor]
                                    [--keep] [--no-install]
  --dir DIR         parent directory for the run; a fresh subdirectory
                    etcd-baseline.XXXXXX is made in it and holds the three
                    data dirs, the logs and the floor file (default: /tmp)
  --loads LIST      comma-separated check-perf loads: s,m,l,xl (default: xl)
  --fsync-floor     measure the append+fdatasync floor first (default: on)
  --no-fsync-floor  skip the floor
  --keep            keep the run directory (data dirs and member logs)
  --no-install      fail instead of installing etcd with apt-get
USAGE
}

PARENT=/tmp
LOADS=xl
FLOOR=1
KEEP=0
INSTALL=1
while [ $# -gt 0 ]; do
  case "$1" in
    --dir) PARENT="${2:?--dir needs a value}"; shift 2 ;;
    --dir=*) PARENT="${1#--dir=}"; shift ;;
    --loads) LOADS="${2:?--loads needs a value}"; shift 2 ;;
    --loads=*) LOADS="${1#--loads=}"; shift ;;
    --load) LOADS="${2:?--load needs a value}"; shift 2 ;;
    --fsync-floor) FLOOR=1; shift ;;
    --no-fsync-floor) FLOOR=0; shift ;;
    --keep) KEEP=1; shift ;;
    --no-install) INSTALL=0; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done

log() { echo "[etcd-baseline] $*" >&2; }

# Client count, target rate (writes/s) and duration of each check-perf load,
# from checkPerfCfgMap in etcdctl/ctlv3/command/check.go (etcd 3.4).
declare -A LOAD_CLIENTS=([s]=50 [m]=200 [l]=500 [xl]=1000)
declare -A LOAD_LIMIT=([s]=150 [m]=1000 [l]=8000 [xl]=15000)
LOAD_SECS=60
IFS=',' read -r -a LOAD_LIST <<<"$LOADS"
for l in "${LOAD_LIST[@]}"; do
  [ -n "${LOAD_CLIENTS[$l]:-}" ] || { echo "unknown load '$l' (want s, m, l, xl)" >&2; exit 2; }
done

command -v python3 >/dev/null || { echo "python3 is required" >&2; exit 1; }

# --- install -----------------------------------------------------------------
if ! command -v etcd >/dev/null || ! command -v etcdctl >/dev/null; then
  [ "$INSTALL" = 1 ] || { echo "etcd/etcdctl not installed (and --no-install)" >&2; exit 1; }
  export DEBIAN_FRONTEND=noninteractive
  log "installing etcd-server etcd-client"
  if ! timeout 600 apt-get install -y etcd-server etcd-client >&2; then
    timeout 300 apt-get update >&2
    timeout 600 apt-get install -y etcd-server etcd-client >&2
  fi
fi
ETCD_VERSION=$(etcd --version 2>/dev/null | sed -n 's/^etcd Version: *//p' | head -n1)
export ETCDCTL_API=3

# --- run directory and cleanup -------------------------------------------------
mkdir -p "$PARENT"
RUN_DIR=$(mktemp -d "$PARENT/etcd-baseline.XXXXXX")
PIDS=()
CHECK_PID=""
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ -n "$CHECK_PID" ]; then
    kill -TERM "$CHECK_PID" 2>/dev/null || true
    wait "$CHECK_PID" 2>/dev/null || true
  fi
  for p in "${PIDS[@]:-}"; do
    [ -n "$p" ] && kill -TERM "$p" 2>/dev/null || true
  done
  for p in "${PIDS[@]:-}"; do
    [ -n "$p" ] || continue
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  if [ "$KEEP" = 1 ]; then
    log "kept $RUN_DIR"
  else
    rm -rf -- "$RUN_DIR"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
log "run dir $RUN_DIR ($(df -PT "$RUN_DIR" | awk 'NR==2{print $2" on "$1}'))"

# --- disk floor ------------------------------------------------------------------
if [ "$FLOOR" = 1 ]; then
  timeout 120 python3 - "$RUN_DIR/floor.dat" <<'PY'
import json, os, sys, time
path, n = sys.argv[1], 500
buf = b"x" * 256
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
lat = []
try:
    for _ in range(n):
        t0 = time.perf_counter_ns()
        os.write(fd, buf)
        os.fdatasync(fd)
        lat.append(time.perf_counter_ns() - t0)
finally:
    os.close(fd)
    os.unlink(path)
lat.sort()
def pct(p):  # nearest rank
    return lat[min(n - 1, max(0, -(-p * n // 100) - 1))] / 1e6
print(json.dumps({"tool": "floor", "what": "append+fdatasync", "n": n,
                  "p50_ms": round(pct(50), 3), "p99_ms": round(pct(99), 3),
                  "max_ms": round(lat[-1] / 1e6, 3)}))
PY
fi

# --- three members on free loopback ports -------------------------------------------
read -r -a PORTS <<<"$(python3 - <<'PY'
import socket
socks = []
for _ in range(6):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
for s in socks:
    s.close()
PY
)"
[ "${#PORTS[@]}" = 6 ] || { echo "could not pick free ports" >&2; exit 1; }
CLUSTER=""
ENDPOINTS=""
for i in 0 1 2; do
  CLUSTER+="${CLUSTER:+,}m$i=http://127.0.0.1:${PORTS[$((2*i+1))]}"
  ENDPOINTS+="${ENDPOINTS:+,}http://127.0.0.1:${PORTS[$((2*i))]}"
done
TOKEN="etcd-baseline-$$-$RANDOM"
for i in 0 1 2; do
  cport=${PORTS[$((2*i))]}; pport=${PORTS[$((2*i+1))]}
  # The quota is raised so that several loads in a row (with the check's own
  # auto-compact/defrag afterwards) cannot fill the default 2 GiB backend.
  etcd --name "m$i" --data-dir "$RUN_DIR/m$i" \
    --listen-client-urls "http://127.0.0.1:$cport" --advertise-client-urls "http://127.0.0.1:$cport" \
    --listen-peer-urls "http://127.0.0.1:$pport" --initial-advertise-peer-urls "http://127.0.0.1:$pport" \
    --initial-cluster "$CLUSTER" --initial-cluster-state new --initial-cluster-token "$TOKEN" \
    --quota-backend-bytes $((8 * 1024 * 1024 * 1024)) \
    --logger zap --log-outputs stderr \
    >"$RUN_DIR/m$i.log" 2>&1 &
  PIDS+=("$!")
done
log "members on $ENDPOINTS (peers $CLUSTER)"

# --- bounded wait until healthy --------------------------------------------------------
healthy=0
for _ in $(seq 60); do
  for p in "${PIDS[@]}"; do
    kill -0 "$p" 2>/dev/null || { echo "an etcd member exited; log tail:" >&2; tail -n 20 "$RUN_DIR"/m*.log >&2; exit 1; }
  done
  if timeout 10 etcdctl --endpoints="$ENDPOINTS" --dial-timeout=1s --command-timeout=2s \
      endpoint health >/dev/null 2>&1; then
    healthy=1; break
  fi
  sleep 0.5
done
[ "$healthy" = 1 ] || { echo "cluster not healthy after 30 s; log tail:" >&2; tail -n 20 "$RUN_DIR"/m*.log >&2; exit 1; }
log "cluster healthy"

# --- check perf per load -------------------------------------------------------------------
for load in "${LOAD_LIST[@]}"; do
  log "etcdctl check perf --load=$load (${LOAD_CLIENTS[$load]} clients, target ${LOAD_LIMIT[$load]} writes/s, ${LOAD_SECS} s)"
  out="$RUN_DIR/check-$load.out"
  la_before=$(cut -d' ' -f1 /proc/loadavg)
  set +e
  # In the background and waited for, so that a signal to this script is
  # handled at once (bash defers traps while a foreground child runs).
  timeout --kill-after=10 420 etcdctl --endpoints="$ENDPOINTS" \
    check perf --load="$load" --auto-compact --auto-defrag >"$out" 2>&1 &
  CHECK_PID=$!
  wait "$CHECK_PID"
  rc=$?
  CHECK_PID=""
  set -e
  la_after=$(cut -d' ' -f1 /proc/loadavg)
  python3 - "$out" "$rc" "$load" "$ETCD_VERSION" "${LOAD_CLIENTS[$load]}" "${LOAD_LIMIT[$load]}" "$LOAD_SECS" \
      "$la_before" "$la_after" <<'PY'
import json, re, sys
path, rc, load, version, clients, limit, secs, la0, la1 = sys.argv[1:10]
raw = open(path, encoding="utf-8", errors="replace").read()
# Drop the progress bar ("\r 12 / 60   20.00% 00m48s" repeated on one line).
lines = [l.strip() for l in raw.replace("\r", "\n").split("\n")]
lines = [l for l in lines if l and not re.match(r"^\d+ / \d+\s+[\d.]+%", l)]
text = "\n".join(lines)
def num(pattern):
    m = re.search(pattern, text)
    return float(m.group(1)) if m else None
puts = num(r"Throughput (?:is|too low:) (\d+(?:\.\d+)?) writes/s")
slowest = num(r"[Ss]lowest request took(?: too long:)? (\d+(?:\.\d+)?)s")
stddev = num(r"Stddev (?:is|too high:) (\d+(?:\.\d+)?)s")
passed = int(rc) == 0 and bool(re.search(r"(?m)^PASS$", text))
print(json.dumps({
    "tool": "etcd", "version": version, "load": load, "clients": int(clients),
    "target_puts_per_sec": int(limit), "duration_s": int(secs),
    "puts_per_sec": int(puts) if puts is not None else None,
    "slowest_s": slowest, "stddev_s": stddev, "pass": passed,
    "exit_code": int(rc), "loadavg_1m_before": float(la0),
    "loadavg_1m_after": float(la1), "raw": text,
}))
PY
done
