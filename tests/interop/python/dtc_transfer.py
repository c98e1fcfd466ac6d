#!/usr/bin/env python3
"""A dtc client in Python, built from nothing but proto/dtc/v1.

Proves that the gRPC contract is usable outside Rust: the stubs are generated
from the .proto files at run time with grpc_tools.protoc (no checked-in
generated code), ledger branch payloads are serialized `dtc.v1.LedgerPayload`
messages, and the client may talk to ANY coordinator node (a follower
forwards to the leader).

Transfer (two branches, one per ledger, or one branch when both accounts are
on the same ledger):

    python3 dtc_transfer.py --coordinator 127.0.0.1:7002 \
        --from ledgerA/alice --to ledgerB/bob --amount 5 [--txn-id ID]

prints one JSON line {"txn_id": ..., "outcome": "committed"|"aborted",
"reason": ...} and exits 0 (committed) or 1 (aborted).

Balance (the participant endpoint comes from Coordinator.ClusterStatus, the
balance from Ledger.Balance on the participant itself):

    python3 dtc_transfer.py --coordinator 127.0.0.1:7002 --balance ledgerA/alice

prints {"participant": ..., "account": ..., "balance": N, "reserved": N,
"available": N, "incoming": N}.

Exit codes: 0 committed / ok, 1 aborted, 2 usage error or a request the
cluster refuses (INVALID_ARGUMENT, FAILED_PRECONDITION, unknown participant),
3 unavailable or outcome unknown (then retry with the same --txn-id; the JSON
line says "outcome": "unknown" and names the id).
"""

import argparse
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
import uuid

EXIT_OK = 0
EXIT_ABORTED = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_PROTO_DIR = os.path.normpath(os.path.join(HERE, "..", "..", "..", "proto"))
DEFAULT_GEN_DIR = os.path.join(HERE, "gen")
PROTOS = ("dtc/v1/coordinator.proto", "dtc/v1/ledger.proto")
LEADER_HINT = "dtc-leader-hint"
PARTICIPANT_RE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


class UsageError(Exception):
    pass


def die_usage(msg):
    print(f"dtc_transfer: {msg}", file=sys.stderr)
    sys.exit(EXIT_USAGE)


# ---------------------------------------------------------------------------
# Stub generation


