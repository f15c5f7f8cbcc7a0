#!/usr/bin/env python3
"""Regenerates the gRPC / protobuf stubs shipped in quantd/v1/ from the repository's
proto/quantd/v1/quantd.proto (run it after changing the proto;
tests/client_python/test_client_stubs.py fails while the shipped stubs differ from what this
script would write).

    python client/python/generate_stubs.py            # rewrite quantd/v1/quantd_pb2*.py(i)
    python client/python/generate_stubs.py --check    # exit 1 when they are stale

Needs grpcio-tools (tests/python/requirements.txt has it). The stubs import as
`quantd.v1.quantd_pb2`: the proto's own path, so the generated `_grpc` module's import line works
unchanged inside this package.
"""

from __future__ import annotations

import argparse
import difflib
import pathlib
import re
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parents[1]
PROTO_ROOT = REPO / "proto"
PROTO = PROTO_ROOT / "quantd/v1/quantd.proto"
PACKAGE_V1 = HERE / "quantd/v1"
STUBS = ("quantd_pb2.py", "quantd_pb2.pyi", "quantd_pb2_grpc.py")

# Lines that name the generator's own version rather than anything in the proto: a newer
# grpcio-tools writes other numbers there for the same contract.
_VERSION_LINES = (
    re.compile(r"^# Protobuf Python Version: .*$", re.M),
    re.compile(r"^GRPC_GENERATED_VERSION = .*$", re.M),
    re.compile(r"_runtime_version\.ValidateProtobufRuntimeVersion\(\n(?:.*\n){6}", re.M),
)


def generate(out_dir: pathlib.Path) -> dict:
    """Runs grpc_tools.protoc on the proto into out_dir; returns {stub name: text}."""
    import grpc_tools
    from grpc_tools import protoc

    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    well_known = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    code = protoc.main(["grpc_tools.protoc", f"-I{PROTO_ROOT}", f"-I{well_known}",
                        f"--python_out={out_dir}", f"--pyi_out={out_dir}",
                        f"--grpc_python_out={out_dir}", str(PROTO)])
    if code != 0:
        raise RuntimeError(f"grpc_tools.protoc failed with exit code {code} on {PROTO}")
    return {name: (out_dir / "quantd/v1" / name).read_text() for name in STUBS}


def normalized(text: str) -> str:
    """The stub without the generator's version stamps."""
    for pattern in _VERSION_LINES:
        text = pattern.sub("<generator version>\n", text)
    return text


def stale_stubs() -> list:
    """Names of the shipped stubs that differ (beyond version stamps) from fresh ones, each with
    a short unified diff."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(pathlib.Path(tmp))
    problems = []
    for name, text in fresh.items():
        shipped_path = PACKAGE_V1 / name
        shipped = shipped_path.read_text() if shipped_path.exists() else ""
        if normalized(shipped) != normalized(text):
            diff = "".join(list(difflib.unified_diff(
                normalized(shipped).splitlines(True), normalized(text).splitlines(True),
                f"shipped/{name}", f"generated/{name}", n=1))[:40])
            problems.append(f"{name}:\n{diff}")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when the stubs are stale")
    args = parser.parse_args()
    if args.check:
        problems = stale_stubs()
        for problem in problems:
            print(problem, file=sys.stderr)
        if problems:
            print(f"stale stubs; run {pathlib.Path(__file__).name} to regenerate", file=sys.stderr)
        return 1 if problems else 0
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(pathlib.Path(tmp))
    for name, text in fresh.items():
        (PACKAGE_V1 / name).write_text(text)
        print(f"wrote {PACKAGE_V1 / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
