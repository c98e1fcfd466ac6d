#!/usr/bin/env python3
"""List a gRPC server's services by server reflection, as a new user's tools do.

    list_services.py HOST:PORT [--deadline-s 10]

Uses the official `grpcio-reflection` package, whose client speaks only the
`grpc.reflection.v1alpha` protocol (as do older grpcurl, grpcui and Evans
builds): dtc servers answer both it and `v1`. Prints one JSON line,
{"target": ..., "services": [...]} (sorted), and exits 0; on failure prints
{"target": ..., "error": ...} and exits 1.
"""
import argparse
import json
import sys

import grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("target", metavar="HOST:PORT")
    p.add_argument("--deadline-s", type=float, default=10.0)
    args = p.parse_args(argv)
    try:
        with grpc.insecure_channel(args.target) as channel:
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            request = reflection_pb2.ServerReflectionRequest(list_services="")
            services = []
            for response in stub.ServerReflectionInfo(iter([request]), timeout=args.deadline_s):
                if response.HasField("error_response"):
                    raise RuntimeError(response.error_response.error_message)
                services.extend(s.name for s in response.list_services_response.service)
    except (grpc.RpcError, RuntimeError) as e:
        detail = e.details() if isinstance(e, grpc.RpcError) else str(e)
        print(json.dumps({"target": args.target, "error": detail}))
        return 1
    print(json.dumps({"target": args.target, "services": sorted(services)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
