"""Generate the gRPC stubs of ``fleetd/transport/agent_service.proto`` (and their ``.pyi`` types).

Usage: ``python scripts/gen_proto.py`` writes them next to the ``.proto``; ``python scripts/gen_proto.py --check``
exits 1 naming the stale files when the committed stubs differ from what the pinned ``grpcio-tools`` makes
(``tests/transport/test_stubs.py`` runs the check). Needs the dev extras (``grpcio-tools``, ``mypy-protobuf``).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO = Path("fleetd/transport/agent_service.proto")
OUTPUTS = (
    "agent_service_pb2.py",
    "agent_service_pb2.pyi",
    "agent_service_pb2_grpc.py",
    "agent_service_pb2_grpc.pyi",
)


def generate(out: Path) -> None:
    """Write the stubs under ``out`` (mirroring the package path, so imports are ``fleetd.transport...``)."""
    bindir = Path(sys.executable).parent
    command = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        "-I",
        str(ROOT),
        f"--plugin=protoc-gen-mypy={bindir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bindir / 'protoc-gen-mypy_grpc'}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        str(ROOT / PROTO),
    ]
    subprocess.run(command, check=True, cwd=ROOT)


def stale(target: Path = ROOT) -> list[str]:
    """The committed stubs that differ from freshly generated ones (missing ones included)."""
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        fresh = Path(tmp) / PROTO.parent
        return [
            name
            for name in OUTPUTS
            if not (target / PROTO.parent / name).exists()
            or (fresh / name).read_bytes() != (target / PROTO.parent / name).read_bytes()
        ]


def main(argv: list[str]) -> int:
    if argv == ["--check"]:
        names = stale()
        if names:
            sys.stderr.write(f"stale gRPC stubs: {', '.join(names)}; run `python scripts/gen_proto.py`\n")
            return 1
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        for name in OUTPUTS:
            shutil.copyfile(Path(tmp) / PROTO.parent / name, ROOT / PROTO.parent / name)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