def generate_stubs(proto_dir, gen_root):
    """Generates the Python modules for PROTOS under a directory of gen_root
    keyed by the protos' content and the generator/runtime versions, and
    returns that directory. An existing complete directory is reused; a new
    one is built in a temporary sibling and renamed into place, so concurrent
    runs never see a half-written tree."""
    try:
        from grpc_tools import protoc
        import grpc_tools
        import google.protobuf
    except ImportError as e:
        print(
            f"dtc_transfer: {e}: pip install -r {os.path.join(HERE, 'requirements.txt')}",
            file=sys.stderr,
        )
        sys.exit(EXIT_USAGE)

    digest = hashlib.sha256()
    for rel in PROTOS:
        path = os.path.join(proto_dir, rel)
        try:
            with open(path, "rb") as f:
                digest.update(rel.encode() + b"\0" + f.read() + b"\0")
        except OSError as e:
            die_usage(f"cannot read {path}: {e} (set --proto-dir)")
    tools_version = getattr(grpc_tools, "__version__", "")
    if not tools_version:
        try:
            from importlib.metadata import version

            tools_version = version("grpcio-tools")
        except Exception:  # noqa: BLE001 - any failure: just a weaker cache key
            tools_version = "?"
    digest.update(f"grpcio-tools={tools_version};protobuf={google.protobuf.__version__}".encode())
    key = digest.hexdigest()[:16]

    target = os.path.join(gen_root, key)
    if os.path.isfile(os.path.join(target, ".complete")):
        return target
    os.makedirs(gen_root, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{key}-", dir=gen_root)
    try:
        # protoc's own well-known types (none used today, but imports of
        # google/protobuf/*.proto would need them).
        wkt = os.path.join(os.path.dirname(protoc.__file__), "_proto")
        args = [
            "grpc_tools.protoc",
            f"-I{proto_dir}",
            f"-I{wkt}",
            f"--python_out={staging}",
            f"--grpc_python_out={staging}",
        ] + [os.path.join(proto_dir, rel) for rel in PROTOS]
        rc = protoc.main(args)
        if rc != 0:
            print(f"dtc_transfer: protoc failed ({rc}) on {proto_dir}", file=sys.stderr)
            sys.exit(EXIT_USAGE)
        for pkg in ("dtc", os.path.join("dtc", "v1")):
            open(os.path.join(staging, pkg, "__init__.py"), "a").close()
        open(os.path.join(staging, ".complete"), "w").close()
        try:
            os.rename(staging, target)
            staging = None
        except OSError:
            # Another run finished first: use its tree.
            if not os.path.isfile(os.path.join(target, ".complete")):
                raise
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def load_stubs(proto_dir, gen_root):
    gen = generate_stubs(proto_dir, gen_root)
    sys.path.insert(0, gen)
    import grpc  # noqa: F401  (imported here so a missing grpcio is reported above)
    from dtc.v1 import coordinator_pb2, coordinator_pb2_grpc, ledger_pb2, ledger_pb2_grpc

    return coordinator_pb2, coordinator_pb2_grpc, ledger_pb2, ledger_pb2_grpc


# ---------------------------------------------------------------------------
# Helpers


def parse_target(s, flag):
    """PARTICIPANT/ACCOUNT, split at the first slash (accounts may hold more)."""
    participant, sep, account = s.partition("/")
    if not sep:
        raise UsageError(f"{flag} {s!r} is not PARTICIPANT/ACCOUNT")
    if not PARTICIPANT_RE.match(participant):
        raise UsageError(
            f"{flag} {s!r}: participant names are 1..=64 of A-Z a-z 0-9 . _ : -"
        )
    if not account or len(account.encode()) > 128 or any(
        ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in account
    ):
        raise UsageError(
            f"{flag} {s!r}: accounts are 1..=128 bytes without control characters"
        )
    return participant, account


def coordinator_list(arg):
    addrs = []
    for a in arg.split(","):
        a = a.strip()
        if a.startswith("http://"):
            a = a[len("http://"):]
        if not a:
            continue
        if ":" not in a:
            raise UsageError(f"--coordinator {a!r} is not HOST:PORT")
        addrs.append(a)
    if not addrs:
        raise UsageError("--coordinator needs HOST:PORT")
    return addrs


def channel_to(grpc, endpoint):
    """A channel for HOST:PORT, http://HOST:PORT or https://HOST:PORT.
    Loopback targets bypass any http_proxy from the environment."""
    secure = endpoint.startswith("https://")
    for scheme in ("https://", "http://"):
        if endpoint.startswith(scheme):
            endpoint = endpoint[len(scheme):]
    host = endpoint.rsplit(":", 1)[0].strip("[]")
    options = []
    if host in ("localhost", "::1") or host.startswith("127."):
        options.append(("grpc.enable_http_proxy", 0))
    if secure:
        return grpc.secure_channel(endpoint, grpc.ssl_channel_credentials(), options=options)
    return grpc.insecure_channel(endpoint, options=options)


def leader_hint(err):
    """HOST:PORT from the `dtc-leader-hint: ID=HOST:PORT` trailer, if any."""
    try:
        md = list(err.trailing_metadata() or ()) + list(err.initial_metadata() or ())
    except Exception:  # noqa: BLE001 - not every RpcError carries metadata
        return None
    for k, v in md:
        if k == LEADER_HINT:
            v = v.decode() if isinstance(v, bytes) else v
            return v.split("=", 1)[1] if "=" in v else v
    return None


def emit(obj):
    print(json.dumps(obj), flush=True)


RETRYABLE = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "UNKNOWN", "CANCELLED", "RESOURCE_EXHAUSTED")
REFUSED = ("INVALID_ARGUMENT", "FAILED_PRECONDITION", "NOT_FOUND", "ALREADY_EXISTS")


# ---------------------------------------------------------------------------
# Transfer


