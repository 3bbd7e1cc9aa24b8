"""`rafs create`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rafs.builder.layer import build_layer
from rafs.builder.options import DEFAULT_CHUNK_SIZE, WHITEOUT_SPECS, BuildOptions
from rafs.codecs import COMPRESSOR_NAMES, DIGESTER_NAMES


def _chunk_size(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid chunk size {text!r}") from None


def register(commands: Any) -> None:
    create = commands.add_parser(
        "create",
        help="build a Nydus layer from a tar (plain, gzip, zstd) or a directory",
        description="Write a Nydus layer as the Go converter does (tar-rafs, blob-inline-meta, "
        "blob-toc) and print its digest.",
    )
    create.add_argument("source", type=Path, help="tar file or directory")
    create.add_argument("-o", "--output", type=Path, required=True, help="layer file to write")
    create.add_argument("--bootstrap", type=Path, help="also write the bootstrap here")
    create.add_argument("--fs-version", type=int, default=6, choices=[6])
    create.add_argument("--compressor", choices=sorted(COMPRESSOR_NAMES), default="zstd")
    create.add_argument("--digester", choices=sorted(DIGESTER_NAMES), default="blake3")
    create.add_argument("--chunk-size", type=_chunk_size, default=DEFAULT_CHUNK_SIZE,
                        help="power of two, 0x1000..0x1000000 (default 0x100000)")  # fmt: skip
    create.add_argument("--whiteout-spec", choices=WHITEOUT_SPECS, default="oci")
    create.add_argument("--chunk-dict", type=Path, metavar="BOOTSTRAP",
                        help="reference chunks already in this image's blobs")  # fmt: skip
    create.add_argument("--prefetch", nargs="+", default=[], metavar="PATH",
                        help="absolute paths whose nids go in the prefetch table")  # fmt: skip
    create.set_defaults(run=run_create)


def run_create(args: argparse.Namespace) -> int:
    options = BuildOptions(
        compressor=COMPRESSOR_NAMES[args.compressor],
        digester=DIGESTER_NAMES[args.digester],
        chunk_size=args.chunk_size,
        whiteout_spec=args.whiteout_spec,
        fs_version=args.fs_version,
        prefetch_patterns=tuple(args.prefetch),
        chunk_dict_path=args.chunk_dict,
    )
    result = build_layer(args.source, args.output, options, args.bootstrap)
    print(result.digest)
    return 0
