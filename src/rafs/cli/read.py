"""`rafs inspect`, `ls`, `cat`, `check` and `export`."""

from __future__ import annotations

import argparse
import json
import stat
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rafs.cli.images import add_image_args, open_image, open_image_v5
from rafs.errors import InvalidArgument
from rafs.format.blobtable import BlobFeatures, Compressor, Digester
from rafs.format.v5 import compressor_of_flags, digester_of_flags
from rafs.reader.artifact import Artifact
from rafs.reader.blobs import read_file
from rafs.reader.check import check_image
from rafs.reader.export import export_blob_data, export_block
from rafs.reader.image import DirEntry, RafsImage, Stat
from rafs.reader.v5 import RafsV5Image, V5DirEntry, V5Stat

READ_BLOCK = 1 << 20


def register(commands: Any) -> None:
    inspect = commands.add_parser("inspect", help="superblock, flags, blob table, counts")
    add_image_args(inspect)
    inspect.add_argument("--json", action="store_true", help="print JSON")
    inspect.set_defaults(run=run_inspect)

    ls = commands.add_parser("ls", help="list entries")
    add_image_args(ls)
    ls.add_argument("path", nargs="?", default="/")
    ls.add_argument("-l", dest="long", action="store_true", help="long listing")
    ls.add_argument("-R", dest="recursive", action="store_true", help="recurse")
    ls.set_defaults(run=run_ls)

    cat = commands.add_parser("cat", help="write one file's content to stdout")
    add_image_args(cat)
    cat.add_argument("path")
    cat.set_defaults(run=run_cat)

    check = commands.add_parser("check", help="check structure and every chunk digest")
    add_image_args(check)
    check.set_defaults(run=run_check)

    export = commands.add_parser("export", help="export for the kernel's EROFS driver")
    add_image_args(export)
    form = export.add_mutually_exclusive_group(required=True)
    form.add_argument("--block", action="store_true",
                      help="one flat EROFS image (mount -t erofs -o loop,ro)")  # fmt: skip
    form.add_argument("--blob-data", action="store_true",
                      help="bootstrap and uncompressed blobs, for -o device=")  # fmt: skip
    export.add_argument("-o", "--output", type=Path, required=True,
                        help="image file (--block) or folder (--blob-data)")  # fmt: skip
    export.set_defaults(run=run_export)


def _flag_names(flags: int, kind: type[Any]) -> list[str]:
    return [member.name for member in kind if flags & member.value]


def _blob_summary(index: int, blob_id: str, chunk_count: int, compressor: int, digester: int,
                  features: int, compressed_size: int, uncompressed_size: int) -> dict[str, Any]:
    return {
        "index": index,
        "id": blob_id,
        "chunk_count": chunk_count,
        "compressor": Compressor(compressor).name.lower(),
        "digester": Digester(digester).name.lower(),
        "features": _flag_names(features, BlobFeatures),
        "compressed_size": compressed_size,
        "uncompressed_size": uncompressed_size,
    }  # fmt: skip


def _summary(artifact: Artifact) -> dict[str, Any]:
    image = artifact.image
    sb, ext = image.superblock, image.ext
    counts = _count(image)
    return {
        "source": image.source,
        "version": 6,
        "block_size": image.block_size,
        "root_nid": sb.s_root_nid,
        "inos": sb.s_inos,
        "blocks": sb.s_blocks,
        "meta_blkaddr": sb.s_meta_blkaddr,
        "flags": _flag_names(ext.s_flags, type(ext.flags)),
        "chunk_size": ext.s_chunk_size,
        "chunk_table_entries": ext.s_chunk_table_size // 80,
        "prefetch": image.prefetch_nids(),
        "counts": counts,
        "blobs": [
            _blob_summary(blob.blob_index, blob.id, blob.chunk_count, blob.compression_algo,
                          blob.digest_algo, blob.features, blob.compressed_size,
                          blob.uncompressed_size)
            | {"mapped_blkaddr": image.devices[blob.blob_index].mapped_blkaddr}
            for blob in image.blobs
        ],
    }


def _count(image: RafsImage | RafsV5Image) -> dict[str, int]:
    counts = {"inodes": 0, "directories": 0, "regular": 0, "symlinks": 0, "other": 0}
    seen = set()
    for _, st in image.walk():
        if st.nid in seen:
            continue
        seen.add(st.nid)
        counts["inodes"] += 1
        kind = ("directories" if st.is_dir else "regular" if st.is_reg
                else "symlinks" if st.is_symlink else "other")  # fmt: skip
        counts[kind] += 1
    return counts


def _summary_v5(image: RafsV5Image) -> dict[str, Any]:
    sb = image.superblock
    return {
        "source": image.source,
        "version": 5,
        "fs_version": sb.s_fs_version,
        "inos": sb.s_inode_table_entries,
        "flags": _flag_names(sb.s_flags, type(image.flags)),
        "chunk_size": image.chunk_size,
        "prefetch": image.prefetch_inos(),
        "counts": _count(image),
        "blobs": [
            _blob_summary(blob.index, blob.id, blob.chunk_count, compressor_of_flags(sb.s_flags),
                          digester_of_flags(sb.s_flags), blob.features, blob.compressed_size,
                          blob.uncompressed_size)
            for blob in image.blobs
        ],
    }