def transfer(args, stubs):
    import grpc

    cpb, cgrpc, lpb, _ = stubs
    try:
        src = parse_target(args.from_, "--from")
        dst = parse_target(args.to, "--to")
        if args.amount <= 0:
            raise UsageError(f"--amount must be a positive integer, not {args.amount}")
        if src == dst:
            raise UsageError("--from and --to are the same account")
        coordinators = coordinator_list(args.coordinator)
    except UsageError as e:
        die_usage(e)

    # One branch per ledger; both entries in one branch when the accounts
    # share a ledger (a transaction names each participant at most once).
    entries = {}
    for (participant, account), delta in ((src, -args.amount), (dst, args.amount)):
        entries.setdefault(participant, []).append(lpb.LedgerEntry(account=account, delta=delta))
    branches = [
        cpb.Branch(
            participant=participant,
            payload=lpb.LedgerPayload(entries=es).SerializeToString(),
        )
        for participant, es in entries.items()
    ]
    # A client-side id, so a retry after an unknown outcome can never run
    # the transfer twice.
    txn_id = args.txn_id or f"py-{uuid.uuid4().hex}"
    request = cpb.ExecuteRequest(txn_id=txn_id, branches=branches, timeout_ms=args.timeout_ms)

    prepare_s = (args.timeout_ms or 5000) / 1000.0
    per_call = prepare_s + 10.0
    deadline = time.monotonic() + args.deadline_s
    channels = {}
    target = coordinators[0]
    attempt = 0
    last = None
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            if target not in channels:
                channels[target] = channel_to(grpc, target)
            stub = cgrpc.CoordinatorStub(channels[target])
            attempt += 1
            try:
                resp = stub.Execute(request, timeout=min(per_call, left))
            except grpc.RpcError as e:
                code = e.code().name if e.code() else "UNKNOWN"
                last = f"{target}: {code}: {e.details()}"
                if code in REFUSED:
                    emit({"txn_id": txn_id, "error": last})
                    print(f"dtc_transfer: {last}", file=sys.stderr)
                    return EXIT_USAGE
                if code not in RETRYABLE:
                    break
                # Same txn_id on every attempt: the cluster runs it at most once.
                hint = leader_hint(e)
                if hint:
                    target = hint
                else:
                    target = coordinators[attempt % len(coordinators)]
                time.sleep(min(0.1 * attempt, 1.0, max(deadline - time.monotonic(), 0)))
                continue
            if resp.outcome == cpb.OUTCOME_COMMITTED:
                emit({"txn_id": resp.txn_id, "outcome": "committed", "reason": resp.reason})
                return EXIT_OK
            if resp.outcome == cpb.OUTCOME_ABORTED:
                emit({"txn_id": resp.txn_id, "outcome": "aborted", "reason": resp.reason})
                return EXIT_ABORTED
            last = f"{target}: Execute answered outcome {resp.outcome}"
            break
    finally:
        for ch in channels.values():
            ch.close()
    emit({"txn_id": txn_id, "outcome": "unknown", "error": last or "deadline passed"})
    print(
        f"dtc_transfer: outcome unknown ({last}); retry with --txn-id {txn_id}",
        file=sys.stderr,
    )
    return EXIT_UNAVAILABLE


# ---------------------------------------------------------------------------
# Balance


def balance(args, stubs):
    import grpc

    cpb, cgrpc, lpb, lgrpc = stubs
    try:
        participant, account = parse_target(args.balance, "--balance")
        coordinators = coordinator_list(args.coordinator)
    except UsageError as e:
        die_usage(e)

    deadline = time.monotonic() + args.deadline_s
    endpoint = None
    last = None
    answered = False
    # ClusterStatus is served locally by every node: ask each in turn (a
    # follower may not have applied a fresh registration yet). Go round again
    # only while no node answers at all.
    attempt = 0
    while endpoint is None and not answered:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        if attempt > 0:
            time.sleep(min(0.1 * attempt, 1.0, left))
        attempt += 1
        for addr in coordinators:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            with channel_to(grpc, addr) as ch:
                try:
                    st = cgrpc.CoordinatorStub(ch).ClusterStatus(
                        cpb.ClusterStatusRequest(), timeout=min(2.0, left)
                    )
                except grpc.RpcError as e:
                    code = e.code().name if e.code() else "UNKNOWN"
                    last = f"{addr}: {code}: {e.details()}"
                    continue
            answered = True
            found = [p.endpoint for p in st.participants if p.name == participant]
            if found:
                endpoint = found[0]
                break
    if endpoint is None:
        if answered:
            print(f"dtc_transfer: unknown participant {participant!r}", file=sys.stderr)
            emit({"participant": participant, "account": account, "error": "unknown participant"})
            return EXIT_USAGE
        print(f"dtc_transfer: no coordinator answered ({last})", file=sys.stderr)
        emit({"participant": participant, "account": account, "error": last})
        return EXIT_UNAVAILABLE

    with channel_to(grpc, endpoint) as ch:
        stub = lgrpc.LedgerStub(ch)
        attempt = 0
        while True:
            attempt += 1
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                r = stub.Balance(lpb.BalanceRequest(account=account), timeout=min(2.0, left))
            except grpc.RpcError as e:
                code = e.code().name if e.code() else "UNKNOWN"
                last = f"{endpoint}: {code}: {e.details()}"
                if code in REFUSED:
                    print(f"dtc_transfer: {last}", file=sys.stderr)
                    emit({"participant": participant, "account": account, "error": last})
                    return EXIT_USAGE
                if code not in RETRYABLE:
                    break
                time.sleep(min(0.1 * attempt, 1.0, max(deadline - time.monotonic(), 0)))
                continue
            emit(
                {
                    "participant": participant,
                    "account": r.account,
                    "balance": r.balance,
                    "reserved": r.reserved,
                    "available": r.available,
                    "incoming": r.incoming,
                    "endpoint": endpoint,
                }
            )
            return EXIT_OK
    print(f"dtc_transfer: balance unavailable ({last})", file=sys.stderr)
    emit({"participant": participant, "account": account, "error": last})
    return EXIT_UNAVAILABLE


