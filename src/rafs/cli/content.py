"""`rafs content`: inspect and edit a content store.

    rafs content --store DIR ls [FILTER...]        digest, size and labels of each blob
    rafs content --store DIR info DIGEST [--json]  one blob's info
    rafs content --store DIR get DIGEST            the blob's bytes on stdout
    rafs content --store DIR ingest FILE [--ref REF] [--label K=V]...   prints the digest
    rafs content --store DIR label DIGEST K=V...   set labels; `K=` removes K
    rafs content --store DIR rm DIGEST...

`--containerd SOCKET [--namespace NS]` instead of `--store DIR` works on a running
containerd's content store, through its gRPC API.

`ingest` (FILE `-` is stdin) restarts any stale ingest under its ref, since nothing would
check a resumed prefix against the file. If the blob is already present that is success,
and the `--label`s are then set on the existing blob.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from collections.abc import Mapping
from typing import Any, BinaryIO

from rafs.cli.stores import add_store_arguments, open_store
from rafs.content import Info, open_writer
from rafs.errors import AlreadyExists, InvalidArgument

_BLOCK = 1 << 20


def register(commands: Any) -> None:
    content = commands.add_parser(
        "content", help="inspect and edit a content store",
        description="Inspect and edit a containerd-layout content store "
        "(DIR/blobs/sha256/HEX, DIR/ingest/...).",
    )  # fmt: skip
    add_store_arguments(content, required=True, store_help="content store root (created by "
                        "ingest)")  # fmt: skip
    sub = content.add_subparsers(dest="content_command", required=True, metavar="COMMAND")
    ls = sub.add_parser("ls", help="list blobs: digest, size, labels")
    ls.add_argument("filters", nargs="*", metavar="FILTER",
                    help='containerd filters, e.g. labels."k"==v (any may match)')  # fmt: skip
    ls.set_defaults(run=run_ls)
    info = sub.add_parser("info", help="one blob's digest, size, times and labels")
    info.add_argument("digest", metavar="DIGEST")
    info.add_argument("--json", action="store_true", help="print a JSON object")
    info.set_defaults(run=run_info)
    get = sub.add_parser("get", help="write a blob to stdout")
    get.add_argument("digest", metavar="DIGEST")
    get.set_defaults(run=run_get)
    ingest = sub.add_parser("ingest", help="add a file as a blob and print its digest")
    ingest.add_argument("file", metavar="FILE", help="file to add, - for stdin")
    ingest.add_argument("--ref", help="ingest ref (default: derived from FILE)")
    ingest.add_argument("--label", action="append", default=[], metavar="K=V",
                        help="label to set on the blob (repeatable)")  # fmt: skip
    ingest.set_defaults(run=run_ingest)
    label = sub.add_parser("label", help="set labels on a blob (K= removes K)")
    label.add_argument("digest", metavar="DIGEST")
    label.add_argument("labels", nargs="+", metavar="K=V")
    label.set_defaults(run=run_label)
    rm = sub.add_parser("rm", help="delete blobs")
    rm.add_argument("digests", nargs="+", metavar="DIGEST")
    rm.set_defaults(run=run_rm)


def parse_labels(pairs: list[str]) -> dict[str, str]:
    labels = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InvalidArgument(f"label {pair!r}: want KEY=VALUE")
        labels[key] = value
    return labels


def _labels_text(labels: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "-"


def info_json(info: Info) -> dict[str, Any]:
    return {
        "digest": str(info.digest),
        "size": info.size,
        "created_at": info.created_at.isoformat(),
        "updated_at": info.updated_at.isoformat(),
        "labels": dict(sorted(info.labels.items())),
    }


def run_ls(args: argparse.Namespace) -> int:
    for info in open_store(args).walk(*args.filters):
        print(f"{info.digest}\t{info.size}\t{_labels_text(info.labels)}")
    return 0


def run_info(args: argparse.Namespace) -> int:
    info = open_store(args).info(args.digest)
    if args.json:
        print(json.dumps(info_json(info), indent=2))
    else:
        for key, value in info_json(info).items():
            text = _labels_text(value) if key == "labels" else value
            print(f"{key}: {text}")
    return 0


def run_get(args: argparse.Namespace) -> int:
    out = sys.stdout.buffer
    with open_store(args).reader_at(args.digest) as reader:
        for offset in range(0, reader.size, _BLOCK):
            out.write(reader.read_at(offset, _BLOCK))
    out.flush()
    return 0


def run_ingest(args: argparse.Namespace) -> int:
    labels = parse_labels(args.label)
    store = open_store(args, create=True)
    name = "-" if args.file == "-" else os.path.abspath(args.file)
    ref = args.ref or f"rafs-ingest-{hashlib.sha256(name.encode()).hexdigest()}"
    source = open(args.file, "rb") if args.file != "-" else _stdin()  # noqa: SIM115
    with source, open_writer(store, ref) as writer:
        writer.truncate(0)
        while block := source.read(_BLOCK):
            writer.write(block)
        digest = writer.digest()
        try:
            writer.commit(0, digest, labels)
        except AlreadyExists:
            if labels:
                store.update(Info(digest, labels=labels), *(f"labels.{k}" for k in labels))
    print(digest)
    return 0


def _stdin() -> BinaryIO:
    return os.fdopen(os.dup(sys.stdin.fileno()), "rb")


def run_label(args: argparse.Namespace) -> int:
    labels = parse_labels(args.labels)
    store = open_store(args)
    info = store.update(Info(args.digest, labels=labels), *(f"labels.{k}" for k in labels))
    print(_labels_text(info.labels))
    return 0


def run_rm(args: argparse.Namespace) -> int:
    store = open_store(args)
    for digest in args.digests:
        store.delete(digest)
    return 0