def run_inspect(args: argparse.Namespace) -> int:
    v5 = open_image_v5(args)
    if v5 is not None:
        info = _summary_v5(v5)
    else:
        with open_image(args) as artifact:
            info = _summary(artifact)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    if info["version"] == 5:
        print(f"image:       {info['source']} (RAFS v5, version {info['fs_version']:#x})")
    else:
        print(f"image:       {info['source']} (RAFS v6, {info['block_size']}-byte blocks)")
    print(f"flags:       {' '.join(info['flags'])}")
    print(f"chunk size:  {info['chunk_size']:#x}")
    print(f"inodes:      {info['inos']} names, " + ", ".join(
        f"{count} {kind}" for kind, count in info["counts"].items()))  # fmt: skip
    if "chunk_table_entries" in info:
        print(f"chunks:      {info['chunk_table_entries']} in the chunk table")
    print(f"prefetch:    {info['prefetch'] or 'none'}")
    for blob in info["blobs"]:
        print(f"blob {blob['index']}:      {blob['id']}")
        print(f"             {blob['chunk_count']} chunks, {blob['compressor']}/"
              f"{blob['digester']}, {blob['compressed_size']} bytes stored, "
              f"{blob['uncompressed_size']} uncompressed, features "
              f"{' '.join(blob['features'])}")  # fmt: skip
    return 0


def _long_line(image: RafsImage | RafsV5Image, st: Stat | V5Stat, name: str) -> str:
    try:
        when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(st.mtime))
    except (OverflowError, OSError, ValueError):  # a corrupt or far-future mtime
        when = f"{st.mtime:>16}"
    device = stat.S_ISCHR(st.mode) or stat.S_ISBLK(st.mode)
    size = f"{st.rdev[0]}, {st.rdev[1]}" if device else str(st.size)
    line = (f"{stat.filemode(st.mode)} {st.nlink:>3} {st.uid:>5} {st.gid:>5} {size:>10} "
            f"{when} {name}")  # fmt: skip
    if st.is_symlink:
        line += " -> " + image.readlink(st.nid).decode(errors="replace")
    return line


def _ls(image: RafsImage | RafsV5Image, args: argparse.Namespace) -> None:
    nid = image.lookup(args.path)
    base = "/" + args.path.strip("/")
    rows: list[tuple[str, Stat | V5Stat]] = []
    if args.recursive:
        for path, st in image.walk():
            text = path.decode(errors="replace")
            if text == base or text.startswith(base.rstrip("/") + "/"):
                rows.append((text, st))
    elif image.stat(nid).is_dir:
        children: Sequence[DirEntry | V5DirEntry] = image.children(nid)
        rows = [(e.name.decode(errors="replace"), image.stat(e.nid))
                for e in sorted(children, key=lambda e: e.name)]  # fmt: skip
    else:
        rows = [(base, image.stat(nid))]
    for name, st in rows:
        print(_long_line(image, st, name) if args.long else name)


def run_ls(args: argparse.Namespace) -> int:
    v5 = open_image_v5(args)
    if v5 is not None:
        _ls(v5, args)
        return 0
    with open_image(args) as artifact:
        _ls(artifact.image, args)
    return 0


def run_cat(args: argparse.Namespace) -> int:
    v5 = open_image_v5(args)
    if v5 is not None:
        ino = v5.lookup(args.path)
        size = v5.stat(ino).size
        if not v5.stat(ino).is_reg:
            raise InvalidArgument(f"{args.image}: {args.path} is not a regular file")
        blob_dir = args.blob_dir or Path(args.image).parent
        for offset in range(0, size, READ_BLOCK):
            sys.stdout.buffer.write(v5.read_file(ino, blob_dir, offset, READ_BLOCK))
        sys.stdout.buffer.flush()
        return 0
    with open_image(args) as artifact:
        nid = artifact.image.lookup(args.path)
        st = artifact.image.stat(nid)
        if not st.is_reg:
            raise InvalidArgument(f"{args.image}: {args.path} is not a regular file")
        out = sys.stdout.buffer
        for offset in range(0, st.size, READ_BLOCK):
            out.write(read_file(artifact.blobs, nid, offset, READ_BLOCK))
        out.flush()
    return 0


def run_check(args: argparse.Namespace) -> int:
    with open_image(args) as artifact:
        report = check_image(artifact)
    for problem in report.problems:
        print(f"rafs: {args.image}: {problem}", file=sys.stderr)
    verdict = "ok" if report.ok else f"{len(report.problems)} problem(s)"
    print(f"{args.image}: {verdict}: {report.inodes} inodes, {report.chunks} chunks, "
          f"{report.chunk_bytes} bytes verified")  # fmt: skip
    return 0 if report.ok else 1


def run_export(args: argparse.Namespace) -> int:
    with open_image(args) as artifact:
        if args.block:
            size = export_block(artifact, args.output)
            print(f"{args.output}: {size} bytes")
            return 0
        args.output.mkdir(parents=True, exist_ok=True)
        (args.output / "image.boot").write_bytes(artifact.image.data)
        print(args.output / "image.boot")
        for index, blob in enumerate(artifact.image.blobs):
            name = artifact.layer.name if artifact.layer and index == 0 else blob.id
            target = args.output / f"{name}.blob.data"
            export_blob_data(artifact, index, target)
            print(target)
    return 0
