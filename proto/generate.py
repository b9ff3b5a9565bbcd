"""Generate the Python gRPC stubs in ``recsvc/v1`` from the ``.proto`` files in this folder.

This is the only way stubs are made; nobody edits ``recsvc/v1/*``. ``--check`` regenerates into a
temporary folder and fails when the committed stubs differ (stale or hand-edited).

    python proto/generate.py          # write recsvc/v1/
    python proto/generate.py --check  # compare, exit 1 on any difference
"""

from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent
REPO_ROOT = PROTO_ROOT.parent
PACKAGE_DIR = Path("recsvc") / "v1"
INIT_TEXT = '"""Generated gRPC stubs for recsvc.v1. Do not edit: run `python proto/generate.py`."""\n'


def generate(out_root: Path) -> list[Path]:
    from grpc_tools import protoc  # imported here so --help works without grpcio-tools

    protos = sorted((PROTO_ROOT / PACKAGE_DIR).glob("*.proto"))
    if not protos:
        raise SystemExit(f"no .proto files under {PROTO_ROOT / PACKAGE_DIR}")
    (out_root / PACKAGE_DIR).mkdir(parents=True, exist_ok=True)
    well_known = Path(protoc.__file__).parent / "_proto"
    bin_dir = Path(sys.executable).parent  # mypy-protobuf's plugins are installed beside python
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out_root}",
        f"--grpc_python_out={out_root}",
        f"--plugin=protoc-gen-mypy={bin_dir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bin_dir / 'protoc-gen-mypy_grpc'}",
        f"--mypy_out={out_root}",
        f"--mypy_grpc_out={out_root}",
        *[str(p.relative_to(PROTO_ROOT)) for p in protos],
    ]
    code = protoc.main(args)
    if code != 0:
        raise SystemExit(f"protoc failed with exit code {code}")
    (out_root / PACKAGE_DIR / "__init__.py").write_text(INIT_TEXT)
    return sorted(p for p in (out_root / PACKAGE_DIR).iterdir() if p.is_file())


def check() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        fresh_names = {p.name for p in fresh}
        committed_dir = REPO_ROOT / PACKAGE_DIR
        committed = {p.name for p in committed_dir.iterdir() if p.is_file() and p.suffix in {".py", ".pyi"}}
        problems = [f"missing: {PACKAGE_DIR / n}" for n in sorted(fresh_names - committed)]
        problems += [
            f"unexpected (not generated): {PACKAGE_DIR / n}" for n in sorted(committed - fresh_names)
        ]
        for p in fresh:
            target = committed_dir / p.name
            if target.exists() and not filecmp.cmp(p, target, shallow=False):
                problems.append(f"differs from proto/: {PACKAGE_DIR / p.name}")
    if problems:
        print("generated stubs are stale or hand-edited; run `python proto/generate.py`:", file=sys.stderr)
        for line in problems:
            print(f"  {line}", file=sys.stderr)
        return 1
    print(f"stubs in {PACKAGE_DIR} match proto/")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="fail if committed stubs differ from fresh ones")
    ns = parser.parse_args()
    if ns.check:
        return check()
    target = REPO_ROOT / PACKAGE_DIR
    for old in target.glob("*_pb2*.py*"):
        old.unlink()
    for p in generate(REPO_ROOT):
        print(f"wrote {p.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
