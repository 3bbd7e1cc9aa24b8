"""`rafs merge`."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import re
from pathlib import Path
from typing import Any

from rafs.builder.merge import (
    MergeLayer,
    MergeOptions,
    blob_metas,
    merge_layers,
    write_bootstrap_tar,
)
from rafs.builder.options import WHITEOUT_SPECS
from rafs.errors import NotFound
from rafs.fileio import AtomicHashingFile

_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")


def register(commands: Any) -> None:
    merge = commands.add_parser(
        "merge",
        help="merge layer bootstraps (lowest first) into one image bootstrap",
        description="Stack Nydus layers with overlay semantics into one bootstrap whose blob "
        "table names each layer's blob by the layer digest. A layer file named by its digest "
        "hex is not hashed again.",
    )
    merge.add_argument("layers", nargs="+", type=Path, metavar="LAYER")
    merge.add_argument("-o", "--output", type=Path, required=True, help="bootstrap to write")
    merge.add_argument("--tar", action="store_true",
                       help="write it as the bootstrap layer tar (image/image.boot)")  # fmt: skip
    merge.add_argument("--whiteout-spec", choices=WHITEOUT_SPECS, default="oci")
    merge.add_argument("--prefetch", nargs="+", default=["/"], metavar="PATH",
                       help="paths for the prefetch table (default /)")  # fmt: skip
    merge.set_defaults(run=run_merge)


def layer_digest(path: Path) -> str:
    """The layer's digest: its file name when that is a sha256 hex, else its content's."""
    if _HEX_DIGEST.fullmatch(path.name):
        return f"sha256:{path.name}"
    sha = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            sha.update(block)
    return f"sha256:{sha.hexdigest()}"


def run_merge(args: argparse.Namespace) -> int:
    for path in args.layers:
        if not path.is_file():
            raise NotFound(f"{path}: no such layer file")
    with contextlib.ExitStack() as stack:
        layers = [
            MergeLayer(layer_digest(path), stack.enter_context(path.open("rb")), str(path))
            for path in args.layers
        ]
        result = merge_layers(
            layers, MergeOptions(args.whiteout_spec, tuple(args.prefetch))
        )
        metas = blob_metas(layers) if args.tar else []
    with AtomicHashingFile(args.output) as out:
        if args.tar:
            write_bootstrap_tar(result.bootstrap, out, metas)  # type: ignore[arg-type]
        else:
            out.write(result.bootstrap)
        out.commit()
    for digest in result.blob_digests:
        print(digest)
    return 0
