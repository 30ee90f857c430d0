"""Regenerate serving/protocol/generated from protos/*.proto.

    python scripts/tools/gen_protos.py            # rewrite the generated modules
    python scripts/tools/gen_protos.py --check    # exit 1 if they are out of date

protoc's Python output registers every message in protobuf's process-wide
descriptor pool. tritonclient registers the same V2 message names there, so the
two could not be imported into one process. The generated modules are therefore
rewritten to register into deepr's own pool, and to import each other
relatively so they work as a subpackage.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTO_DIR = ROOT / "protos"
OUT_DIR = ROOT / "serving" / "protocol" / "generated"

POOL_MODULE = '''"""The descriptor pool deepr's generated messages live in (see scripts/tools/gen_protos.py)."""

from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
'''


def _rewrite(text: str, module_names: list[str]) -> str:
    for name in module_names:
        # "import x_pb2 as alias" -> "from . import x_pb2 as alias"
        text = re.sub(rf"^import {name} as ", f"from . import {name} as ", text, flags=re.M)
    if "_descriptor_pool.Default()" in text:
        text = text.replace("_descriptor_pool.Default()", "_POOL")
        text = text.replace(
            "from google.protobuf import descriptor_pool as _descriptor_pool\n",
            "from google.protobuf import descriptor_pool as _descriptor_pool\nfrom ._pool import POOL as _POOL\n",
        )
    return text


def generate(out_dir: Path) -> None:
    import grpc_tools
    from grpc_tools import protoc  # build-time tool: only needed here

    protos = sorted(PROTO_DIR.glob("*.proto"))
    include = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO_DIR}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *map(str, protos),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    module_names = [p.stem + "_pb2" for p in protos]
    for path in sorted(out_dir.glob("*_pb2*.py*")):
        path.write_text(_rewrite(path.read_text(), module_names))
    (out_dir / "_pool.py").write_text(POOL_MODULE)
    (out_dir / "__init__.py").write_text(
        '"""protoc output for protos/*.proto; regenerate with scripts/tools/gen_protos.py."""\n'
    )


_TOOL_VERSIONS = [
    re.compile(r"^(GRPC_GENERATED_VERSION = ).*$", re.M),
    re.compile(r"^(# Protobuf Python Version: ).*$", re.M),
    re.compile(r"(ValidateProtobufRuntimeVersion\(\s*_runtime_version\.Domain\.PUBLIC,)\s*\d+,\s*\d+,\s*\d+,", re.M),
]
"""Where protoc and grpcio-tools write their own release into the output. A new patch release of
the tools changes these lines and nothing the .proto files determine, so the check ignores them."""


def _without_tool_versions(text: str) -> str:
    for pattern in _TOOL_VERSIONS:
        text = pattern.sub(r"\1<version>", text)
    return text


def stale_files(out_dir: Path = OUT_DIR) -> list[str]:
    """Names of generated files that differ from a fresh generation in what the .proto files
    determine (the tools' own version stamps aside)."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp)
        generate(fresh)
        names = {p.name for p in fresh.iterdir()} | {p.name for p in out_dir.glob("*.py*")}
        return sorted(
            n
            for n in names
            if not (out_dir / n).is_file()
            or not (fresh / n).is_file()
            or _without_tool_versions((out_dir / n).read_text()) != _without_tool_versions((fresh / n).read_text())
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only report stale files")
    args = parser.parse_args()
    if args.check:
        stale = stale_files()
        if stale:
            sys.exit(f"out of date, rerun scripts/tools/gen_protos.py: {', '.join(stale)}")
        print("generated code is up to date")
        return
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    generate(OUT_DIR)
    print(f"wrote {OUT_DIR.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