# ---------------------------------------------------------------------------


def main(argv=None):
    p = argparse.ArgumentParser(
        description="Transfer between dtc ledger accounts (or read a balance) "
        "through any coordinator node, using stubs generated from proto/dtc/v1.",
    )
    p.add_argument(
        "--coordinator",
        required=True,
        metavar="HOST:PORT[,HOST:PORT...]",
        help="a coordinator node (any one; followers forward). More, comma "
        "separated, are tried in turn when one is unavailable.",
    )
    p.add_argument("--from", dest="from_", metavar="P/ACCOUNT", help="account to debit")
    p.add_argument("--to", metavar="P/ACCOUNT", help="account to credit")
    p.add_argument("--amount", type=int, help="a positive integer")
    p.add_argument("--txn-id", help="idempotency key (generated when absent)")
    p.add_argument(
        "--timeout-ms",
        type=int,
        default=0,
        help="prepare timeout sent in the request (0: the cluster default)",
    )
    p.add_argument(
        "--balance",
        metavar="P/ACCOUNT",
        help="print this account's committed balance instead of transferring",
    )
    p.add_argument(
        "--deadline-s",
        type=float,
        default=30.0,
        help="give up (exit 3) after this many seconds of retrying",
    )
    p.add_argument(
        "--proto-dir",
        default=os.environ.get("DTC_PROTO_DIR", DEFAULT_PROTO_DIR),
        help="directory holding dtc/v1/*.proto (default: the repository's proto/)",
    )
    p.add_argument(
        "--gen-dir",
        default=os.environ.get("DTC_PY_GEN_DIR", DEFAULT_GEN_DIR),
        help="where generated stubs are cached (default: gen/ next to this script)",
    )
    args = p.parse_args(argv)

    if args.balance is not None:
        if args.from_ or args.to or args.amount is not None:
            p.error("--balance cannot be combined with --from/--to/--amount")
    else:
        missing = [f for f, v in (("--from", args.from_), ("--to", args.to),
                                  ("--amount", args.amount)) if v is None]
        if missing:
            p.error(f"a transfer needs {', '.join(missing)} (or use --balance)")
        if not 0 <= args.timeout_ms <= 600000:
            p.error("--timeout-ms must be 0..=600000")
    if args.deadline_s <= 0:
        p.error("--deadline-s must be positive")

    # Usage errors before any stub generation.
    try:
        coordinator_list(args.coordinator)
        if args.balance is not None:
            parse_target(args.balance, "--balance")
        else:
            parse_target(args.from_, "--from")
            parse_target(args.to, "--to")
    except UsageError as e:
        die_usage(e)

    stubs = load_stubs(os.path.abspath(args.proto_dir), os.path.abspath(args.gen_dir))
    if args.balance is not None:
        return balance(args, stubs)
    return transfer(args, stubs)


if __name__ == "__main__":
    sys.exit(main())
