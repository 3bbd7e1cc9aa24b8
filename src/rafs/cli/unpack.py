"""`rafs unpack`: an image back to an OCI layer tar, or extracted into a directory."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from rafs.cli.images import add_image_args, open_image
from rafs.fileio import AtomicHashingFile
from rafs.reader.unpack import UnpackSummary, extract, write_tar


def register(commands: Any) -> None:
    unpack = commands.add_parser(
        "unpack",
        help="write an image back as an OCI layer tar, or extract it into a directory",
        description="Write the image as an uncompressed OCI layer tar (PAX where needed: "
        "xattrs, nanosecond mtimes, long names; hard links as link entries), or extract it "
        "into a directory without ever writing outside it. A tar file is written atomically "
        "and its sha256 digest (the layer's diff_id) printed.",
    )
    add_image_args(unpack)
    dest = unpack.add_mutually_exclusive_group(required=True)
    dest.add_argument("-o", "--output", help="tar file to write ('-' for stdout)")
    dest.add_argument("--to-dir", type=Path, metavar="DIR",
                      help="extract into this directory (made if missing)")  # fmt: skip
    unpack.set_defaults(run=run_unpack)


def _warn(image: str, summary: UnpackSummary) -> None:
    for path in summary.skipped:
        print(f"rafs: {image}: {path}: a socket cannot be stored in a tar, left out",
              file=sys.stderr)  # fmt: skip


def run_unpack(args: argparse.Namespace) -> int:
    with open_image(args) as artifact:
        if args.to_dir is not None:
            extract(artifact, args.to_dir)
            return 0
        if args.output == "-":
            out = sys.stdout.buffer
            summary = write_tar(artifact, out)
            out.flush()
            _warn(args.image, summary)
            return 0
        with AtomicHashingFile(Path(args.output)) as tar:
            summary = write_tar(artifact, tar)
            digest = tar.hexdigest()
            tar.commit()
    _warn(args.image, summary)
    print(f"sha256:{digest}")
    return 0
